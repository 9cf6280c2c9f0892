"""Built-in stage kinds, one module per kind; `get_kind(name)` is the registry the runner asks.

Each module defines `KIND`, a StageKind whose adapter (1) sets the keys the pipeline manages — the
output directory, the paths of upstream outputs, the resume flag — and (2) calls the stage's Python
entry point with its own validated config object, returning a small summary (tokens, tokens/s,
parameter counts) for the report. The stages themselves stay unaware of the pipeline: each runs
alone with the command in its module docstring.

Only the module of a kind a pipeline names is imported (`BUILTIN_KINDS` maps names to modules), so
planning a pipeline of fakes never imports the trainers' config modules. This package imports
`krllm.pipeline.kinds`, never the reverse.
"""

from __future__ import annotations

import importlib

from krllm.errors import KrllmError
from krllm.pipeline.kinds import StageKind, import_attr

BUILTIN_KINDS: dict[str, str] = {  # kind name -> the module that defines its KIND
    "tokenizer": "krllm.pipeline.stages.tokenizer",
    "generate": "krllm.pipeline.stages.generate",
    "data": "krllm.pipeline.stages.data",
    "pretrain": "krllm.pipeline.stages.pretrain",
    "sft": "krllm.pipeline.stages.sft",
    "dpo": "krllm.pipeline.stages.dpo",
    "grpo": "krllm.pipeline.stages.grpo",
    "eval": "krllm.pipeline.stages.eval",
    "report": "krllm.pipeline.stages.report",
}


def get_kind(name: str) -> StageKind:
    """A built-in kind by name, or a custom `module:ATTR` StageKind."""
    if ":" in name:
        kind = import_attr(name)
        if not isinstance(kind, StageKind):
            raise KrllmError(f"{name!r} is a {type(kind).__name__}, not a krllm.pipeline.StageKind")
        return kind
    if name not in BUILTIN_KINDS:
        raise KrllmError(f"unknown stage kind {name!r}; built-in kinds: {', '.join(BUILTIN_KINDS)} "
                         "(or `package.module:ATTR` for a custom StageKind)")
    return importlib.import_module(BUILTIN_KINDS[name]).KIND
