"""Stage kinds: what a stage of a given kind needs, where its outputs are, and how it runs.

A `StageKind` is a small record, not a class to inherit from. Its `run` is a `"module:function"`
string imported only inside the process that runs the stage, so planning a pipeline never imports
torch or TRL. Built-in kinds live in `krllm.pipeline.stages` (one module per kind, looked up by
`krllm.pipeline.stages.get_kind`); a pipeline may also name a custom kind as `package.module:ATTR` (an
importable StageKind), which is how the tests plug in fakes. This module knows no kind by name.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from krllm.config import validate
from krllm.errors import KrllmError


@dataclass
class StageContext:
    """Everything a stage run needs, JSON-serializable so it crosses into a child process."""

    pipeline: str  # pipeline name
    stage: str  # this stage's name in the pipeline
    kind: str  # kind name, or `module:ATTR` for a custom kind (the child resolves it again)
    run_dir: str  # runs/<pipeline>
    stage_dir: str  # runs/<pipeline>/<stage>: the stage owns it
    config: dict  # the stage config (file + overrides + paths the pipeline wires in)
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> {output name: path}
    upstream: dict[str, str] = field(default_factory=dict)  # role -> upstream stage name
    upstream_config: dict[str, dict] = field(default_factory=dict)  # role -> that stage's config dict (if valid)
    config_file: str | None = None  # where the runner saved `config` (the stand-alone command reads it)
    resume: bool = False  # continue an interrupted attempt (resumable kinds only)

    def input(self, role: str, output: str) -> Path:
        try:
            return Path(self.inputs[role][output])
        except KeyError:
            raise KrllmError(f"stage {self.stage}: input {role}.{output} is not wired "
                             f"(have {sorted(self.inputs)}); check the pipeline's stages.{self.stage}.inputs") from None

    def has_input(self, role: str) -> bool:
        return role in self.inputs

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> "StageContext":
        return cls(**json.loads(text))


@dataclass(frozen=True)
class StageKind:
    """How the runner treats one kind of stage.

    needs:     role -> kinds of earlier stages that can fill it (first listed = preferred)
    optional:  roles that may stay unwired (e.g. eval without a fine-tuned model)
    explicit:  optional roles wired only when the pipeline names their stage in `inputs:` (never by
               default), for a second role of a kind another role already takes (eval's math_sft next to
               tuned: both sft)
    outputs:   output name -> path inside the stage dir (hashed for downstream lineage); or a function
               of the validated stage config giving that mapping (e.g. sft writes merged/ or hf/ by method)
    prepare:   (config dict, ctx) -> config dict with the pipeline-managed keys set (output dir,
               input paths, resume flag); pure, runs in the parent to fingerprint and validate early
    schema:    the stage's config class (a StrictModel) or "module:Class"; every stage config is
               validated into it before anything runs, and the functions here read that object
    progress:  (ctx, validated config) -> (done, total) read from the stage's files while it runs, or None
    estimate_s: (validated config) -> seconds, the first-run guess used for the overall ETA
    command:   the stand-alone shell command that repeats this stage, with `{config}` standing for
               the saved stage config (runs/<p>/_pipeline/configs/<stage>.yaml); for the report

    "Validated config" is the schema object, or the config dict itself for a kind without a schema.
    """

    name: str
    run: str | Callable[[StageContext], dict | None]
    needs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    explicit: tuple[str, ...] = ()
    outputs: dict[str, str] | Callable[[Any], dict[str, str]] = field(default_factory=dict)
    prepare: Callable[[dict, StageContext], dict] | None = None
    schema: type | str | None = None
    resumable: bool = False
    always_run: bool = False
    progress: Callable[[StageContext, Any], tuple[float, float] | None] | None = None
    estimate_s: Callable[[Any], float] | float = 30.0
    command: str | None = None
    description: str = ""

    def typed(self, config: dict, where: str = "stage config") -> Any:
        """The stage config validated into `schema` (ConfigError listing every problem); the dict without one."""
        if self.schema is None:
            return config
        schema = import_attr(self.schema) if isinstance(self.schema, str) else self.schema
        return validate(config, schema, where)

    def output_map(self, cfg: Any) -> dict[str, str]:
        """Output name -> path in the stage dir, given the validated config."""
        return self.outputs(cfg) if callable(self.outputs) else dict(self.outputs)

    def run_function(self) -> Callable[[StageContext], dict | None]:
        return self.run if callable(self.run) else import_attr(self.run)

    def estimate(self, cfg: Any) -> float:
        try:
            return float(self.estimate_s(cfg) if callable(self.estimate_s) else self.estimate_s)
        except (TypeError, ValueError, KeyError):
            return 30.0


def import_attr(spec: str) -> Any:
    """`package.module:attr` -> the attribute (KrllmError naming the spec when it is missing)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise KrllmError(f"{spec!r}: expected `package.module:attribute`")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise KrllmError(f"{spec!r}: cannot import {module} ({e})") from None
    try:
        return getattr(mod, attr)
    except AttributeError:
        raise KrllmError(f"{spec!r}: {module} has no attribute {attr!r}") from None
