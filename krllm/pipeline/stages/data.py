"""The `data` stage: clean, dedupe, split and tokenize text into token shards.

Stand-alone: `krllm data prepare -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from krllm.config import validate
from krllm.data.prepare.config import PrepareConfig
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = copy_config(cfg)
    cfg["out_dir"] = ctx.stage_dir
    if ctx.has_input("tokenizer"):
        cfg["tokenizer"] = str(ctx.input("tokenizer", "tokenizer"))
    if ctx.has_input("texts"):  # generated documents join the configured sources (the schema's default ones if unset)
        sources = validate(cfg, PrepareConfig, f"stage {ctx.stage}").sources
        cfg["sources"] = ([s.model_dump(mode="json", exclude_defaults=True) for s in sources]
                          + [{"path": str(ctx.input("texts", "texts")), "format": "jsonl"}])
    return cfg


def _run(ctx: StageContext) -> dict:
    import time

    from rich.console import Console

    from krllm.data.prepare.job import prepare

    cfg = KIND.typed(ctx.config, f"stage {ctx.stage}")
    t0 = time.time()
    m = prepare(cfg, console=Console())
    secs = time.time() - t0
    tokens = sum(int(s["tokens"]) for s in m["splits"].values())
    split = ", ".join(f"{k} {int(v['tokens']):,}" for k, v in m["splits"].items())
    return {"tokens": tokens, "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None,
            "note": f"{m['documents']['kept']:,} of {m['documents']['read']:,} documents kept; tokens: {split}"}


KIND = StageKind(
    name="data", run=_run, needs={"tokenizer": ("tokenizer",), "texts": ("generate",)}, optional=("texts",),
    outputs={"shards": "."}, prepare=_prepare, schema=PrepareConfig, estimate_s=60.0,
    command="krllm data prepare -c {config}",
    description="clean, dedupe, split and tokenize text into shards (krllm.data.prepare.job.prepare)")
