"""Generator (the Python API): greedy text equals transformers' greedy `generate`, streamed pieces add up
to the same text, sampling is reproducible with a seed, stop strings cut, adapter dirs work."""

from __future__ import annotations

import pytest
import torch

from krllm.errors import KrllmError
from krllm.infer.generator import Generator
from krllm.infer.testing import tiny_model_dir

PROMPTS = ["오늘 날씨가", "대한민국은", "Hello"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("gen") / "tiny")


@pytest.fixture(scope="module")
def gen(model_dir):
    return Generator.from_pretrained(model_dir, device="cpu", dtype="fp32", max_batch=3, max_seq_len=128)


def _hf_greedy(hf, tok, ids, n, stops):
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=n, eos_token_id=stops,
                          pad_token_id=1)[0, len(ids):].tolist()
    return tok.decode([t for t in out if t not in stops], skip_special_tokens=True)


def test_greedy_generate_and_chat_equal_transformers(gen, model_dir):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = gen.lm.tokenizer
    for p in PROMPTS:
        want = _hf_greedy(hf, tok, gen.encode(p), 20, gen.lm.stop_ids)
        assert gen.generate(p, max_length=20, temperature=0) == want and want
    msgs = [{"role": "user", "content": "안녕하세요"}]
    want = _hf_greedy(hf, tok, gen.lm.encode_chat(msgs), 16, gen.lm.stop_ids)
    assert gen.chat(msgs, max_length=16, temperature=0) == want


def test_stream_pieces_add_up_to_generate(gen):
    for kw in (dict(temperature=0), dict(temperature=0.9, top_p=0.9, seed=7)):
        pieces = list(gen.stream("대한민국은", max_length=24, **kw))
        assert len([p for p in pieces if p]) > 3 and "".join(pieces) == gen.generate("대한민국은", 24, **kw)
    chat = [{"role": "user", "content": "이름이 뭐예요?"}]
    assert "".join(gen.chat_stream(chat, 12, temperature=0)) == gen.chat(chat, 12, temperature=0)


def test_seeded_sampling_repeats_and_seeds_differ(gen):
    a = gen.generate("오늘 날씨가", 30, temperature=1.0, top_p=1.0, seed=1)
    assert a == gen.generate("오늘 날씨가", 30, temperature=1.0, top_p=1.0, seed=1)
    assert a != gen.generate("오늘 날씨가", 30, temperature=1.0, top_p=1.0, seed=2)


def test_max_length_counts_new_tokens_and_stop_strings_cut(gen):
    ids = gen.encode("대한민국은")
    [done] = gen.complete([ids], gen.sampling(temperature=0), 9, ignore_eos=True)
    assert done.tokens == 9 and done.finish_reason == "length"  # the prompt does not count
    full = gen.generate("대한민국은", 30, temperature=0, ignore_eos=True)
    stop = full[len(full) // 2: len(full) // 2 + 2]
    cut = gen.generate("대한민국은", 30, temperature=0, ignore_eos=True, stop=[stop])
    assert cut == full[: full.index(stop)]


def test_complete_batches_like_one_at_a_time_and_frees_slots(gen):
    sp = gen.sampling(temperature=0)
    ids = [gen.encode(p) for p in PROMPTS]
    alone = [gen.complete([i], sp, 15)[0] for i in ids]
    pieces: dict[int, str] = {}
    together = gen.complete(ids, sp, 15, on_text=lambda i, t: pieces.__setitem__(i, pieces.get(i, "") + t))
    assert together == alone and [pieces.get(i, "") for i in range(3)] == [c.text for c in alone]
    it = gen.stream("오늘 날씨가", 50, temperature=0, ignore_eos=True)
    next(it)
    it.close()  # leaving early cancels the sequence
    assert not gen.engine.has_work()


def test_bad_options_are_clear_errors(gen):
    with pytest.raises(KrllmError, match="top_p"):
        gen.generate("x", top_p=0)


def test_adapter_directory_equals_peft_greedy(model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                   init_lora_weights=False)).eval()
    pm.save_pretrained(tmp_path / "run" / "adapter")
    g = Generator.from_pretrained(tmp_path / "run", device="cpu", dtype="fp32")  # a run dir with adapter/
    assert g.lm.adapter == tmp_path / "run" / "adapter" and "adapter" in g.describe()
    ids = g.encode("오늘 날씨가")
    want = _hf_greedy(pm, g.lm.tokenizer, ids, 20, g.lm.stop_ids)
    assert g.generate("오늘 날씨가", 20, temperature=0) == want
    base = Generator.from_pretrained(model_dir, device="cpu", dtype="fp32").generate("오늘 날씨가", 20, temperature=0)
    assert want != base  # the adapter changed the answer
