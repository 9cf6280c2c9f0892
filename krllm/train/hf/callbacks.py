"""Logging for the transformers/TRL trainers shared by every PEFT/TRL method (sft, classify; later dpo, grpo).

- `KrllmLogCallback`: every Trainer log -> `metrics.jsonl` + TensorBoard via krllm.tracking, with
  real (non-pad) tokens/s (over time spent in optimizer steps, so evaluation and checkpointing do not
  dilute it) and the padding share, both measured by the collator's TokenCounter.
- Progress: a rich bar with ETA on a terminal; one plain line per log otherwise (CI, pipes).
Rank 0 only (`state.is_world_process_zero`).
"""

from __future__ import annotations

import time
import warnings

from transformers import TrainerCallback

from krllm.tracking import MetricsLogger


def quiet_known_warnings() -> None:
    """TRL 1.16 still sets `gradient_checkpointing`, which transformers 5 reports as deprecated on
    every run; the message is about TRL's code, not the user's config."""
    warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.* is deprecated", category=FutureWarning)


def open_logger(cfg, run_dir) -> MetricsLogger:
    """metrics.jsonl (+ TensorBoard / W&B per the run config's `tracking` section) in `run_dir`."""
    return MetricsLogger(run_dir, tensorboard=cfg.tracking.tensorboard, wandb_project=cfg.tracking.wandb_project,
                         run_name=cfg.name)


# Trainer log keys -> our names (others pass through; eval_* go to split "eval")
_RENAME = {"learning_rate": "lr", "train_loss": "final_loss"}
_SKIP = {"total_flos", "epoch"}
# TRL's alignment keys, as printed: DPO's reward margin and share of pairs ranked right; GRPO's mean
# reward and KL to the reference
_SHOWN = {"rewards/margins": "margin", "rewards/accuracies": "reward acc", "reward": "reward", "kl": "kl"}


class KrllmLogCallback(TrainerCallback):
    def __init__(self, logger: MetricsLogger, counter=None, label: str = "train"):
        self.logger = logger
        self.counter = counter
        self.label = label
        self._t0 = None
        self._progress = None
        self._task = None
        self._step0 = 0
        self._t_step = None
        self._busy = 0.0

    # -- progress ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()
        self._step0 = state.global_step  # > 0 when resuming: ETA counts only this session's pace
        if self.counter is not None:
            self.counter.take()
        if not state.is_world_process_zero:
            return
        from rich.console import Console

        console = Console(stderr=True)
        if console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(TextColumn("[bold]{task.fields[label]}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                      TextColumn("{task.fields[desc]}"), console=console, transient=False)
            self._progress.start()
            self._task = self._progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                                 label=self.label, desc="")

    def on_step_begin(self, args, state, control, **kw):
        self._t_step = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if self._t_step is not None:  # time inside optimizer steps only: evaluation/saving excluded from tok/s
            self._busy += time.perf_counter() - self._t_step
            self._t_step = None
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_train_end(self, args, state, control, **kw):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)
            self._progress.stop()
            self._progress = None

    # -- metrics -----------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or not state.is_world_process_zero:
            return
        step = state.global_step
        train, evals = {}, {}
        for k, v in logs.items():
            if k in _SKIP or not isinstance(v, (int, float)):
                continue
            if k.startswith("eval_"):
                evals[k[5:]] = v
            else:
                train[_RENAME.get(k, k)] = v
        now = time.perf_counter()
        if train and "loss" in train and self.counter is not None:
            real, slots, _ = self.counter.take()
            train["tok_per_s"] = real / max(self._busy, 1e-9)
            train["pad_frac"] = 1.0 - real / slots if slots else 0.0
            self._busy = 0.0
        if train:
            self.logger.log(step, "train", **train)
        if evals:
            self.logger.log(step, "eval", **evals)
        self._print(state, train, evals, now)

    def _print(self, state, train: dict, evals: dict, now: float) -> None:
        parts = []
        if "loss" in train:
            parts.append(f"loss {train['loss']:.4f}")
        if "lr" in train:
            parts.append(f"lr {train['lr']:.2e}")
        for k, short in _SHOWN.items():
            if k in train:
                parts.append(f"{short} {train[k]:.3f}")
        if "tok_per_s" in train:
            parts.append(f"{train['tok_per_s']:,.0f} tok/s")
        for k, v in evals.items():
            if k in ("loss", "accuracy", "f1_macro"):
                parts.append(f"val {k} {v:.4f}")
            elif k in _SHOWN:
                parts.append(f"val {_SHOWN[k]} {v:.3f}")
        if not parts:
            return
        desc = " | ".join(parts)
        if self._progress is not None:
            self._progress.update(self._task, desc=desc)
            return
        if not state.max_steps:  # an evaluation before training starts
            print(f"{self.label} before training | {desc}", flush=True)
            return
        done, total = state.global_step, state.max_steps
        elapsed = now - (self._t0 or now)
        eta = elapsed / max(done - self._step0, 1) * (total - done)
        print(f"{self.label} step {done}/{total} | {desc} | ETA {_fmt(eta)}", flush=True)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
