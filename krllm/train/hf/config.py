"""Config sections every TRL/PEFT training method shares: which parameters train (`peft`), the optimizer
and schedule (`train`), and where metrics go (`tracking`).

`TunedRunConfig` is the top level every causal-LM tuning method shares (sft, dpo, grpo): run name and
directory, base model, tokenizer, merge, peft, train, tracking. A method's own config subclasses it and
adds its data section and any method-specific ones, and may change the defaults here (e.g. DPO's lower
learning rate). Pydantic only: importing this never imports torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel, check_run_name


class PeftSection(StrictModel):
    """Which parameters train. LoRA/DoRA/QLoRA train small adapters; `full` trains every weight."""

    method: Literal["lora", "dora", "qlora", "full"] = Field(
        "lora", description="lora | dora (LoRA + magnitude) | qlora (4-bit base: CUDA + bitsandbytes) | full")
    r: int = Field(16, gt=0, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="adapter scale numerator (scale = alpha / r)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input; 0 = off (on CPU, "
                           "0.05 costs ~20% more memory and some speed; it can help small data sets)")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt (e.g. [q_proj, v_proj]) or all-linear (every Linear "
        "except the output head)")
    num_layers: int | None = Field(
        None, gt=0, description="adapt (or, for full, unfreeze) only the top N transformer blocks; None = all")
    modules_to_save: list[str] | None = Field(None, description="extra modules trained fully and saved with the "
                                              "adapter (e.g. [embed_tokens] after adding tokens)")


class TrainSection(StrictModel):
    """The transformers Trainer's loop: optimizer, schedule, batching, validation, checkpoints, device."""

    lr: float = Field(2e-4, gt=0, description="peak learning rate (LoRA: 1e-4..1e-3; full: 1e-5..5e-5)")
    schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after warmup")
    warmup: float = Field(0.03, ge=0, description="warmup: a fraction of all steps if < 1, else a step count")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping; 0 = off")
    epochs: float = Field(1.0, gt=0, description="passes over the train set (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1 = use epochs")
    batch_size: int = Field(8, gt=0, description="examples per micro-batch (per device)")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    batching: Literal["auto", "length_grouped", "packed", "padding_free", "random"] = Field(
        "auto", description="auto = padding_free on CUDA with flash-attn, else length_grouped (measured fastest on "
        "CPU); packed = per-row packing with block-diagonal attention; random = plain padded batches")
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward: about half the "
                                         "peak memory for ~20% more time (measured, 31M model on CPU)")
    eval_steps: int = Field(50, gt=0, description="validate every N optimizer steps")
    save_steps: int = Field(100, gt=0, description="write a resumable checkpoint every N steps")
    save_total_limit: int = Field(2, gt=0, description="checkpoints kept on disk (oldest deleted)")
    logging_steps: int = Field(10, gt=0)
    early_stopping_patience: int = Field(0, ge=0, description="stop after N evaluations without val-loss "
                                         "improvement (and keep the best); 0 = off")
    early_stopping_min_delta: float = Field(0.0, ge=0, description="smallest val-loss drop that counts")
    seed: int = 42
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, mps")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast compute dtype; auto = bf16 on CUDA/bf16 CPUs, else fp32")


class TrackingSection(StrictModel):
    """Where metrics go besides metrics.jsonl: TensorBoard (tb/) and, when a project is named, W&B."""

    tensorboard: bool = True
    wandb_project: str | None = None


class DataSourceSection(StrictModel):
    """Where a method's records come from: a JSONL file or a built-in generated set, and the validation split.
    Methods subclass it to name their default set and add their own knobs (loss_on, max_length, ...)."""

    train: str = Field(..., description="JSONL path, a builtin: set, or a Hub dataset hf:NAME[:CONFIG][@SPLIT]")
    eval: str | None = Field(None, description="JSONL path (or builtin: spec, generated with seed + 1) for "
                             "validation; None = hold out eval_fraction of train")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of train held out when eval is None; "
                                 "0 = no validation")
    n: int | None = Field(None, gt=0, description="examples to use (builtin: how many to generate, default 1000; "
                          "file: the first n)")
    seed: int = Field(0, description="seed of the built-in generator and of the train/eval split")
    system_prompt: str | None = Field(None, description="system message prepended to every chat without one")
    chat_template: str | None = Field(None, description="path to a .jinja chat template replacing the tokenizer's")
    columns: dict[str, str] = Field(default_factory=dict, description="rename file / Hub dataset columns to our "
                                    "keys, e.g. {question: prompt, answer: ground_truth_answer}")


class TunedRunConfig(StrictModel):
    """What every causal-LM tuning run (sft, dpo, grpo) has; subclasses add `data` and their own sections."""

    name: str = Field("run", description="run name: outputs go to <runs_dir>/<name>/")
    runs_dir: str = "runs"
    base_model: str = Field(..., description="HF causal-LM directory (ours: runs/<pretrain>/hf), a krllm run "
                            "directory, or a hub id when online")
    tokenizer: str | None = Field(None, description="tokenizer directory; None = the base model's")
    merge: bool = Field(True, description="adapters: also write <run>/merged/ (base + adapter as one HF dir)")
    peft: PeftSection = PeftSection()
    train: TrainSection = TrainSection()
    tracking: TrackingSection = TrackingSection()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return check_run_name(v)  # subclasses redefine `name` (their default); this validator still applies

    @model_validator(mode="after")
    def _check_steps(self) -> "TunedRunConfig":
        if self.train.max_steps == 0 or self.train.max_steps < -1:
            raise ValueError("train.max_steps must be a positive step count or -1 (use train.epochs)")
        return self
