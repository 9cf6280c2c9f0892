"""The `krllm sft` config: what to tune (base model, method), on what (data), and how (schedule).

The sections every training method shares (peft, train, tracking) live in `krllm.train.hf.config`;
the SFT-specific ones (data, samples) are here.

Every field has a default that works on a laptop CPU; `configs/sft/*.yaml` only state what differs.
Loaded with `krllm.config.load_config(path, SFTRunConfig, ["peft.method=dora", ...])`; the resolved
config is written to `runs/<name>/config.yaml`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel
from krllm.train.hf.config import PeftSection, TrackingSection, TrainSection


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


class SamplesSection(StrictModel):
    """Greedy answers to a few held-out prompts, before and after tuning (samples.md)."""

    n: int = Field(3, ge=0, description="prompts to answer; 0 = skip")
    max_new_tokens: int = Field(64, gt=0)


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
