"""PackedMatmul: the same product as F.linear whichever layout it picked, on every dtype."""

import pytest
import torch
import torch.nn.functional as F

from krllm.infer.kernels import PackedMatmul


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-12)])
@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (2, 7, 48)])
def test_equals_f_linear(dtype, tol, shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(40, 48, generator=g).to(dtype)
    x = torch.randn(*shape, generator=g).to(dtype)
    mm = PackedMatmul(w)
    got, want = mm(x), F.linear(x, w)
    assert got.shape == want.shape == (*shape[:-1], 40) and got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert mm.nbytes() == w.numel() * w.element_size()


def test_packs_on_cpu_when_onednn_is_there_and_falls_back_otherwise():
    w = torch.randn(16, 8)
    assert (PackedMatmul(w).packed is not None) == torch.backends.mkldnn.is_available()
    fallback = PackedMatmul(w.double())  # oneDNN does not pack fp64: the plain weight is kept
    assert fallback.packed is None and fallback.weight is not None


def test_packed_copy_does_not_follow_later_changes_of_the_weight():
    """The engine packs once at start; a packed matmul is a snapshot (documented in the runner)."""
    w = torch.randn(16, 8)
    mm = PackedMatmul(w)
    x = torch.randn(1, 8)
    before = mm(x)
    w.mul_(2)
    if mm.packed is not None:
        torch.testing.assert_close(mm(x), before)
    else:
        torch.testing.assert_close(mm(x), 2 * before)
