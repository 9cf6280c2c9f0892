"""Training curves as PNG files (matplotlib, Agg backend: no display needed): loss, learning rate, and
the alignment stages' own metrics (GRPO reward and KL, DPO reward margin and accuracy).

Input is a list of metrics.jsonl records (`krllm.tracking.read_metrics`): {"step", "split", "loss",
"lr", ...}. Train values are drawn as a thin line with a moving average on top (tiny batches are
noisy); validation values as markers joined by a line.
"""

from __future__ import annotations

import math
import re
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

def _train_line(ax, xs: list[float], ys: list[float], color: str, label: str) -> None:
    """A noisy train series: thin raw line, and a thick moving average once there are 8+ points."""
    ax.plot(xs, ys, color=color, alpha=0.35, linewidth=1, label=label)
    if len(ys) >= 8:
        k = max(2, len(ys) // 20)
        ax.plot(xs, _smooth(ys, k), color=color, linewidth=2, label=f"{label.split()[0]} (moving avg {k})")


def plot_loss(records: list[dict], out_png: str | Path, title: str) -> Path | None:
    """Train (+ smoothed) and val loss vs optimizer step; None when there is no loss to plot."""
    tx, ty = _series(records, "train", "loss")
    vx, vy = _series(records, VAL_SPLITS, "loss")
    if not ty and not vy:
        return None
    plt, fig, ax = _figure()
    if ty:
        _train_line(ax, tx, ty, "tab:blue", "train loss")
    if vy:
        ax.plot(vx, vy, color="tab:orange", marker="o", linewidth=2, label="val loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.legend()
    return _save(plt, fig, out_png)


REWARD_FN = re.compile(r"^rewards/(.+)/mean$")  # TRL GRPO: each reward function's mean over the batch
EXTRA_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def plot_metric(records: list[dict], key: str, out_png: str | Path, title: str, ylabel: str,
                per_function: bool = False) -> Path | None:
    """One logged metric vs optimizer step: train (blue, + smoothed) and validation (orange markers).

    per_function: also each GRPO reward function's train mean (`rewards/<fn>/mean`), one line each, so a
    total reward that rises only through the format reward shows as such. None when `key` was never logged.
    """
    tx, ty = _series(records, "train", key)
    vx, vy = _series(records, VAL_SPLITS, key)
    if not ty and not vy:
        return None
    plt, fig, ax = _figure()
    if ty:
        _train_line(ax, tx, ty, "tab:blue", f"train {key}")
    if vy:
        ax.plot(vx, vy, color="tab:orange", marker="o", linewidth=2, label=f"val {key}")
    if per_function:
        names = sorted({m.group(1) for r in records if r.get("split", "train") == "train"
                        for m in map(REWARD_FN.match, r) if m})
        for name, color in zip(names, EXTRA_COLORS):
            fx, fy = _series(records, "train", f"rewards/{name}/mean")
            ax.plot(fx, fy, color=color, linewidth=1.5, label=f"{name} (mean)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
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
