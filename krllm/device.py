"""Device and compute dtype, chosen in one place and printed at start-up (no silent precision magic)."""

from __future__ import annotations

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` -> cuda > mps > cpu; otherwise the named device (error if unavailable)."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available (use device: auto or cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("device 'mps' requested but MPS is not available (use device: auto or cpu)")
    return dev


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmuls (AVX-512 BF16 / AMX), where bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """`auto` -> bf16 on CUDA with bf16 support and on CPUs with native bf16; fp32 elsewhere."""
    names = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if requested != "auto":
        if requested not in names:
            raise ValueError(f"unknown dtype {requested!r}: use auto, fp32, bf16 or fp16")
        return names[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32
