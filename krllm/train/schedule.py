"""Learning-rate schedule as a pure function of the step, so resuming needs only the step number.

Linear warmup from ~0 to `lr` over `warmup` steps, then cosine (or linear) decay to `min_lr` at
`total` steps; `constant` holds `lr` after warmup.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup: int, total: int, kind: str = "cosine") -> float:
    """Learning rate for optimizer step `step` (0-based: the first update uses lr_at(0))."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if kind == "constant":
        return lr
    decay_steps = max(1, total - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    if kind == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        coeff = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {kind!r}: use cosine, linear or constant")
    return min_lr + coeff * (lr - min_lr)
