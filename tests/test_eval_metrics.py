"""Eval metrics against references: perplexity and labeled loss vs transformers' own loss, greedy
answers vs `generate(do_sample=False)`, a PEFT adapter merged on load vs PEFT's unmerged forward,
and math exact match against the generator's own answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from krllm.errors import KrllmError
from krllm.eval.math import exact_match, is_correct
from krllm.eval.perplexity import labeled_loss, token_perplexity
from krllm.infer.testing import tiny_model_dir
from krllm.model.load import load


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", seed=0)


@pytest.fixture(scope="module")
def hf_model(tiny):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32).eval()


def test_token_perplexity_equals_transformers_loss(tiny, hf_model):
    lm = load(tiny, device="cpu", dtype="fp32")  # as krllm eval loads it
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, lm.model.config.vocab_size, size=1000)
    got = token_perplexity(lm.model, tokens, seq_len=64, max_tokens=700, batch_size=3)
    # reference: each back-to-back window of 65 tokens scored by transformers (labels shift inside)
    total, count = 0.0, 0
    for start in range(0, 700, 64):
        w = torch.tensor(tokens[start:min(start + 65, 701)])[None]
        with torch.no_grad():
            loss = hf_model(input_ids=w, labels=w).loss.item()
        total += loss * (w.shape[1] - 1)
        count += w.shape[1] - 1
    assert got["tokens"] == count == 700
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    assert got["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert got["windows"] == 11


def test_labeled_loss_equals_transformers_with_labels(tiny, hf_model):
    lm = load(tiny, device="cpu", dtype="fp32")  # as krllm eval loads it
    g = torch.Generator().manual_seed(1)
    examples = []
    for n in (9, 17, 30):
        ids = torch.randint(4, lm.model.config.vocab_size, (n,), generator=g).tolist()
        labels = [t if i >= n // 2 else -100 for i, t in enumerate(ids)]  # score the second half
        examples.append((ids, labels))
    got = labeled_loss(lm.model, examples, pad_id=1, batch_size=2)
    total, count = 0.0, 0
    for ids, labels in examples:
        with torch.no_grad():
            out = hf_model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        k = sum(l != -100 for l in labels[1:])
        total, count = total + out.loss.item() * k, count + k
    assert got["tokens"] == count
    assert got["loss"] == pytest.approx(total / count, rel=1e-5)
    with pytest.raises(KrllmError, match="no labeled tokens"):
        labeled_loss(lm.model, [([5, 6, 7], [-100, -100, -100])])


def test_greedy_answers_equal_transformers_generate(tiny, hf_model):
    from krllm.eval.generate import chat_prompt_ids, greedy_answers

    lm = load(tiny, device="cpu", dtype="fp32")  # as krllm eval loads it
    prompts = ["안녕하세요! 오늘 날씨가 좋네요.", "사과 3개와 배 5개가 있습니다. 모두 몇 개일까요?", "Hello"]
    got = greedy_answers(lm, prompts, max_new_tokens=12, batch_size=2)
    for p, g in zip(prompts, got):
        ids = chat_prompt_ids(lm.tokenizer, p)
        with torch.no_grad():
            ref = hf_model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12,
                                    eos_token_id=lm.stop_ids, pad_token_id=1)[0, len(ids):].tolist()
        ref = [t for t in ref if t not in lm.stop_ids]
        assert g["answer"] == lm.tokenizer.decode(ref, skip_special_tokens=True).strip()
        assert g["tokens"] == len(ref)


def test_adapter_directory_is_merged_on_load_like_peft(tiny, hf_model, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    torch.manual_seed(3)
    peft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))  # random B: the adapter changes outputs
    peft.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 9, 13, 40, 41, 42, 7]])
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32),
                                    str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        want = ref(input_ids=ids).logits
        plain = hf_model(input_ids=ids).logits
    lm = load(tmp_path / "adapter", device="cpu", dtype="fp32")
    assert lm.source == f"adapter merged into {tiny} on load"
    with torch.no_grad():
        got, _ = lm.model(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - plain).abs().max() > 1e-2  # the adapter mattered


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(KrllmError, match="does not exist"):
        load(tmp_path / "nope")


def test_exact_match_agrees_with_the_generators_answers():
    from krllm.data.sets.generated import math_problems

    probs = math_problems(200, seed=5, lang="mixed")
    for p in probs:  # the reference solution is right (the extractor itself: tests/test_answers.py)
        assert is_correct(p["solution"], p["answer"]), p
    wrong = [p["solution"].rsplit(":", 1)[0] + f": {int(p['answer']) + 1}" for p in probs]
    r = exact_match([p["solution"] for p in probs[:100]] + wrong[100:], [p["answer"] for p in probs])
    assert r == {"accuracy": 0.5, "correct": 100, "n": 200}
    assert not is_correct("3.5", "3") and not is_correct("", "0")
    assert is_correct("정답: 3/4", "0.75") and is_correct("Answer: 12.0", 12)
    assert not is_correct("정답: 12 ... 정답: 15", "15")  # hedging scores nothing
    with pytest.raises(ValueError):
        exact_match(["1"], ["1", "2"])


def test_held_out_drops_exactly_the_prompts_seen_in_training():
    from krllm.data.sets.generated import math_problems
    from krllm.data.sets.records import load_examples
    from krllm.eval.run import TrainingSet, _held_out

    recs = load_examples("builtin:math:ko", "grpo", n=200, seed=9002)
    train = [TrainingSet(data="builtin:math:ko", n=1000, seed=0)]
    kept, dropped = _held_out(recs, "grpo", train, None)
    seen = {p["question"] for p in math_problems(1000, seed=0, lang="ko")}
    want = [r for r in recs if r["prompt"][-1]["content"] not in seen]
    assert dropped == len(recs) - len(want) > 0 and kept == want
    assert _held_out(recs, "grpo", [], None) == (recs, 0)


def test_run_eval_writes_eval_json_for_both_models(tmp_path):
    from krllm.eval.run import EvalConfig, run_eval

    base = tiny_model_dir(tmp_path / "base", seed=0)
    tuned = tiny_model_dir(tmp_path / "tuned", seed=1)
    kw = dict(out_dir=str(tmp_path / "ev"), base=str(base), tuned=str(tuned),
              math={"n": 4, "max_new_tokens": 6}, samples={"prompts": ["안녕?", "어디 가?"], "max_new_tokens": 5})
    with pytest.raises(KrllmError, match="every one of the 6 eval conversations is in the training set"):
        run_eval(EvalConfig(npc={"n": 6, "holdout_from": {"data": "builtin:npc", "n": 50, "seed": 9001}}, **kw))
    assert not (tmp_path / "ev").exists()  # nothing half-written
    out = run_eval(EvalConfig(npc={"n": 6, "holdout_from": [{"data": "builtin:npc", "n": 50, "seed": 0}]}, **kw))
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(out))
    assert saved["data"]["npc"] == {"data": "builtin:npc", "n": 6, "dropped_in_training": 0}
    for role in ("base", "tuned"):
        assert saved["npc"][role]["examples"] == 6 and saved["npc"][role]["tokens"] > 50
        assert saved["math"][role]["n"] == 4
    assert saved["npc"]["base"]["loss"] != saved["npc"]["tuned"]["loss"]  # two different models
    assert [s["prompt"] for s in saved["samples"]] == ["안녕?", "어디 가?"]
    assert (tmp_path / "ev" / "samples.md").read_text(encoding="utf-8").count("**tuned**") == 2
    assert (tmp_path / "ev" / "config.yaml").exists()


def test_plain_text_chat_data_says_it_has_no_chat_records(tmp_path):
    """Not "every one of the 0 eval conversations is in the training set": the file holds no conversations."""
    from krllm.eval.run import EvalConfig, _load_data

    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": f"그냥 글 {i}"}, ensure_ascii=False) + "\n" for i in range(3)),
                    encoding="utf-8")
    cfg = EvalConfig(npc={"data": str(data)}, math={"enabled": False}, perplexity={"enabled": False})
    with pytest.raises(KrllmError, match=r"no chat records in the 3 rows read") as e:
        _load_data(cfg)
    assert str(data) in str(e.value) and "training set" not in str(e.value)
