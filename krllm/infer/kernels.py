"""Matrix multiplications for decoding, with the weight stored the way this device multiplies fastest.

At decode time almost all of the work is `x @ W.T` with a handful of rows, i.e. reading every
weight once per token. On CPU, oneDNN's pre-packed ("reordered") weights read about 1.5-2x faster
than the plain row-major matrix that `F.linear` or `x @ W_t` use (measured on this 2-core EPYC, fp32:
7.5 vs 10.8 ms per token for all matrices of the ~31M benchmark model; bf16 packed: 3.2-4.2 ms).
Packing is tried once per matrix and checked against `F.linear`; wherever it is unavailable
(GPU, MPS, a torch build without oneDNN, a dtype it does not pack) the plain weight is used.

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


def _pack(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN's blocked copy of `weight` (out, in) (call only when `_onednn_ready`), or None when packing
    fails or gives other results than F.linear."""
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous())
        probe = torch.randn(2, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(weight.dtype)
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
        want = F.linear(probe, weight)
    except (RuntimeError, NotImplementedError):
        return None
    tol = 1e-4 if weight.dtype == torch.float32 else 3e-2
    scale = want.abs().max().item() + 1e-6
    return packed if (got - want).abs().max().item() <= tol * scale else None


class PackedMatmul:
    """y = (x * in_scale) @ weight.T (no bias), through oneDNN's packed weight on CPU when it works,
    else F.linear.

    in_scale (in,) is an RMSNorm weight that precedes the matmul: packing folds it into the packed
    copy (one multiply less per call); the plain path multiplies x by it.
    """

    def __init__(self, weight: torch.Tensor, in_scale: torch.Tensor | None = None):
        self.out_features, self.in_features = weight.shape
        self.packed = None
        if _onednn_ready(weight):
            self.packed = _pack(weight if in_scale is None else (weight.float() * in_scale.float()).to(weight.dtype))
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
