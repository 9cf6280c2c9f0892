"""Loss and learning-rate curves as PNG files (matplotlib, Agg backend: no display needed).

Input is a list of metrics.jsonl records (`krllm.tracking.read_metrics`): {"step", "split", "loss",
"lr", ...}. Train loss is drawn as a thin line with a moving average on top (tiny batches are
noisy); validation loss as markers joined by a line.
"""

from __future__ import annotations

import math
from pathlib import Path

SIZE_IN = (7.0, 4.0)
DPI = 110


VAL_SPLITS = ("val", "eval")  # pretrain logs "val", the Trainer-based stages "eval"


def _series(records: list[dict], split: str | tuple[str, ...], key: str) -> tuple[list[float], list[float]]:
    splits = (split,) if isinstance(split, str) else split
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("split", "train") in splits and isinstance(v, (int, float)) and math.isfinite(v) and "step" in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE_IN, dpi=DPI)
    ax.grid(True, alpha=0.3)
    return plt, fig, ax



def _save(plt, fig, out_png: str | Path) -> Path:
    """Lay out, write the PNG (creating its folder) and free the figure."""
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png

def plot_loss(records: list[dict], out_png: str | Path, title: str) -> Path | None:
    """Train (+ smoothed) and val loss vs optimizer step; None when there is no loss to plot."""
    tx, ty = _series(records, "train", "loss")
    vx, vy = _series(records, VAL_SPLITS, "loss")
    if not ty and not vy:
        return None
    plt, fig, ax = _figure()
    if ty:
        ax.plot(tx, ty, color="tab:blue", alpha=0.35, linewidth=1, label="train loss")
        if len(ty) >= 8:
            k = max(2, len(ty) // 20)
            ax.plot(tx, _smooth(ty, k), color="tab:blue", linewidth=2, label=f"train (moving avg {k})")
    if vy:
        ax.plot(vx, vy, color="tab:orange", marker="o", linewidth=2, label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    return _save(plt, fig, out_png)


def plot_lr(records: list[dict], out_png: str | Path, title: str) -> Path | None:
    """Learning rate vs optimizer step (train records); None when no record has an lr."""
    xs, ys = _series(records, "train", "lr")
    if not ys:
        return None
    plt, fig, ax = _figure()
    ax.plot(xs, ys, color="tab:green", linewidth=2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(title)
    return _save(plt, fig, out_png)
