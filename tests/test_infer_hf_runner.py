"""The engine on causal LMs krllm has no fast path for: transformers' forward with one cache per slot.

Each tiny random model (Qwen2 with q/k/v biases, Mistral with a sliding window, Gemma, Qwen2-MoE,
Mixtral) is saved with `save_pretrained`, loaded through the registry, and must give exactly the
greedy tokens of transformers' own `generate(do_sample=False)`: alone, batched with prompts of other
lengths, joining a running batch, and in a slot freed by an earlier sequence.
"""

import os
import subprocess
import sys

import pytest
import torch

from krllm.infer.engine import Engine
from krllm.infer.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0)
VOCAB = 300
NEW = 16
PROMPTS = [[5, 17, 99, 42, 7, 250, 31], [12], [200, 3, 64, 64, 8, 190, 77, 120, 15, 2, 9, 260, 33]]
SHAPE = dict(vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2,
             bos_token_id=0, eos_token_id=None, pad_token_id=1)


def _config(kind: str):
    from transformers import GemmaConfig, MistralConfig, MixtralConfig, Qwen2Config, Qwen2MoeConfig

    if kind == "qwen2":
        return Qwen2Config(**SHAPE, tie_word_embeddings=False)
    if kind == "mistral":  # a window shorter than prompt + output: the cache drops old keys
        return MistralConfig(**SHAPE, sliding_window=8, tie_word_embeddings=False)
    if kind == "gemma":
        return GemmaConfig(**SHAPE, head_dim=12)
    if kind == "qwen2_moe":
        return Qwen2MoeConfig(**SHAPE, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                              shared_expert_intermediate_size=48, decoder_sparse_step=1)
    if kind == "mixtral":
        return MixtralConfig(**SHAPE, num_local_experts=4, num_experts_per_tok=2, tie_word_embeddings=False)
    raise AssertionError(kind)


KINDS = ["qwen2", "mistral", "gemma", "qwen2_moe", "mixtral"]


def _save(kind: str, out):
    """A random model of `kind` saved as an HF directory; biases random too (transformers zeroes them)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(kind))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module", params=KINDS)
def hf(request, tmp_path_factory):
    """(model loaded through the registry, reference greedy outputs of transformers' generate)."""
    from krllm.model.registry import FAMILIES, TRANSFORMERS, family_for, model_type_of

    d = _save(request.param, tmp_path_factory.mktemp(request.param) / "model")
    family = family_for(model_type_of(d))
    assert model_type_of(d) == request.param and (family.fast or family is FAMILIES[TRANSFORMERS])
    # the transformers family's loader even where krllm has a fast path (e.g. qwen2): this file tests the
    # transformers runner
    model = FAMILIES[TRANSFORMERS].load_model(d, device="cpu", dtype="fp32")
    assert type(model).__module__.startswith("transformers.")
    with torch.no_grad():
        refs = [model.generate(torch.tensor([p]), do_sample=False, max_new_tokens=NEW, pad_token_id=1)[0, len(p):]
                .tolist() for p in PROMPTS]
    assert all(len(r) == NEW for r in refs)
    assert len({t for r in refs for t in r}) > 5  # real continuations, not one repeated token
    return model, refs


def test_alone_each_prompt_equals_transformers_generate(hf):
    model, refs = hf
    engine = Engine(model, max_batch=1)
    assert engine.runner.decode_path == f"transformers ({type(model).__name__})"
    for p, want in zip(PROMPTS, refs):
        assert engine.generate([p], GREEDY, max_new_tokens=NEW)[0].output == want


def test_batched_prompts_of_different_lengths_equal_generate(hf):
    model, refs = hf
    engine = Engine(model, max_batch=3, max_seq_len=64)
    seqs = engine.generate(PROMPTS, GREEDY, max_new_tokens=NEW)
    assert [s.output for s in seqs] == refs
    assert all(s.finish_reason == "length" for s in seqs)
    assert engine.runner.cache.lengths == [0, 0, 0] and engine.runner.cache.nbytes() == 0  # all freed


def test_joining_a_running_batch_and_reusing_a_freed_slot(hf):
    """Two slots, three prompts: the third waits, then takes the slot the shorter-lived one freed."""
    model, refs = hf
    engine = Engine(model, max_batch=2, max_seq_len=64)
    first = engine.add(PROMPTS[0], GREEDY, NEW)
    short = engine.add(PROMPTS[1], GREEDY, 4)  # finishes early and frees its slot
    for _ in range(3):
        engine.step()
    assert engine.runner.cache.nbytes() > 0
    assert engine.runner.cache.lengths[0] == len(PROMPTS[0]) + 2
    last = engine.add(PROMPTS[2], GREEDY, NEW)
    while engine.has_work():
        engine.step()
    assert first.output == refs[0] and short.output == refs[1][:4] and last.output == refs[2]
    # and once more in the same engine, in slots that earlier sequences used
    assert [s.output for s in engine.generate(PROMPTS[::-1], GREEDY, NEW)] == refs[::-1]


def test_eos_ids_come_from_a_transformers_config_int_list_or_none(hf):
    model, refs = hf
    assert Engine(model, max_batch=1).eos_ids == frozenset()  # eos_token_id None
    stop = refs[0][5]
    model.config.eos_token_id = [stop, 2]
    try:
        engine = Engine(model, max_batch=1)
        assert engine.eos_ids == {stop, 2}
        seq = engine.generate([PROMPTS[0]], GREEDY, NEW)[0]
        cut = next(i for i, t in enumerate(refs[0]) if t in (stop, 2))
        assert seq.finish_reason == "stop" and seq.output == refs[0][:cut]
        model.config.eos_token_id = stop
        assert Engine(model, max_batch=1).eos_ids == {stop}
    finally:
        model.config.eos_token_id = None


def test_limits_come_from_the_config():
    from transformers import AutoModelForCausalLM

    from krllm.errors import KrllmError

    model = AutoModelForCausalLM.from_config(_config("qwen2"))
    assert Engine(model, max_batch=1).max_seq_len == 128  # max_position_embeddings
    with pytest.raises(KrllmError, match="max_seq_len=200 exceeds the model's 128-token limit"):
        Engine(model, max_batch=1, max_seq_len=200)
    engine = Engine(model, max_batch=1, max_seq_len=10)
    seq = engine.generate([list(range(5, 13))], GREEDY, NEW)[0]
    assert seq.finish_reason == "length" and len(seq.output) == 2  # 8 prompt + 2 = the 10-token limit


def test_the_generate_command_runs_a_mistral_directory(tmp_path):
    """`krllm generate` end to end in a real process: registry loader, transformers runner, start-up line."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.infer.testing import tiny_tokenizer_dir

    tok_dir = tiny_tokenizer_dir(tmp_path / "tok", vocab_size=VOCAB)
    d = _save("mistral", tmp_path / "mistral")
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    tok.save_pretrained(str(d))
    assert len(tok) <= VOCAB
    prompt = "안녕하세요! 오늘"
    ids = tok.encode(prompt, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(str(d))
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8, pad_token_id=1,
                             eos_token_id=[0, 3])[0, len(ids):].tolist()
    out = out[:next((i for i, t in enumerate(out) if t in (0, 3)), len(out))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "krllm", "generate", str(d), "--prompt", prompt,
                           "--temperature", "0", "--max-new-tokens", "8", "--dtype", "fp32", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    startup = " ".join(proc.stderr.split())  # rich wraps the line at the terminal width
    assert "decoding: transformers (MistralForCausalLM)" in startup
    assert "KV cache grows with each sequence" in startup
    assert proc.stdout == prompt + tok.decode(out, skip_special_tokens=True) + "\n"


def test_eval_perplexity_of_a_transformers_model_equals_its_own_loss(hf):
    """eval's perplexity takes any causal LM: on one window it equals transformers' own mean loss."""
    from krllm.eval.perplexity import token_perplexity

    model, _ = hf
    tokens = list(range(3, 60)) * 2  # 114 tokens: one window of seq_len 113
    got = token_perplexity(model, tokens, seq_len=len(tokens) - 1)
    with torch.no_grad():
        ids = torch.tensor([tokens])
        want = model(ids, labels=ids).loss.item()
    assert got["tokens"] == len(tokens) - 1
    assert got["loss"] == pytest.approx(want, rel=1e-5)
