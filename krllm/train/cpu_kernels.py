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

import ctypes
import sys

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


def _mm_any(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """a @ b_t.T: oneDNN for fp32, PyTorch's matmul (oneDNN already) for bf16/fp16."""
    return _mm(a, b_t) if a.dtype == torch.float32 else a @ b_t.t()


class CausalAttention(torch.autograd.Function):
    """Causal grouped-query attention on CPU, one (batch, kv head) group at a time.

    The `rep` query heads that share a kv head are stacked into R = rep*T rows, so each group is
    two GEMMs forward ((R, D) @ (D, T), (R, T) @ (T, D)) and four backward, with no repeated K/V
    copies, and the scores of a group (R x T fp32: 512 KB for the benchmark model) stay in L2 while
    the mask, softmax and casts run on them. fp32: the GEMMs run on oneDNN (`onednn_mm`). bf16/fp16
    (autocast): transformers' eager numerics — scores in the compute dtype (q pre-scaled), softmax
    in fp32, probabilities rounded to the compute dtype for P @ V. The fp32 probabilities are saved
    for backward (B*H*T*T fp32 per layer, as autograd of the unfused version would). Measured per
    layer of the benchmark model (B 8, H 8/4, T 256, D 64), forward + backward, 1 thread, CPU time:
    fp32 ~32 ms vs ~47 ms for SDPA's flash kernel; bf16 see docs/pretraining.md.
    """

    @staticmethod
    def forward(ctx, q, k, v):  # q (B, H, T, D), k/v (B, H_kv, T, D) -> (B, H, T, D)
        B, H, T, D = q.shape
        h_kv = k.shape[1]
        G, R = B * h_kv, H // h_kv * T  # groups, rows per group
        with torch.autocast("cpu", enabled=False):
            qs = torch.empty(B, H, T, D, dtype=q.dtype, device=q.device)
            torch.mul(q, D ** -0.5, out=qs)  # scaled, contiguous
            qs = qs.view(G, R, D)
            kc, vc = k.contiguous().view(G, T, D), v.contiguous().view(G, T, D)
            mask = torch.full((T, T), float("-inf"), device=q.device).triu(1).repeat(R // T, 1)  # (R, T)
            p = torch.empty(G, R, T, dtype=torch.float32, device=q.device)  # softmax probabilities, fp32
            out = torch.empty(G, R, D, dtype=q.dtype, device=q.device)
            for g in range(G):
                s = _mm_any(qs[g], kc[g])  # (R, T) scores in the compute dtype
                s = s.add_(mask) if s.dtype == torch.float32 else s.float().add_(mask)
                torch.ops.aten._softmax.out(s, -1, False, out=p[g])
                out[g] = _mm_any(p[g].to(q.dtype), vc[g].t())  # (R, T) @ (T, D)
        ctx.save_for_backward(qs, kc, vc, p)
        return out.view(B, H, T, D)

    @staticmethod
    def backward(ctx, d_out):  # (B, H, T, D)
        qs, kc, vc, p = ctx.saved_tensors
        G, R, D = qs.shape
        B, H, T = d_out.shape[0], d_out.shape[1], kc.shape[1]
        with torch.autocast("cpu", enabled=False):
            do = d_out.to(qs.dtype).contiguous().view(G, R, D)
            dq, dk, dv = torch.empty_like(qs), torch.empty_like(kc), torch.empty_like(vc)
            for g in range(G):
                pg = p[g].to(qs.dtype)  # (R, T), what the forward multiplied V with
                dv[g] = _mm_any(do[g].t(), pg.t()).t()  # (P^T dO)^T computed as dO^T P: (D, R) @ (R, T)
                dp = _mm_any(do[g], vc[g]).float()  # (R, T)
                ds = torch.ops.aten._softmax_backward_data(dp, p[g], -1, torch.float32).to(qs.dtype)  # (R, T)
                dq[g] = _mm_any(ds, kc[g].t())  # (R, T) @ (T, D)
                dk[g] = _mm_any(qs[g].t(), ds.t()).t()  # (dS^T Qs)^T as Qs^T dS: (D, R) @ (R, T)
        return dq.mul_(D ** -0.5).view(B, H, T, D), dk.view(B, -1, T, D), dv.view(B, -1, T, D)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention, q (B, H, T, D), k/v (B, H_kv, T, D) -> (B, H, T, D) on CPU (see CausalAttention).

    fp32 with more than one thread goes to SDPA's flash kernel instead: it splits the work across
    threads in large pieces, while the per-group GEMMs here are small (measured with 2 threads on
    a busy 2-core machine: ~2x slower than SDPA; with 1 thread ~1.5x faster). In bf16 the grouped
    kernel was faster than the matmul attention with either thread count.
    """
    if q.dtype == torch.float32 and torch.get_num_threads() > 1:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=k.shape[1] != q.shape[1])
    return CausalAttention.apply(q, k, v)


def use_onednn_attention(model: nn.Module) -> int:
    """Give the model's attention modules the oneDNN fp32 causal kernel; returns how many.

    The model uses it only where it applies (CPU training attention: fp32, or bf16/fp16 under
    autocast; no cache or mask, T > 1, not under torch.compile) and its usual path everywhere else.
    """
    n = 0
    for module in model.modules():
        if hasattr(module, "causal_kernel"):
            module.causal_kernel = causal_attention
            n += 1
    return n


def keep_freed_memory() -> bool:
    """glibc: keep freed heap memory for the next step instead of returning it to the OS.

    A training step frees and re-allocates the same activation tensors every step. With glibc's
    defaults, freed memory at the top of the heap beyond a trim threshold goes back to the OS and
    every page faults in again on its next use (on this project's VM ~2 us per 4 KB page: a fresh
    2.8M-element fp32 `a * b` took 2.0 ms vs 0.6 ms into a reused buffer). This disables the trim
    and serves allocations up to glibc's 32 MB maximum from the heap. The process's peak memory is
    unchanged; its RSS simply stays at the peak between steps (for the rest of the process: glibc
    settings are process-wide). Returns False where there is no glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, ctypes.c_int(-1))  # -1: never trim
                    and libc.mallopt(m_mmap_threshold, ctypes.c_int(32 * 1024 * 1024)))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
