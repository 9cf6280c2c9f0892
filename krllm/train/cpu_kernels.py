"""fp32 matmuls through oneDNN on CPU: on this project's AMD EPYC, PyTorch's default fp32 GEMM
(MKL) runs at ~100 GFLOP/s per core, oneDNN's at ~220 (measured, torch 2.13: MKL does not use
its AVX-512 path on AMD). bf16/fp16 matmuls already go through oneDNN, so only fp32 changes.

`use_onednn_linears(model)` makes every `nn.Linear` of the model compute forward and both
backward matmuls with `torch.ops.mkldnn._linear_pointwise` when the input is an fp32 CPU tensor
outside autocast; anything else (autocast, other dtypes, CUDA/MPS) takes the usual `F.linear`.
Parameters, names and state dicts are untouched; results equal F.linear up to fp32 rounding.
The weight gradient is computed in whichever orientation oneDNN runs faster for the shape
(measured: (K, M) @ (M, N) then a transpose when N > K, e.g. 190 vs 160 GFLOP/s for gate/up).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """True when this torch build has the oneDNN linear kernel (x86/aarch64 CPU builds do)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 3)
        return bool(torch.equal(_mm(x, torch.ones(4, 3)), torch.full((2, 4), 3.0)))
    except (RuntimeError, AttributeError):
        return False


@torch.library.custom_op("krllm::onednn_mm", mutates_args=())
def onednn_mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a (M, K) @ b_t.T (K, N) -> (M, N) with oneDNN (strided views are fine).

    A custom op so torch.compile keeps it as one opaque kernel call (inductor's own lowering of
    the oneDNN linear only handles frozen inference weights).
    """
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


@onednn_mm.register_fake
def _(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b_t.shape[0])


_mm = onednn_mm


class OneDNNLinear(torch.autograd.Function):
    """y = x @ w.T with oneDNN in forward and for both gradients (no bias: Llama has none)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # x (..., K), w (N, K)
        ctx.save_for_backward(x, w)
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        return _mm(x2, w).view(*x.shape[:-1], w.shape[0])  # (..., N)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # dy (..., N)
        x, w = ctx.saved_tensors
        dy2 = dy.reshape(-1, w.shape[0])  # (M, N)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = _mm(dy2, w.t()).view(x.shape)  # (M, N) @ (N, K)
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1])  # (M, K)
            if w.shape[0] > w.shape[1]:  # N > K: (K, M) @ (M, N) then transpose is the faster GEMM here
                dw = _mm(x2.t(), dy2.t()).t().contiguous()  # (N, K)
            else:
                dw = _mm(dy2.t(), x2.t())  # (N, M) @ (M, K) -> (N, K)
        return dx, dw


def _forward(lin: nn.Linear):
    def forward(x: torch.Tensor) -> torch.Tensor:
        w = lin.weight
        if (x.dtype == torch.float32 and w.dtype == torch.float32 and x.device.type == "cpu"
                and lin.bias is None and not torch.is_autocast_enabled("cpu")):
            return OneDNNLinear.apply(x, w)
        return F.linear(x, w, lin.bias)

    return forward


def use_onednn_linears(model: nn.Module) -> int:
    """Route the model's fp32 CPU Linear layers through oneDNN; returns how many were switched.

    Each switched layer also gets `mm = onednn_mm`, the kernel `krllm.model.fused_loss` uses for
    the LM head when the model computes its training loss without logits.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.bias is None:
            module.forward = _forward(module)
            module.mm = onednn_mm
            n += 1
    return n
