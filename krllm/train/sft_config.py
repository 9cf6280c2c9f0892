"""The `krllm sft` config: what to tune (base model, method), on what (data), and how (schedule).

The top level and sections every tuning method shares (base model, peft, train, tracking, where the
records come from) live in `krllm.train.hf.config`; the SFT-specific ones (loss_on, samples) are here.

Every field has a default that works on a laptop CPU; `configs/sft/*.yaml` only state what differs.
Loaded with `krllm.config.load_config(path, SFTRunConfig, ["peft.method=dora", ...])`; the resolved
config is written to `runs/<name>/config.yaml`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel
from krllm.train.hf.config import DataSourceSection, TunedRunConfig


class DataSection(DataSourceSection):
    """Where the examples come from and which tokens are learned."""

    train: str = Field("builtin:npc", description="JSONL path or builtin:npc / builtin:math[:ko|en|mixed] / "
                       "builtin:sentiment")
    loss_on: Literal["assistant", "all"] = Field(
        "assistant", description="assistant = learn only assistant turns (+ their end-of-turn token); "
        "all = every token")
    max_length: int = Field(1024, gt=8, description="tokens per example; longer ones are cut (keep start)")


class SamplesSection(StrictModel):
    """Greedy answers to a few held-out prompts, before and after tuning (samples.md)."""

    n: int = Field(3, ge=0, description="prompts to answer; 0 = skip")
    max_new_tokens: int = Field(64, gt=0)


class MlxSection(StrictModel):
    """mlx-lm settings with no PyTorch counterpart (used by `backend: mlx` only; see docs/mlx.md)."""

    optimizer: Literal["adamw", "adam", "sgd", "adafactor", "muon"] = Field(
        "adamw", description="mlx.optimizers class; adamw uses train.weight_decay (as the PyTorch path's AdamW)")
    bias_correction: bool = Field(True, description="Adam/AdamW bias correction, as torch's AdamW on the PyTorch "
                                  "path (the same lr then behaves alike); false = mlx's default, as mlx_lm.lora")
    val_batches: int = Field(25, description="validation batches per evaluation; -1 = the whole validation set")
    resume_adapter_file: str | None = Field(None, description="start from these adapter weights (an "
                                            "adapters.safetensors of mlx_lm.lora or of an earlier run)")

    @field_validator("val_batches")
    @classmethod
    def _val_batches(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("mlx.val_batches must be a positive count or -1 (all)")
        return v


class SFTRunConfig(TunedRunConfig):
    name: str = Field("sft", description="run name: outputs go to <runs_dir>/<name>/")
    backend: Literal["auto", "torch", "mlx"] = Field(
        "auto", description="torch = transformers/TRL; mlx = mlx-lm (Apple Silicon GPU, or CPU); auto = mlx on "
        "Apple Silicon when mlx-lm is installed, else torch")
    data: DataSection = DataSection()
    samples: SamplesSection = SamplesSection()
    mlx: MlxSection = MlxSection()

    @model_validator(mode="after")
    def _check(self) -> "SFTRunConfig":
        if self.train.early_stopping_patience and self.data.eval is None and self.data.eval_fraction == 0:
            raise ValueError("train.early_stopping_patience needs a validation set: set data.eval or "
                             "data.eval_fraction > 0")
        return self
