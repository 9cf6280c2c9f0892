"""The `krllm grpo` config: the policy to improve (base model, method), the prompts with their ground
truth (data), how completions are sampled and scored (grpo, rewards), and the schedule (train).

Shared sections (peft, train, tracking, where records come from) live in `krllm.train.hf.config`.
Defaults follow TRL 1.16's GRPOTrainer (beta 0 = no reference model, loss_type "dapo", 8 generations
a prompt) except where a CPU run needs less: short completions, and krllm's engine for rollouts.

Batch arithmetic (TRL's): one optimizer step learns from `train.batch_size x train.grad_accum`
completions (per process) = that many / `grpo.num_generations` prompts, all generated in one pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel
from krllm.train.hf.config import DataSourceSection, TrainSection, TunedRunConfig
from krllm.train.sft_config import SamplesSection


class GRPOData(DataSourceSection):
    """Prompts with a verifiable answer: {"prompt", "ground_truth_answer", ...extra fields for rewards}."""

    train: str = Field("builtin:math:ko", description="JSONL path {prompt, ground_truth_answer} or "
                       "builtin:math[:ko|en|mixed]")
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="share of prompts held out for evaluation "
                                 "during training (each costs num_generations completions); 0 = none")


class GRPOSection(StrictModel):
    """Sampling the group of completions and the policy loss (TRL's GRPOConfig names)."""

    num_generations: int = Field(8, ge=2, description="completions per prompt; advantages compare them "
                                 "within the group (all equal rewards = no signal)")
    max_completion_length: int = Field(128, gt=0, description="tokens per completion; longer ones are cut")
    temperature: float = Field(1.0, gt=0, description="sampling temperature (0.7-1.0: diverse enough groups)")
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    beta: float = Field(0.0, ge=0, description="KL penalty to the reference (the starting model); 0 = none "
                        "(TRL's default, no reference forward). 0.01-0.05 keeps the policy close; logs `kl`")
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = Field(
        "dapo", description="token-loss aggregation: dapo (default: over all completion tokens of the step), "
        "grpo (per sequence: length bias), dr_grpo, bnpo, cispo, sapo")
    epsilon: float = Field(0.2, gt=0, description="PPO-style clip range of the probability ratio")
    epsilon_high: float | None = Field(None, gt=0, description="upper clip (DAPO's clip-higher, e.g. 0.28); "
                                       "None = epsilon")
    num_iterations: int = Field(1, ge=1, description="optimizer passes over each generated batch (mu)")
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group", description="divide advantages by the reward std of the group / batch, or not (Dr. GRPO)")
    mask_truncated_completions: bool = Field(False, description="exclude completions cut at max length from "
                                             "the loss")
    rollout: Literal["krllm", "transformers", "vllm"] = Field(
        "krllm", description="who generates: krllm (our engine on the policy's live weights, batched, C step "
        "on CPU), transformers (TRL's default generate), vllm (TRL's colocated vLLM: CUDA + vllm installed)")
    log_completions: bool = Field(False, description="print a table of sampled completions at each log step")


class GRPOTrain(TrainSection):
    """The shared `train` section with GRPO's defaults: a low constant learning rate, logged every step."""

    lr: float = Field(1e-5, gt=0, description="peak learning rate (LoRA: 1e-5..1e-4; full: 1e-6..1e-5)")
    schedule: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "constant"
    warmup: float = Field(0.0, ge=0, description="warmup: a fraction of all steps if < 1, else a step count")
    max_steps: int = Field(100, description="optimizer steps; -1 = use epochs over the prompts")
    batch_size: int = Field(16, gt=0, description="completions per micro-batch (per device): "
                            "batch_size x grad_accum / num_generations prompts a step")
    logging_steps: int = Field(1, gt=0)
    save_steps: int = Field(25, gt=0, description="write a resumable checkpoint every N steps")
    eval_steps: int = Field(25, gt=0, description="evaluate (sample + score the eval prompts) every N steps")


class RewardSpec(StrictModel):
    """One reward function: a built-in name or `package.module:function` with TRL's reward signature."""

    fn: str = Field(..., description="math_correct | format | length_penalty | package.module:function")
    weight: float = Field(1.0, description="weight in the summed reward")
    kwargs: dict = Field(default_factory=dict, description="keyword arguments bound to the function "
                         "(e.g. length_penalty's limits)")


class GRPORunConfig(TunedRunConfig):
    name: str = Field("grpo", description="run name: outputs go to <runs_dir>/<name>/")
    data: GRPOData = GRPOData()
    grpo: GRPOSection = GRPOSection()
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(fn="math_correct"), RewardSpec(fn="format", weight=0.1)],
        description="reward functions, summed with their weights")
    train: GRPOTrain = GRPOTrain()
    samples: SamplesSection = SamplesSection(max_new_tokens=128)

    @field_validator("rewards", mode="before")
    @classmethod
    def _names_as_specs(cls, v):
        """`rewards: [math_correct, format]` is short for [{fn: math_correct}, {fn: format}]."""
        if isinstance(v, list):
            return [{"fn": x} if isinstance(x, str) else x for x in v]
        return v

    @model_validator(mode="after")
    def _check(self) -> "GRPORunConfig":
        if not self.rewards:
            raise ValueError("rewards: name at least one reward function (e.g. [math_correct])")
        per_step = self.train.batch_size * self.train.grad_accum
        g = self.grpo.num_generations
        if per_step % g:
            raise ValueError(f"train.batch_size x train.grad_accum = {per_step} completions a step must be a "
                             f"multiple of grpo.num_generations={g} (whole groups): e.g. batch_size {g * 2} = 2 "
                             "prompts a step")
        if self.train.early_stopping_patience:
            raise ValueError("train.early_stopping_patience: GRPO has no validation loss to stop on; watch the "
                             "reward instead and set train.max_steps")
        return self
