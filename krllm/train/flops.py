"""FLOPs per token and this machine's matmul peak, for an honest MFU.

MFU = flops_per_token * tokens/s / peak. FLOPs per token (forward + backward) count 6 per matmul
parameter — every Linear including the LM head, but not the embedding lookup — plus causal
attention: QK^T and AV each cost 2*T*d per token in the forward over the full T x T square, half
of that under a causal mask, times 3 for forward + backward = 6 * L * T * d (d = H * D).

The peak is measured, not looked up: the best of a few large square matmuls in the training
dtype on the training device, in the same process and thread count as the run — on CPU with both
PyTorch's default GEMM and oneDNN (the faster of the two on the machine counts).
"""

from __future__ import annotations

import time

import torch


def matmul_params(cfg) -> int:
    """Parameters that take part in a matmul: all Linear weights incl. the LM head (tied or not)."""
    c, i, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    d_q, d_kv = cfg.num_attention_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    per_layer = c * d_q + 2 * c * d_kv + d_q * c + 3 * c * i
    return L * per_layer + c * V


def flops_per_token(cfg, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of a causal Llama at sequence length `seq_len`."""
    attn = 6 * cfg.num_hidden_layers * seq_len * cfg.num_attention_heads * cfg.dim_per_head
    return 6.0 * matmul_params(cfg) + attn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@torch.no_grad()
def matmul_peaks(dtype: torch.dtype, device: torch.device | str = "cpu", seconds: float = 0.5,
                 sizes: tuple[int, ...] = (1024, 2048), clock=time.perf_counter) -> dict[str, float]:
    """Best achieved matmul FLOP/s per kernel: {"torch": ..., "onednn": ... (CPU only)}.

    Square n x n @ n x n in `dtype`, a few repeats per size and kernel. `clock` measures the time
    (`time.process_time` on a 1-thread run gives the rate while the process actually runs, robust
    to other jobs on a shared machine). On CPU, torch.matmul is MKL for fp32 and oneDNN for bf16.
    """
    device = torch.device(device)
    kernels = {"torch": torch.matmul}
    if device.type == "cpu":  # the loop's fp32 CPU matmuls run on oneDNN (krllm.train.cpu_kernels)
        from krllm.train.cpu_kernels import onednn_available, onednn_mm

        if onednn_available():
            kernels["onednn"] = onednn_mm
    best = dict.fromkeys(kernels, 0.0)
    budget = seconds / (len(sizes) * len(kernels))
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        for name, mm in kernels.items():
            mm(a, b)  # warm-up (oneDNN / cuBLAS kernel selection)
            _sync(device)
            t0, reps = clock(), 0
            while True:
                mm(a, b)
                reps += 1
                _sync(device)
                elapsed = clock() - t0
                if elapsed >= budget and reps >= 2:
                    break
            best[name] = max(best[name], 2.0 * n ** 3 * reps / elapsed)
    return best


def measure_matmul_peak(dtype: torch.dtype, device: torch.device | str = "cpu", seconds: float = 0.5,
                        sizes: tuple[int, ...] = (1024, 2048), clock=time.perf_counter) -> float:
    """This machine's matmul peak for `dtype`: the best of `matmul_peaks` over the kernels."""
    return max(matmul_peaks(dtype, device, seconds, sizes, clock).values())
