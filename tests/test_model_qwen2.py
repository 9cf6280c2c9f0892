"""Qwen2 / Qwen2.5 in the fast path: a tiny random transformers Qwen2ForCausalLM (q/k/v biases, GQA,
tied and untied) loads into krllm's Llama with transformers' logits, saves back as Qwen2, and the
engine's greedy tokens equal `generate` on the C step and on the PyTorch path."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2ForCausalLM

from krllm.config import ConfigError
from krllm.errors import KrllmError
from krllm.infer import native
from krllm.infer.engine import Engine
from krllm.infer.runner import ModelRunner
from krllm.infer.sampling import SamplingParams
from krllm.infer.testing import random_qwen2
from krllm.model.config import ModelConfig
from krllm.model.hf import load_hf, save_hf
from krllm.model.registry import family_for, model_type_of
from krllm.model.sizing import count_parameters

VOCAB = 300
needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


def _qwen2(tie: bool, seed: int = 0) -> Qwen2ForCausalLM:
    """Random weights, biases included (transformers initialises them to zero), peaked logits."""
    return random_qwen2(VOCAB, tie=tie, seed=seed)


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def qwen2_dir(request, tmp_path_factory):
    d = tmp_path_factory.mktemp("qwen2") / "model"
    _qwen2(request.param).save_pretrained(d)
    assert "attention_bias" not in json.loads((d / "config.json").read_text())  # as Qwen2's own files
    return d


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, VOCAB, (n,), generator=g).tolist() for n in lengths]


def test_qwen2_directory_loads_with_transformers_logits(qwen2_dir):
    hf = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    assert model_type_of(qwen2_dir) == "qwen2" and family_for("qwen2").fast
    model = family_for("qwen2").load_model(qwen2_dir)  # the registry's fast family: load_hf
    cfg = model.config
    assert cfg.attention_bias and cfg.model_type == "qwen2"
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    assert model.model.layers[0].self_attn.o_proj.bias is None  # Qwen2: q/k/v only
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == cfg.tie_word_embeddings
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters()) == count_parameters(cfg).total
    ids = torch.randint(0, VOCAB, (2, 37))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_save_hf_writes_a_qwen2_directory_transformers_reloads(qwen2_dir, tmp_path):
    model = load_hf(qwen2_dir)
    out = save_hf(model, tmp_path / "again")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert isinstance(hf, Qwen2ForCausalLM)
    ids = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)
    assert load_hf(out).config == model.config
    # strict: a missing bias is an error naming it
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(out / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(KrllmError, match=r"missing \(1\): model.layers.1.self_attn.k_proj.bias"):
        load_hf(out)


@pytest.mark.parametrize("use_native", [True, False], ids=["c-step", "pytorch"])
def test_engine_greedy_equals_transformers_generate(qwen2_dir, use_native):
    if use_native and native.library() is None:
        pytest.skip("no C compiler here")
    hf = AutoModelForCausalLM.from_pretrained(qwen2_dir, dtype=torch.float32).eval()
    engine = Engine(load_hf(qwen2_dir), max_batch=3, max_seq_len=128, native=use_native)
    assert (engine.runner.native is not None) == use_native
    prompts = _prompts([1, 6, 17], seed=1)
    refs = []
    for prompt in prompts:
        with torch.no_grad():
            refs.append(hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False, eos_token_id=None,
                                    pad_token_id=1)[0, len(prompt):].tolist())
    assert len({t for r in refs for t in r}) > 5  # real continuations, not one repeated token
    got = engine.generate(prompts, SamplingParams(temperature=0), max_new_tokens=30, stop_ids=())  # batched
    assert [s.output for s in got] == refs


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_c_step_with_biases_matches_the_pytorch_path(qwen2_dir, dtype):
    """Rows at different positions, some idle: the C step adds the q/k/v bias before RoPE as the model
    does. bf16: against the PyTorch path in fp32 on the same (bf16-rounded) weights, within bf16 rounding."""
    model = load_hf(qwen2_dir, dtype=dtype)
    ours = ModelRunner(model, n_slots=4, max_seq_len=64)
    ref = ModelRunner(copy.deepcopy(model).float(), n_slots=4, max_seq_len=64, use_native=False)
    assert ours.native is not None and ours.native._bias_ptrs is not None
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    streams = _prompts([30] * 4, seed=3)
    for slot in range(4):
        p = streams[slot][:3 + slot]
        scale = ref.prefill(slot, p).abs().max().item()
        torch.testing.assert_close(ours.prefill(slot, p), ref.prefill(slot, p), rtol=tol, atol=tol * scale)
    for t in range(6):
        active = [(t + s) % 3 != 0 for s in range(4)]
        tokens = torch.tensor([streams[s][ours.cache.lengths[s]] for s in range(4)])
        got, want = ours.decode(tokens, 4, active).clone(), ref.decode(tokens, 4, active)
        rows = [s for s in range(4) if active[s]]
        scale = want[rows].abs().max().item()
        torch.testing.assert_close(got[rows], want[rows], rtol=tol, atol=tol * scale)
        assert torch.equal(got[rows].argmax(-1), want[rows].argmax(-1))


def test_what_krllm_does_not_implement_is_rejected_by_name():
    base = ModelConfig(attention_bias=True).to_hf_dict()
    assert ModelConfig.from_hf_dict(base).attention_bias
    window = {**base, "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 2,
              "num_hidden_layers": 4, "max_position_embeddings": 256}
    with pytest.raises(ConfigError, match="use_sliding_window: sliding-window attention"):
        ModelConfig.from_hf_dict(window)
    # a window that never binds (covers the context, or no layer slides) is plain attention
    assert ModelConfig.from_hf_dict({**window, "sliding_window": 256}).attention_bias
    assert ModelConfig.from_hf_dict({**window, "max_window_layers": 4}).attention_bias
    assert ModelConfig.from_hf_dict({**window, "use_sliding_window": False}).attention_bias
    with pytest.raises(ConfigError, match="mlp_bias"):
        ModelConfig.from_hf_dict({**base, "mlp_bias": True})
    llama = ModelConfig().to_hf_dict()
    assert llama["model_type"] == "llama" and llama["attention_bias"] is False
    with pytest.raises(ConfigError, match="attention_bias: a Llama with attention_bias has an o_proj bias"):
        ModelConfig.from_hf_dict({**llama, "attention_bias": True})
