"""The chunked LM-head cross-entropy equals logits + F.cross_entropy in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from krllm.model.fused_loss import linear_cross_entropy


def _inputs(n=300, c=32, v=97, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, c, generator=g).requires_grad_()
    w = (0.2 * torch.randn(v, c, generator=g)).requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100  # ignored positions
    return h, w, t


def _grads(loss, *ts):
    return torch.autograd.grad(loss, ts)


@pytest.mark.parametrize("chunk", [64, 100, 1000])  # several chunks, a ragged last chunk, one chunk
def test_fp32_value_and_gradients_match_cross_entropy(chunk):
    h, w, t = _inputs()
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    out = linear_cross_entropy(h, w, t, chunk=chunk)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(_grads(0.25 * out, h, w), _grads(0.25 * ref, h, w)):  # incoming grad scales both
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_onednn_kernel_gives_the_same_loss():
    from krllm.train.cpu_kernels import onednn_available, onednn_mm

    if not onednn_available():
        pytest.skip("this torch build has no oneDNN")
    h, w, t = _inputs()
    ref = linear_cross_entropy(h, w, t, chunk=64)
    out = linear_cross_entropy(h, w, t, chunk=64, mm=onednn_mm)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(_grads(out, h, w), _grads(ref, h, w)):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)


def test_bf16_autocast_runs_the_matmuls_in_bf16():
    h, w, t = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy((h @ w.t()).float(), t)
        out = linear_cross_entropy(h, w, t, chunk=64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)  # same bf16 logits, fp32 softmax
    (gh, gw), (rh, rw) = _grads(out, h, w), _grads(ref, h, w)
    assert gh.dtype == gw.dtype == torch.float32
    torch.testing.assert_close(gh, rh, atol=2e-4, rtol=0.02)  # bf16 gradients, summed in another order
    torch.testing.assert_close(gw, rw, atol=2e-4, rtol=0.02)
    fp32 = F.cross_entropy(h @ w.t(), t)
    assert not torch.equal(out, fp32)  # really bf16 matmuls


def test_without_grad_and_all_ignored():
    h, w, t = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(linear_cross_entropy(h, w, t, chunk=64), F.cross_entropy(h @ w.t(), t))
    assert torch.isnan(linear_cross_entropy(h, w, torch.full_like(t, -100)))  # as F.cross_entropy: 0/0


@pytest.mark.parametrize("tied", [True, False])
def test_model_loss_without_logits_equals_the_logits_path(tied):
    from krllm.model.config import model_config_from
    from krllm.model.llama import Llama

    cfg = model_config_from("tiny", ["num_hidden_layers=2", f"tie_word_embeddings={str(tied).lower()}"],
                            vocab_size=300)
    torch.manual_seed(0)
    model = Llama.build(cfg)
    x = torch.randint(0, 300, (2, 33))
    logits, ref = model(x[:, :-1], targets=x[:, 1:])
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))
    none, out = model(x[:, :-1], targets=x[:, 1:], return_logits=False)
    assert none is None and logits.shape == (2, 32, 300)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for (name, _), a, b in zip(model.named_parameters(), torch.autograd.grad(out, list(model.parameters())), ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4, msg=name)
