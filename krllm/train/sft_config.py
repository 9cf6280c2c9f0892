"""The `krllm sft` config: what to tune (base model, method), on what (data), and how (schedule).

Every field has a default that works on a laptop CPU; `configs/sft/*.yaml` only state what differs.
Loaded with `krllm.config.load_config(path, SFTRunConfig, ["peft.method=dora", ...])`; the resolved
config is written to `runs/<name>/config.yaml`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel

METHODS = ("lora", "dora", "qlora", "full")
BATCHING = ("auto", "length_grouped", "packed", "padding_free", "random")


class DataSection(StrictModel):
    """Where the examples come from and which tokens are learned."""

    train: str = Field("builtin:npc", description="JSONL path or builtin:npc / builtin:math[:ko|en|mixed] / "
                       "builtin:sentiment")
    eval: str | None = Field(None, description="JSONL path (or builtin: spec, generated with seed + 1) for "
                             "validation; None = hold out eval_fraction of train")
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of train held out when eval is None; "
                                 "0 = no validation")
    n: int | None = Field(None, gt=0, description="examples to use (builtin: how many to generate, default 1000; "
                          "file: the first n)")
    seed: int = Field(0, description="seed of the built-in generator and of the train/eval split")
    system_prompt: str | None = Field(None, description="system message prepended to every chat without one")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="assistant = learn only assistant turns (+ their end-of-turn token); "
        "all = every token")
    max_length: int = Field(1024, gt=8, description="tokens per example; longer ones are cut (keep start)")
    chat_template: str | None = Field(None, description="path to a .jinja chat template replacing the tokenizer's")


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


class SamplesSection(StrictModel):
    """Greedy answers to a few held-out prompts, before and after tuning (samples.md)."""

    n: int = Field(3, ge=0, description="prompts to answer; 0 = skip")
    max_new_tokens: int = Field(64, gt=0)


class TrackingSection(StrictModel):
    tensorboard: bool = True
    wandb_project: str | None = None


class SFTRunConfig(StrictModel):
    name: str = Field("sft", description="run name: outputs go to <runs_dir>/<name>/")
    runs_dir: str = "runs"
    base_model: str = Field(..., description="HF causal-LM directory (ours: runs/<pretrain>/hf) or hub id "
                            "when online")
    tokenizer: str | None = Field(None, description="tokenizer directory; None = the base model's")
    merge: bool = Field(True, description="adapters: also write <run>/merged/ (base + adapter as one HF dir)")
    data: DataSection = DataSection()
    peft: PeftSection = PeftSection()
    train: TrainSection = TrainSection()
    samples: SamplesSection = SamplesSection()
    tracking: TrackingSection = TrackingSection()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError("must be a plain directory name (no '/', not starting with '.')")
        return v

    @model_validator(mode="after")
    def _check(self) -> "SFTRunConfig":
        t = self.train
        if t.early_stopping_patience and self.data.eval is None and self.data.eval_fraction == 0:
            raise ValueError("train.early_stopping_patience needs a validation set: set data.eval or "
                             "data.eval_fraction > 0")
        if t.max_steps == 0 or t.max_steps < -1:
            raise ValueError("train.max_steps must be a positive step count or -1 (use train.epochs)")
        return self
