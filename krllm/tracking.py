"""Metrics for every training stage: `metrics.jsonl` (always), TensorBoard (default), W&B (opt-in).

One JSON object per line: {"step": 10, "split": "train", "loss": 3.21, "lr": 3e-4, ...}.
The report card and plots read metrics.jsonl; TensorBoard reads `tb/` (`tensorboard --logdir runs/`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path


class MetricsLogger:
    """Append-only metrics sink. Call from rank 0 only; `log` never raises on a missing backend."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, wandb_project: str | None = None,
                 run_name: str | None = None, config: dict | None = None, purge_step: int | None = None):
        """`purge_step`: a resumed run restarts at this step; records from the interrupted run at
        or after it are dropped (metrics.jsonl rewritten atomically, TensorBoard's `purge_step`)."""
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / "metrics.jsonl"
        if purge_step is not None and self.path.exists():
            from krllm.config import atomic_write_text

            kept = [json.dumps(r, ensure_ascii=False) + "\n" for r in read_metrics(self.path)
                    if int(r.get("step", 0)) < purge_step]
            atomic_write_text(self.path, "".join(kept))
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: metrics.jsonl still has everything
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge_step)
        self._wandb = None
        if wandb_project:
            try:
                import wandb
            except ImportError:
                print("note: wandb_project is set but wandb is not installed; logging locally only")
            else:
                self._wandb = wandb.init(project=wandb_project, name=run_name, config=config)

    def log(self, step: int, split: str = "train", **metrics: float) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in metrics.items()}
        # NaN / inf are not JSON: metrics.jsonl stays strict JSON (null), TensorBoard and W&B get finite values only
        finite = {k: v for k, v in clean.items() if not (isinstance(v, float) and not math.isfinite(v))}
        record = {"step": int(step), "split": split, "time": round(time.time(), 3),
                  **{k: finite.get(k) for k in clean}}
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        if self._tb is not None:
            for k, v in finite.items():
                if isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, step)
        if self._wandb is not None:
            self._wandb.log({f"{split}/{k}": v for k, v in finite.items()}, step=step)

    def log_text(self, step: int, tag: str, text: str) -> None:
        """Free text (e.g. generated samples) to TensorBoard's text tab; metrics.jsonl via `log`."""
        if self._tb is not None:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path: str | Path) -> list[dict]:
    """All records of a metrics.jsonl; a torn last line (killed run) is ignored."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    out = []
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
