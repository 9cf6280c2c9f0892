"""The `krllm dpo` config: which model to align (base model, method), on which preference pairs (data),
with which objective (dpo), and how (schedule).

The top level and the sections every tuning method shares live in `krllm.train.hf.config`; the DPO ones
(data with its default set, the `dpo` objective, samples) and DPO's own defaults are here:
- learning rate an order below SFT: 5e-5 for lora / dora / qlora, 5e-6 for full (used when `train.lr` is
  not given); DPO moves a model that already answers well, and a high rate collapses both log-probabilities.
- `train.batching`: auto | length_grouped | random (TRL's DPO collator pads; no packing or padding-free).
- The reference model is not configured: with an adapter it is the base with the adapter switched off
  (TRL, no second copy in memory); with `full` it is a frozen copy of the starting model.

Loaded with `krllm.config.load_config(path, DPORunConfig, ["dpo.beta=0.2", ...])`. Importing this module
imports neither torch nor TRL: the loss-type names are read from TRL's source file (see `trl_loss_types`).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel
from krllm.train.hf.config import DataSourceSection, TrainSection, TunedRunConfig

ADAPTER_LR = 5e-5  # default train.lr for lora / dora / qlora
FULL_LR = 5e-6  # default train.lr for full fine-tuning


@functools.lru_cache(maxsize=1)
def trl_loss_types() -> tuple[str, ...] | None:
    """The `loss_type` names the installed TRL's DPOTrainer implements, in its order; None without TRL.

    Read from the `loss_type == "..."` branches of trl/trainer/dpo_trainer.py with `ast`, so the list
    follows the installed version and validating a config never imports torch or TRL.
    """
    spec = importlib.util.find_spec("trl")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "trainer" / "dpo_trainer.py"
    if not source.is_file():
        return None
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "loss_type":
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, ast.Eq) and isinstance(right, ast.Constant) and isinstance(right.value, str) \
                        and right.value not in names:
                    names.append(right.value)
    return tuple(names) or None


class DataSection(DataSourceSection):
    """Where the preference pairs come from and how long a pair may be."""

    train: str = Field("builtin:math:ko", description="JSONL of {prompt, chosen, rejected} (strings or message "
                       "lists) or builtin:math[:ko|en|mixed] (the rejected solution has a wrong or no final answer)")
    max_length: int = Field(1024, gt=8, description="tokens of prompt + completion; longer ones are cut at the end "
                            "(a pair whose prompt alone fills it is dropped)")


class DPOTrainSection(TrainSection):
    """The shared `train` section with DPO's defaults (see the module docstring for the learning rate)."""

    lr: float = Field(ADAPTER_LR, gt=0, description=f"peak learning rate; default {ADAPTER_LR:g} for adapters, "
                      f"{FULL_LR:g} for full (an order below SFT)")
    batching: Literal["auto", "length_grouped", "random"] = Field(
        "auto", description="auto = length_grouped (pairs of similar length share a batch); random = plain batches. "
        "TRL's DPO has no packing or padding-free batching")


class DPOSection(StrictModel):
    """The preference objective (TRL's DPOConfig keys of the same names)."""

    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference: higher = closer "
                        "(typical 0.05-0.5; for ipo the regularization tau)")
    loss_type: list[str] = Field(["sigmoid"], min_length=1, description="sigmoid (DPO), ipo, hinge, robust, "
                                 "sigmoid_norm, ... (every name TRL implements); several are summed with "
                                 "loss_weights (e.g. [sigmoid, sft])")
    loss_weights: list[float] | None = Field(None, description="one weight per loss_type; None = 1.0 each")
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description="robust: the assumed share of flipped labels "
                                   "(e.g. 0.1); exo_pair: epsilon (e.g. 1e-3, must be > 0)")

    @field_validator("loss_type", mode="before")
    @classmethod
    def _as_list(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("loss_type")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        known = trl_loss_types()
        bad = [x for x in v if known is not None and x not in known]
        if bad:
            raise ValueError(f"unknown loss type(s) {', '.join(map(repr, bad))}; the installed TRL implements: "
                             + ", ".join(known))
        return v

    @model_validator(mode="after")
    def _check(self) -> "DPOSection":
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} values for {len(self.loss_type)} loss "
                             "types; give one weight per loss_type")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (the EXO paper uses 1e-3)")
        return self


class SamplesSection(StrictModel):
    """Greedy answers to a few held-out prompts before and after alignment (samples.md), with the chosen answer
    as the reference."""

    n: int = Field(3, ge=0, description="prompts to answer; 0 = skip")
    max_new_tokens: int = Field(128, gt=0)


class DPORunConfig(TunedRunConfig):
    name: str = Field("dpo", description="run name: outputs go to <runs_dir>/<name>/")
    data: DataSection = DataSection()
    dpo: DPOSection = DPOSection()
    train: DPOTrainSection = DPOTrainSection()
    samples: SamplesSection = SamplesSection()

    @model_validator(mode="after")
    def _check(self) -> "DPORunConfig":
        if self.peft.method == "full" and "lr" not in self.train.model_fields_set:
            self.train.lr = FULL_LR  # assigning marks it set: validating the result again keeps it
        if self.train.early_stopping_patience and self.data.eval is None and self.data.eval_fraction == 0:
            raise ValueError("train.early_stopping_patience needs a validation set: set data.eval or "
                             "data.eval_fraction > 0")
        return self
