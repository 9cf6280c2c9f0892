"""Logging for the transformers/TRL trainers shared by every PEFT/TRL method (sft, classify; later dpo, grpo).

- `KrllmLogCallback`: every Trainer log -> `metrics.jsonl` + TensorBoard via krllm.tracking, with
  real (non-pad) tokens/s (over time spent in optimizer steps, so evaluation and checkpointing do not
  dilute it) and the padding share, both measured by the collator's TokenCounter.
- Progress: a rich bar with ETA on a terminal; one plain line per log otherwise (CI, pipes).
  Rank 0 only (`state.is_world_process_zero`).
- `DivergenceGuard`: stops the run, with advice, at the first step whose trainable weights are no
  longer finite, before the Trainer saves them.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch
from transformers import TrainerCallback

from krllm.errors import KrllmError
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


class DivergenceGuard(TrainerCallback):
    """Raise at the first step that leaves a trainable weight NaN or infinite.

    transformers' Trainer trains on through NaN (and `logging_nan_inf_filter` keeps NaN losses out of
    the log), then saves the NaN weights as the adapter and merged model. A NaN loss or gradient turns
    the weights NaN in the same optimizer step (AdamW, clipping), so checking the weights catches both;
    an fp16 scaler's skipped steps leave them finite, as they should. Checked on every step on CPU
    (one pass over the trainable weights); on accelerators only on steps that log, evaluate or save,
    and on the last, so most steps need no device sync. Add it after the Trainer's own callbacks: it
    reads what DefaultFlowCallback decided for this step.

    Test hook (environment, as in krllm.train.pretrain): KRLLM_FAULT_NAN_AT_STEP=N makes a trainable
    weight NaN at step N.
    """

    def __init__(self):
        self.nan_at = int(os.environ.get("KRLLM_FAULT_NAN_AT_STEP", "0"))

    def on_step_end(self, args, state, control, model=None, **kw):
        if model is None:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        if state.global_step == self.nan_at:
            with torch.no_grad():
                params[0].view(-1)[0] = float("nan")
        due = (params[0].device.type == "cpu" or control.should_log or control.should_save
               or control.should_evaluate or control.should_training_stop or state.global_step >= state.max_steps)
        if due and not bool(torch.isfinite(torch.stack(torch._foreach_norm(params)).float().sum())):
            raise KrllmError(_divergence_message(args, state))


def _divergence_message(args, state) -> str:
    """Where the run stopped, what is still good, and what to change in this run's `train` section."""
    checkpoints = sorted(Path(args.output_dir).glob("checkpoint-*"),
                         key=lambda p: int(p.name.rsplit("-", 1)[1]) if p.name.rsplit("-", 1)[1].isdigit() else -1)
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    advice = [f"lower train.lr (now {args.learning_rate:g})"]
    if args.max_grad_norm <= 0:
        advice.append("set train.max_grad_norm=1.0 (now off)")
    if args.bf16 or args.fp16:
        advice.append(f"use train.dtype=fp32 (now {'bf16' if args.bf16 else 'fp16'})")
    return (f"training diverged at step {state.global_step}: the trainable weights are no longer finite"
            + (f" (last logged loss {losses[-1]:.4g})" if losses else "") + ". Stopped without saving; "
            + (f"the last good checkpoint is {checkpoints[-1]}. " if checkpoints else "no checkpoint was saved yet. ")
            + "To fix: " + ", ".join(advice[:-1]) + (" or " if len(advice) > 1 else "") + advice[-1]
            + (", then continue with --resume." if checkpoints else ", then start again."))
