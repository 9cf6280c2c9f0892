"""int8 / int4 weights (krllm.model.quant): the formats round as documented, quantized models stay close
to fp32, the C step's integer kernels (AVX-512 VNNI, AVX2, portable C) compute what the PyTorch
QuantLinear computes, a saved quantized directory loads to the same logits without the fp32 weights,
and bad input fails with an error naming what is wrong."""

import copy
import json
import platform

import pytest
import torch
from safetensors.torch import load_file, save_file

from krllm.errors import KrllmError
from krllm.infer import native
from krllm.infer.runner import ModelRunner
from krllm.infer.testing import tiny_model_config, tiny_model_dir
from krllm.model import quant
from krllm.model.llama import Llama
from krllm.model.load import load

# hidden 96 is an odd number of 32-column blocks (the VNNI kernel's pair loop leaves one), intermediate
# 200 ends in a block of 8 (stored padded to 224), 301 rows are not a multiple of the 4-row blocks
SHAPE = dict(vocab_size=301, hidden_size=96, intermediate_size=200, num_attention_heads=3, num_key_value_heads=1)
needs_native = pytest.mark.skipif(native.library() is None, reason="no C compiler here")


def _model(seed=0, **over):
    """Random weights at a realistic scale (std 0.05), RMSNorm weights away from 1 so folding matters."""
    torch.manual_seed(seed)
    model = Llama(tiny_model_config(**{**SHAPE, "initializer_range": 0.05, **over})).eval()
    with torch.no_grad():
        for n in [model.model.norm] + [m for b in model.model.layers for m in (b.input_layernorm, b.post_attention_layernorm)]:
            n.weight.uniform_(0.5, 1.5)
    return model


def test_int8_rounds_each_row_to_its_own_scale():
    w = torch.randn(5, 64) * torch.tensor([1e-3, 0.1, 1.0, 10.0, 0.0])[:, None]
    q, s = quant.quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (5,)
    assert q.abs().max() == 127 and (q[:4].abs().amax(dim=1) == 127).all()  # each row spans the range
    err = (quant.dequantize(q, s, "int8") - w).abs()
    assert (err <= s[:, None] / 2 + 1e-9).all()  # round to nearest
    assert (q[4] == 0).all() and s[4] == 0  # an all-zero row stays zero


def test_widths_off_the_32_column_blocks_are_padded_with_zero_columns():
    w = torch.randn(4, 40)
    q8, s8 = quant.quantize_int8(w)
    q4, s4 = quant.quantize_int4(w, 32)
    assert q8.shape == (4, 64) and not q8[:, 40:].any() and q4.shape == (4, 32) and s4.shape == (4, 2)
    assert (quant.dequantize(q8, s8, "int8", in_features=40) - w).abs().max() <= s8.max() / 2 + 1e-6
    assert (quant.dequantize(q4, s4, "int4", 32, 40) - w).abs().max() <= s4.abs().max() / 2 + 1e-6
    assert torch.equal(quant.unpack_int4(q4)[:, 40:], torch.zeros(4, 24, dtype=torch.int8))


def test_int4_is_q4_0_packed_in_q4_0_order():
    """q4_0's rule (d = the group's largest-magnitude value / -8), and its nibble order: in each run of
    32 columns byte j holds column j (low) and column j + 16 (high), stored as q + 8."""
    torch.manual_seed(1)
    w = torch.randn(3, 64)
    packed, s = quant.quantize_int4(w, group_size=32)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 32) and s.shape == (3, 2)
    g = w.view(3, 2, 32)
    m = g.gather(2, g.abs().argmax(dim=2, keepdim=True)).squeeze(2)
    torch.testing.assert_close(s, m / -8)
    q = torch.round(g / s[..., None]).clamp(-8, 7).to(torch.int64) + 8  # (3, 2, 32), independently
    assert torch.equal(packed.view(3, 2, 16).to(torch.int64), q[..., :16] | (q[..., 16:] << 4))
    deq = quant.dequantize(packed, s, "int4", 32)
    assert (deq - w).abs().max() <= s.abs().max() / 2 + 1e-6
    assert torch.equal(deq.view(3, 2, 32).abs().amax(dim=2), g.abs().amax(dim=2))  # the extreme is exact


def test_activations_round_per_32_columns_like_q8_0():
    x = torch.randn(2, 70) * 3
    got = quant.quantize_activations(x)
    for lo in (0, 32, 64):  # the last block has 6 columns
        b = x[:, lo:lo + 32]
        s = b.abs().amax(dim=1, keepdim=True) / 127
        torch.testing.assert_close(got[:, lo:lo + 32], torch.round(b / s) * s)


@pytest.mark.parametrize("fmt, tol", [("int8", 0.04), ("int4", 0.35)])
def test_quantized_logits_stay_close_to_fp32(fmt, tol):
    """A Gaussian weight's rounding error is uniform over one step: int8's step is max|row|/127, an
    RMS error of ~0.6% of the weights' spread; int4's is max|group of 32|/8, ~8%. Through the
    embedding, 2 layers and the head, random (untrained) weights add these up to ~3x that in the
    logits (measured here: 2.1% and 23%); int8 must be several times closer than int4."""
    model = _model()
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(2))
    ref, _ = model(ids)
    errs = {}
    for f in ("int8", "int4"):
        out, _ = quant.quantize_model(copy.deepcopy(model), f)(ids)
        errs[f] = ((out - ref).norm() / ref.norm()).item()
    assert errs[fmt] < tol
    assert errs["int8"] < errs["int4"] / 4
    untied = _model(tie_word_embeddings=False)  # a tied fp32 model stores its embedding once, quantized twice
    bytes_fp32 = quant.model_bytes(untied)
    assert quant.model_bytes(quant.quantize_model(untied, fmt)) < bytes_fp32 * (0.3 if fmt == "int8" else 0.2)


def _agree(lib, fmt, group_size=32, **shape):
    """C step vs QuantLinear on the same quantized weights, rows at different positions. Both round
    each activation block to int8 from fp32 values that differ in the last bit (summation order), so
    they are equal to fp32 rounding except where a value sits on a rounding tie and one step rounds it
    the other way (one activation off by one int8 step: ~1e-3 of the logits, carried on by the cache).
    The reference's KV cache is reset to ours before each step, so a tie's effect is not carried on:
    most steps agree to 1e-4, every step within 3e-2 with the same argmax."""
    model = quant.quantize_model(_model(**shape), fmt, group_size=group_size)
    vocab = model.config.vocab_size
    ours = ModelRunner(model, n_slots=4, max_seq_len=40)
    if lib is not None:
        ours.native = ours._native_decoder(lib, model.model.rotary_emb, 40)
    ref = ModelRunner(copy.deepcopy(model), n_slots=4, max_seq_len=40, use_native=False)
    assert ours.native is not None and ref.native is None
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in (1, 5, 3, 2)]
    errs = []
    for s, p in enumerate(prompts):
        got, want = ours.prefill(s, p), ref.prefill(s, p)
        errs.append(((got - want).abs().max() / want.abs().max()).item())
    streams = [p + torch.randint(2, vocab, (20,), generator=g).tolist() for p in prompts]
    for t in range(8):
        ref.cache.k.copy_(ours.cache.k)
        ref.cache.v.copy_(ours.cache.v)
        active = [t >= s for s in range(4)]
        tokens = torch.tensor([streams[s][ours.cache.lengths[s]] for s in range(4)])
        got, want = ours.decode(tokens, 4, active), ref.decode(tokens, 4, active)
        rows = [s for s, a in enumerate(active) if a]
        errs.extend(((got[r] - want[r]).abs().max() / want[r].abs().max()).item() for r in rows)
        assert torch.equal(got[rows].argmax(dim=1), want[rows].argmax(dim=1))
    assert max(errs) < 3e-2
    assert sorted(errs)[len(errs) // 2] < 1e-4  # most steps: fp32 rounding only


@needs_native
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_the_c_step_computes_what_quantlinear_computes(fmt):
    _agree(None, fmt)


@needs_native
def test_int4_groups_wider_than_the_activation_blocks_and_a_narrower_last_group():
    """group 64: 128 columns are 2 groups, 200 are 3 and a last group of 8 with its own scale."""
    model = quant.quantize_model(_model(hidden_size=128, num_attention_heads=4), "int4", group_size=64)
    assert model.model.layers[0].mlp.down_proj.weight_scale.shape == (128, 4)
    assert model.model.layers[0].mlp.down_proj.weight.shape == (128, 224 // 2)
    _agree(None, "int4", group_size=64, hidden_size=128, num_attention_heads=4)


PORTABLE = [["-O3", "-fopenmp"]] + ([["-O3", "-march=x86-64-v3", "-fopenmp"]] if platform.machine() == "x86_64" else [])


@pytest.mark.slow  # a compile per build (~5-10 s on 2 busy cores)
@needs_native
@pytest.mark.parametrize("flags", PORTABLE, ids=lambda f: " ".join(f[1:]))
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_builds_without_vnni_compute_the_same(tmp_path, flags, fmt):
    """The AVX2 kernels (x86-64-v3: vpmaddubsw, the sign trick for int8) and plain C."""
    lib = native.build_library(tmp_path / "q.so", flags)
    assert lib is not None and lib.krllm_qpath() == (1 if "x86-64-v3" in " ".join(flags) else 0)
    _agree(lib, fmt)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_saved_quantized_directory_loads_to_the_same_logits_without_fp32_weights(tmp_path, fmt):
    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    lm = load(src, device="cpu", dtype=fmt)
    assert quant.quant_spec(lm.model).format == fmt and fmt in lm.dtype_reason
    out = quant.save_quantized(lm.model, tmp_path / "q", tokenizer_dir=src)
    tensors = load_file(out / "model.safetensors")
    assert tensors["model.layers.0.mlp.up_proj.weight"].dtype == (torch.int8 if fmt == "int8" else torch.uint8)
    assert tensors["model.layers.0.mlp.up_proj.weight_scale"].dtype == torch.float32
    assert json.loads((out / "config.json").read_text())[quant.CONFIG_KEY]["format"] == fmt
    back = load(out, device="cpu")  # recognised as quantized; the fp32 directory is not read
    ids = torch.tensor([[3, 9, 4, 7, 1]])
    torch.testing.assert_close(back.model(ids)[0], lm.model(ids)[0], rtol=0, atol=0)
    assert (out / "tokenizer.json").is_file() and back.num_parameters == lm.num_parameters
    with pytest.raises(KrllmError, match=f"holds {fmt} weights"):
        load(out, device="cpu", dtype="int4" if fmt == "int8" else "int8")


def test_a_quantized_directory_missing_a_scale_names_the_key(tmp_path):
    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    out = quant.save_quantized(load(src, device="cpu", dtype="int8").model, tmp_path / "q", tokenizer_dir=src)
    tensors = load_file(out / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.weight_scale"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(KrllmError, match=r"missing model\.layers\.1\.self_attn\.k_proj\.weight_scale"):
        load(out, device="cpu")


def test_bad_dtype_and_group_size_errors(tmp_path):
    """int4 groups are whole activation blocks (a multiple of 32); any width works (padded)."""
    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    with pytest.raises(KrllmError, match="use auto, fp32, bf16, fp16, int8 or int4"):
        load(src, device="cpu", dtype="int3")
    with pytest.raises(KrllmError, match="multiple of 32"):
        load(src, device="cpu", dtype="int4", group_size=48)


def test_generator_and_runner_use_the_c_step_for_quantized_models(tmp_path):
    from krllm.infer.generator import Generator

    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    gen = Generator.from_pretrained(src, device="cpu", dtype="int4")
    assert "int4" in gen.describe() and (native.library() is None or "C step" in gen.describe())
    assert isinstance(gen.generate("안녕", max_length=4, temperature=0), str)


@pytest.mark.slow
def test_serve_decodes_an_int4_model_like_the_generator(tmp_path):
    """`krllm serve --dtype int4`: the start-up line names the format, and a greedy completion over HTTP
    is the one the in-process Generator gives with the same quantized weights."""
    import httpx
    from serve_process import serve_process

    from krllm.infer.generator import Generator

    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    want = Generator.from_pretrained(src, device="cpu", dtype="int4").generate("안녕", max_length=8, temperature=0)
    with serve_process(src, "--dtype", "int4", "--device", "cpu") as (proc, url):
        r = httpx.post(url + "/v1/completions", json={"model": "fp32", "prompt": "안녕", "max_tokens": 8,
                                                      "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == want


def test_export_int4_command_saves_what_dtype_int4_loads(tmp_path, capsys):
    """`krllm export int4 DIR --out Q --group-size 64`: the saved directory loads (as saved) to the logits
    of `load(DIR, dtype=int4, group_size=64)`, with the tokenizer and chat template beside it."""
    from krllm.cli import main

    src = tiny_model_dir(tmp_path / "fp32", hidden_size=64, intermediate_size=160)
    with pytest.raises(SystemExit) as e:
        main(["export", "int4", str(src), "--out", str(tmp_path / "q"), "--group-size", "64"])
    assert e.value.code == 0 and "krllm serve" in capsys.readouterr().out
    back, ref = load(tmp_path / "q", device="cpu"), load(src, device="cpu", dtype="int4", group_size=64)
    spec = quant.quant_spec(back.model)
    assert spec.format == "int4" and spec.group_size == 64
    ids = torch.tensor([[3, 9, 4, 7, 1]])
    torch.testing.assert_close(back.model(ids)[0], ref.model(ids)[0], rtol=0, atol=0)
    assert back.encode("안녕") == ref.encode("안녕") and back.tokenizer.chat_template == ref.tokenizer.chat_template
