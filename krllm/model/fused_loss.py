"""LM head + cross-entropy in row chunks, gradients computed in the forward (training only).

`linear_cross_entropy(h, w, targets)` equals
`F.cross_entropy((h @ w.T).float(), targets, ignore_index=-100)` (mean over targets != -100)
without ever holding the (N, V) logits: for each chunk of `chunk` rows it computes the logits,
their log-softmax, the loss, and at once the gradient (softmax - onehot) / n, which goes straight
into dh = g @ w and dw += g.T @ h. Backward only scales the saved dh, dw by the incoming gradient.

Why: the full logits (2048 x 8000 fp32 = 65 MB for the benchmark model) and their log-softmax and
gradient are the three largest tensors of a step; on CPU each is a fresh allocation whose pages
fault in every step, and one (2048 x 512) @ (512 x 8000) GEMM runs slower than chunks of 512 rows
(measured: ~145 vs ~200 GFLOP/s fp32 on oneDNN, one thread). The loss is the same up to fp32
rounding (log-softmax per row, then a mean), so golden losses stay within 1e-6.

Precision follows the caller: under autocast the GEMMs run in the autocast dtype (w is cast once
per call, as autocast would), the log-softmax and the loss in fp32, dw accumulates in fp32.
`mm(a, b_t) -> a @ b_t.T` may be a faster kernel for fp32 CPU (krllm.train.cpu_kernels sets it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

IGNORE_INDEX = -100
CHUNK_ROWS = 512


def _mm(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    return a @ b_t.t()


class LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, w, targets, chunk: int, dtype: torch.dtype, mm: Callable | None):
        # h (N, C), w (V, C), targets (N,) long -> mean loss over valid targets (fp32 scalar)
        mm = mm if (mm is not None and dtype == torch.float32) else _mm
        hc, wc = h.to(dtype), w.to(dtype)  # (N, C), (V, C) in the compute dtype
        valid = targets != IGNORE_INDEX  # (N,)
        n = valid.sum().to(torch.float32)  # 0 valid targets -> 0/0 = nan, as F.cross_entropy
        safe_t = torch.where(valid, targets, 0)[:, None]  # (N, 1)
        grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        dh = torch.empty_like(h) if grad else None  # (N, C)
        dw_t = torch.zeros(w.shape[1], w.shape[0], dtype=torch.float32, device=w.device) if grad else None  # (C, V)
        for s in range(0, h.shape[0], chunk):
            e = min(s + chunk, h.shape[0])
            logp = torch.log_softmax(mm(hc[s:e], wc), dim=-1, dtype=torch.float32)  # (n, V) fp32, one pass
            t, ok = safe_t[s:e], valid[s:e]
            loss -= logp.gather(1, t)[:, 0].masked_fill(~ok, 0.0).sum()
            if grad:
                g = logp.exp_()  # softmax, in place
                g.scatter_add_(1, t, torch.full_like(t, -1, dtype=g.dtype))  # - onehot(target)
                g.mul_((ok.to(g.dtype) / n)[:, None])  # ignored rows contribute nothing; mean over valid
                g = g.to(dtype)  # (n, V)
                dh[s:e] = mm(g, wc.t())  # (n, V) @ (V, C)
                dw_t += mm(hc[s:e].t(), g.t())  # (C, n) @ (n, V): faster than g.T @ h for V >> C
        if grad:
            ctx.save_for_backward(dh, dw_t)
        return loss / n

    @staticmethod
    def backward(ctx, grad_out):
        dh, dw_t = ctx.saved_tensors
        dh = dh * grad_out.to(dh.dtype) if ctx.needs_input_grad[0] else None
        dw = (dw_t.t() * grad_out).contiguous() if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, *, chunk: int = CHUNK_ROWS,
                         mm: Callable | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits h @ w.T against targets (-100 = ignore), chunked over rows.

    h (N, C) hidden states, w (V, C) the LM head weight, targets (N,). Under CPU/CUDA autocast the
    matmuls run in the autocast dtype; `mm` (fp32 only) replaces the default `a @ b_t.T`.
    """
    dtype = h.dtype
    if torch.is_autocast_enabled(h.device.type):
        dtype = torch.get_autocast_dtype(h.device.type)
    return LinearCrossEntropy.apply(h, w, targets, chunk, dtype, mm)
