"""The pipeline config: an ordered mapping of stages, each with its own stage config and overrides.

    name: demo_ko
    stages:
      tokenizer: {config: configs/tokenizer/demo_ko.yaml}
      pretrain:  {config: configs/pretrain/demo_ko.yaml, set: {train.max_steps: 300}}

Overrides from the command line reach a stage by its name: `--set pretrain.train.max_steps=50`
is shorthand for `--set stages.pretrain.set.train.max_steps=50`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field, field_validator

from krllm.config import ConfigError, StrictModel, apply_overrides, parse_override, read_yaml, validate

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")


class StageSpec(StrictModel):
    """One stage: which kind of work, its own config file, overrides, and where its inputs come from."""

    kind: str | None = Field(None, description="stage kind (tokenizer, data, pretrain, ...); default = the stage's name, "
                             "or `package.module:ATTR` for a custom StageKind")
    config: str | None = Field(None, description="the stage's own YAML config (paths relative to the working directory)")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the stage config, nested or dotted keys")
    inputs: dict[str, str] = Field(default_factory=dict, description="role -> name of an earlier stage; default = "
                                   "the latest earlier stage of the kind the role needs")


class PipelineConfig(StrictModel):
    name: str = Field(description="run directory name: outputs go to <runs_dir>/<name>/")
    description: str = ""
    runs_dir: str = Field("runs", description="parent directory of the pipeline's run directory")
    isolation: Literal["process", "inline"] = Field(
        "process", description="process = each stage in a child process (exact peak RSS, a crash cannot take "
        "the runner down); inline = in this process (for debugging; peak RSS is the process high-water mark)")
    stages: dict[str, StageSpec]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("use lowercase letters, digits, '-' and '_' (it becomes a directory name)")
        return v

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: dict[str, StageSpec]) -> dict[str, StageSpec]:
        if not v:
            raise ValueError("list at least one stage")
        bad = [n for n in v if not NAME_RE.match(n) or n in RESERVED]
        if bad:
            raise ValueError(f"bad stage name(s) {bad}: lowercase letters, digits, '-', '_', and not one of "
                             f"{sorted(RESERVED)}")
        return v

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def kind_of(self, stage: str) -> str:
        return self.stages[stage].kind or stage


# Top-level keys (for the `--set STAGE.key=v` shorthand) and names the runner uses inside the run dir.
RESERVED = set(PipelineConfig.model_fields) | {"plots", "logs"}


def expand_shorthand(overrides: Iterable[str], stage_names: Iterable[str]) -> list[str]:
    """`pretrain.train.lr=1e-3` -> `stages.pretrain.set.train.lr=1e-3` when `pretrain` is a stage."""
    names = set(stage_names)
    out = []
    for item in overrides or []:
        keys, _ = parse_override(item)
        if keys[0] in names and len(keys) > 1:
            item = "stages." + keys[0] + ".set." + item.split(".", 1)[1]
        out.append(item)
    return out


def load_pipeline(path: str | Path, overrides: Iterable[str] = ()) -> PipelineConfig:
    """YAML + overrides (with the stage-name shorthand) -> validated PipelineConfig."""
    data = read_yaml(path)
    stages = data.get("stages") if isinstance(data.get("stages"), dict) else {}
    overrides = expand_shorthand(overrides, stages)
    data = apply_overrides(data, overrides)
    source = str(path) + (" with --set " + " ".join(overrides) if overrides else "")
    return validate(data, PipelineConfig, source)


def flatten_set(node: dict, prefix: str = "") -> list[tuple[list[str], Any]]:
    """`{"train": {"lr": 1}, "run.name": "x"}` -> [(["train","lr"], 1), (["run","name"], "x")].

    Dicts are walked (so nested and dotted spellings mean the same); lists and scalars are leaves.
    """
    out: list[tuple[list[str], Any]] = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.extend(flatten_set(value, path))
        else:
            out.append(([k for k in path.split(".") if k], value))
    return out


def set_path(data: dict, keys: list[str], value: Any) -> None:
    """Set data[k1][k2]... = value, creating sections; a scalar in the way is an error."""
    node = data
    for i, k in enumerate(keys[:-1]):
        if k not in node or node[k] is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError("<stage overrides>", [f"{'.'.join(keys[:i + 1])}: is a {type(node[k]).__name__}, "
                                                    f"cannot set {'.'.join(keys)} inside it"])
        node = node[k]
    node[keys[-1]] = value


def stage_config_dict(spec: StageSpec) -> dict:
    """The stage's config file (if any) with the pipeline's `set` overrides applied."""
    data = read_yaml(spec.config) if spec.config else {}
    for keys, value in flatten_set(spec.set):
        set_path(data, keys, value)
    return data
