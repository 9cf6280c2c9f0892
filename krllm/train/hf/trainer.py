"""The transformers/TRL Trainer as every PEFT/TRL method sets it up: arguments from our `train` section,
length-aware sampling, early stopping, our logging in place of transformers' printer, and the final
evaluation read back from the log.

    args = SFTConfig(**trainer_arguments(cfg.train, run_dir, device, dtype, has_eval), max_length=...)
    trainer = with_length_sampling(SFTTrainer)(model=..., args=args, callbacks=early_stopping(cfg.train, has_eval))
    use_krllm_logging(trainer, mode, counter)
"""

from __future__ import annotations

from pathlib import Path

import torch

from krllm.train.hf import batching as B
from krllm.train.hf.config import TrainSection
from krllm.train.hf.outputs import CHECKPOINTS


def trainer_arguments(t: TrainSection, run_dir: Path, device: torch.device, dtype: torch.dtype,
                      has_eval: bool) -> dict:
    """Keyword arguments of transformers' TrainingArguments (or a TRL subclass) shared by every method.

    Checkpoints go to <run_dir>/checkpoints/. With early stopping, every evaluation must leave a
    checkpoint (the best one is reloaded at the end), so checkpoints follow eval_steps.
    """
    early = bool(t.early_stopping_patience and has_eval)
    return dict(
        output_dir=str(run_dir / CHECKPOINTS), seed=t.seed, data_seed=t.seed,
        learning_rate=t.lr, lr_scheduler_type=t.schedule, warmup_steps=t.warmup, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum, gradient_checkpointing=t.gradient_checkpointing,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device.type == "cpu",
        remove_unused_columns=False,
        eval_strategy="steps" if has_eval else "no", eval_steps=t.eval_steps,
        save_strategy="steps", save_steps=t.eval_steps if early else t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=early, metric_for_best_model="eval_loss", greater_is_better=False,
        logging_steps=t.logging_steps, logging_first_step=True, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0,
    )


def early_stopping(t: TrainSection, has_eval: bool) -> list:
    """[EarlyStoppingCallback] when `train.early_stopping_patience` is set and there is a validation set."""
    from transformers import EarlyStoppingCallback

    if not (t.early_stopping_patience and has_eval):
        return []
    return [EarlyStoppingCallback(t.early_stopping_patience, t.early_stopping_min_delta)]


def use_krllm_logging(trainer, mode: str, counter: B.TokenCounter) -> None:
    """Tell a `with_length_sampling` trainer its batching mode and token counter; drop transformers'
    printer (KrllmLogCallback prints); stop on NaN weights before they are saved (every process, so
    that all ranks stop together)."""
    from transformers import PrinterCallback

    from krllm.train.hf.callbacks import DivergenceGuard

    trainer.krllm_batching, trainer.krllm_counter = mode, counter
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(DivergenceGuard())


def with_length_sampling(base):
    """`base` (SFTTrainer or Trainer) whose train sampler groups by length (`length_grouped` mode), whose
    evaluation batches are sorted by length (less padding, same loss), and whose evaluation batches are
    not counted as training throughput."""

    class LengthAware(base):
        krllm_batching: str | None = None
        krllm_counter: B.TokenCounter | None = None

        def evaluate(self, *args, **kwargs):
            return self._without_counting(super().evaluate, *args, **kwargs)

        def predict(self, *args, **kwargs):
            return self._without_counting(super().predict, *args, **kwargs)

        def _without_counting(self, fn, *args, **kwargs):
            """Batches collated while evaluating are not training throughput."""
            if self.krllm_counter is None:
                return fn(*args, **kwargs)
            self.krllm_counter.paused = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.krllm_counter.paused = False

        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            if self.krllm_batching == "length_grouped" and "length" in ds.column_names:
                return B.LengthGroupedSampler(ds["length"], self.args.train_batch_size * max(
                    1, self.args.gradient_accumulation_steps), seed=self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if "length" in getattr(eval_dataset, "column_names", ()) and self.args.world_size <= 1:
                lengths = eval_dataset["length"]
                return sorted(range(len(lengths)), key=lambda i: -lengths[i])
            return super()._get_eval_sampler(eval_dataset)

    return LengthAware


def last_eval(trainer) -> dict:
    """The evaluation logged at the final step, if the schedule already ran one there (no second pass).

    With early stopping the best checkpoint was reloaded: its evaluation is the one that counts.
    """
    state = trainer.state
    want = state.global_step
    if state.best_model_checkpoint and trainer.args.load_best_model_at_end:
        want = int(Path(state.best_model_checkpoint).name.split("-")[-1])
    for rec in reversed(state.log_history):
        if "eval_loss" in rec and rec.get("step") == want:
            return rec
    return {}
