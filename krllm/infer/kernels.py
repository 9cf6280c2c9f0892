"""Matrix multiplications for decoding, with the weight stored the way this device multiplies fastest.

At decode time almost all of the work is `x @ W.T` with a handful of rows, i.e. reading every
weight once per token. On CPU, oneDNN's pre-packed ("reordered") weights read about 1.5-2x faster
than the plain row-major matrix that `F.linear` or `x @ W_t` use (measured on this 2-core EPYC, fp32:
7.5 vs 10.8 ms per token for all matrices of the ~31M benchmark model; bf16 packed: 3.2-4.2 ms).
Packing is tried once per matrix and checked against `F.linear`; wherever it is unavailable
(GPU, MPS, a torch build without oneDNN, a dtype it does not pack) the plain weight is used.
When the C step (krllm.infer.native) reads the weights itself, the matrix stays plain and oneDNN
multiplies it only where the PyTorch path still runs (the C step's start-up check, large bf16
batches on CPUs without AVX-512 BF16).

    mm = PackedMatmul(weight)       # weight (out, in), as in nn.Linear
    y = mm(x)                       # x (..., in) -> (..., out) == F.linear(x, weight)
    mm = PackedMatmul(weight, norm_weight)   # == F.linear(x * norm_weight, weight)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_PACKABLE = (torch.float32, torch.bfloat16)


def _onednn_ready(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or weight.dtype not in _PACKABLE or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _onednn_agrees(weight: torch.Tensor, onednn_weight: torch.Tensor) -> bool:
    """Does oneDNN's product with `onednn_weight` (packed, or the plain matrix) equal F.linear with
    `weight` on a probe input? (Guards against a torch build whose oneDNN path misbehaves.)"""
    try:
        probe = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, onednn_weight, None, "none", [], "")
        want = F.linear(probe, weight)
    except (RuntimeError, NotImplementedError):
        return False
    tol = 1e-4 if weight.dtype == torch.float32 else 3e-2
    return (got - want).abs().max().item() <= tol * (want.abs().max().item() + 1e-6)


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of `weight` (out, in) (call only when `_onednn_ready`), or None when packing
    fails or gives other results than F.linear."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
    except (RuntimeError, NotImplementedError):
        return None
    return packed if _onednn_agrees(weight, packed) else None


def _fold(weight: torch.Tensor, in_scale: torch.Tensor) -> torch.Tensor:
    """weight * in_scale over input columns, computed in fp32: F.linear(x, _fold(W, g)) == F.linear(x * g, W)."""
    return (weight.float() * in_scale.float()).to(weight.dtype)


class PackedMatmul:
    """y = (x * in_scale) @ weight.T (no bias), through oneDNN on CPU when it works, else F.linear.

    in_scale (in,) is an RMSNorm weight that precedes the matmul: packing folds it into the packed
    copy (one multiply less per call); the plain path multiplies x by it.

    pack=False keeps a plain row-major `weight` (with in_scale folded in) for callers that read it
    themselves (krllm.infer.native) and still multiplies through oneDNN, which on the plain matrix
    is 2-2.5x faster than F.linear for a few dozen rows, without a second copy.
    """

    def __init__(self, weight: torch.Tensor, in_scale: torch.Tensor | None = None, pack: bool = True):
        self.out_features, self.in_features = weight.shape
        self.packed = None  # what oneDNN multiplies with: the packed copy, or the plain weight itself
        if not pack:
            self.weight = weight.contiguous() if in_scale is None else _fold(weight, in_scale)
            self.in_scale = None
            if _onednn_ready(self.weight) and _onednn_agrees(self.weight, self.weight):
                self.packed = self.weight
            return
        if _onednn_ready(weight):
            self.packed = _pack(weight if in_scale is None else _fold(weight, in_scale))
        # keep only what the call reads
        self.weight = weight if self.packed is None else None
        self.in_scale = in_scale if self.packed is None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x if self.in_scale is None else x * self.in_scale, self.weight)

    def nbytes(self) -> int:
        t = self.packed if self.packed is not None else self.weight
        return self.out_features * self.in_features * t.element_size()
