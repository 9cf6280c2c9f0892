"""The `pretrain` stage: pretrain from scratch on the token shards of a `data` stage.

Stand-alone: `krllm pretrain -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from krllm.errors import KrllmError
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config, count_params, last_train_step, median_speed, section
from krllm.train.pretrain_config import PretrainConfig

CPU_TOKENS_PER_S = 5000.0  # the tiny preset on 2 CPU cores: the first-run ETA guess


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = copy_config(cfg)
    run = section(cfg, "run")
    run["out_dir"], run["name"] = ctx.run_dir, ctx.stage
    if ctx.has_input("data"):
        section(cfg, "data")["shards"] = str(ctx.input("data", "shards"))
    return cfg


def _tokens_per_step(cfg: PretrainConfig) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.data.seq_len


def _total_steps(cfg: PretrainConfig) -> int:
    """Optimizer steps the run makes (the schema requires exactly one of max_steps and max_tokens)."""
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return -(-cfg.train.max_tokens // _tokens_per_step(cfg))


def _progress(ctx: StageContext, cfg: PretrainConfig):
    step = last_train_step(ctx.stage_dir)
    return (step, _total_steps(cfg)) if step else None


def _estimate(cfg: PretrainConfig) -> float:
    return 15.0 + _total_steps(cfg) * _tokens_per_step(cfg) / CPU_TOKENS_PER_S


def _run(ctx: StageContext) -> dict:
    from krllm.tracking import read_metrics
    from krllm.train.pretrain import pretrain

    cfg = KIND.typed(ctx.config, f"stage {ctx.stage}")
    result = pretrain(cfg, resume=ctx.resume)
    if result.get("status") != "done":
        raise KrllmError(f"pretraining stopped at step {result.get('step')} ({result.get('status')}); "
                         "re-run the pipeline to resume from the last checkpoint")
    train = [r for r in read_metrics(Path(ctx.stage_dir) / "metrics.jsonl") if r.get("split") == "train"]
    last = next((r for r in reversed(train) if "tokens" in r), {})
    return {"tokens": int(last.get("tokens", 0)) or None, "steps": result.get("step"),
            "tokens_per_s": median_speed(train),
            "params": count_params(Path(ctx.stage_dir) / "hf"), "val_loss": result.get("val_loss")}


KIND = StageKind(
    name="pretrain", run=_run, needs={"data": ("data",)}, optional=("data",),
    outputs={"model": "hf"}, prepare=_prepare, schema=PretrainConfig,
    resumable=True, progress=_progress, estimate_s=_estimate,
    command="krllm pretrain -c {config}",
    description="pretrain from scratch on token shards (krllm.train.pretrain.pretrain)")
