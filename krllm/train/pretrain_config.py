"""The `krllm pretrain` config: one YAML file, every section strict, every default written out.

    cfg = load_config("configs/pretrain/tiny_ko.yaml", PretrainConfig, ["train.lr=1e-3"])

Sections: data, model, train, eval, sample, checkpoint, log, run. Lengths are in tokens, intervals
in optimizer steps; `0` turns an interval off (the final step still evaluates and checkpoints).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import RunName, StrictModel

DEFAULT_PROMPTS = ["대한민국은", "국회는 법률을", "모든 국민은"]


class DataSection(StrictModel):
    shards: Path = Field(description="directory written by `krllm data prepare` (has manifest.json)")
    seq_len: int = Field(256, ge=8, description="tokens per training sequence (windows of seq_len+1)")
    train_split: str = "train"
    val_split: str = "val"


class ModelSection(StrictModel):
    type: str = Field("llama", description="architecture family to build (krllm.model.registry; llama = the "
                      "fast path)")
    preset: str = Field("tiny", description="a preset name (krllm model info) or a model YAML path")
    overrides: dict[str, Any] = Field(default_factory=dict, description="ModelConfig fields to change")

    @field_validator("type")
    @classmethod
    def _known_family(cls, value: str) -> str:
        from krllm.errors import KrllmError
        from krllm.model.registry import pretrainable_family

        try:
            pretrainable_family(value)
        except KrllmError as e:
            raise ValueError(str(e).removeprefix("model.type: ")) from None
        return value


class TrainSection(StrictModel):
    batch_size: int = Field(8, ge=1, description="sequences per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps (or give max_tokens)")
    max_tokens: int | None = Field(None, ge=1, description="training tokens; steps = ceil(tokens / tokens per step)")
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-4, ge=0, description="lr at the end of the decay")
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0, description="applied to matrices only (not norms/biases)")
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="max global grad norm; 0 = no clipping")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto = bf16 on CUDA and on CPUs with AVX-512 BF16, else fp32")
    compile: bool = Field(False, description="torch.compile the model (slow first step, faster after)")
    grad_checkpointing: bool = Field(False, description="recompute layer activations in backward (less memory)")
    seed: int = 1234

    @model_validator(mode="after")
    def _check(self):
        if self.max_steps is None and self.max_tokens is None:
            raise ValueError("set train.max_steps or train.max_tokens")
        if self.max_steps is not None and self.max_tokens is not None:
            raise ValueError("set only one of train.max_steps and train.max_tokens")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) is above train.lr ({self.lr})")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"train.betas must be in [0, 1), got {self.betas}")
        return self


class EvalSection(StrictModel):
    eval_interval: int = Field(100, ge=0, description="steps between validation runs; 0 = only at the end")
    eval_batches: int = Field(8, ge=1, description="micro-batches in the fixed validation subset")


class SampleSection(StrictModel):
    sample_interval: int = Field(0, ge=0, description="steps between sample generations; 0 = only at the end")
    prompts: list[str] = Field(default_factory=lambda: list(DEFAULT_PROMPTS))
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_k: int = Field(50, ge=0, description="0 = no top-k filter")


class CheckpointSection(StrictModel):
    save_interval: int = Field(200, ge=0, description="steps between checkpoints; 0 = only at the end")
    keep_last: int = Field(3, ge=1, description="checkpoints kept on disk (older ones are deleted)")


class LogSection(StrictModel):
    log_interval: int = Field(10, ge=1, description="steps between console lines / metrics records")
    tensorboard: bool = True
    wandb_project: str | None = Field(None, description="log to W&B too (needs `pip install wandb`)")
    peak_tflops: float | None = Field(
        None, ge=0, description="peak matmul TFLOP/s for MFU; null = measure at start-up, 0 = no MFU")


class RunSection(StrictModel):
    name: RunName = Field("pretrain", description="run name: outputs go to <out_dir>/<name>/")
    out_dir: Path = Path("runs")
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps")
    distributed: Literal["ddp", "fsdp"] = Field("ddp", description="strategy under torchrun (FSDP2 = fully_shard)")
    threads: int | None = Field(None, ge=1, description="CPU threads per process; null = PyTorch's default "
                                "(all cores; OMP_NUM_THREADS). Fewer can be much faster on a busy machine")

    @property
    def dir(self) -> Path:
        return self.out_dir / self.name


class PretrainConfig(StrictModel):
    data: DataSection
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection
    eval: EvalSection = Field(default_factory=EvalSection)
    sample: SampleSection = Field(default_factory=SampleSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    run: RunSection = Field(default_factory=RunSection)
