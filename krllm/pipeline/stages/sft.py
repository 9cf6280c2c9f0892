"""The `sft` stage: supervised fine-tuning (LoRA / DoRA / QLoRA / full) of a pretrained or tuned model.

Stand-alone: `krllm sft -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import (median_speed, tuned_outputs, tuned_prepare, tuned_progress,
                                         tuned_total_steps)
from krllm.train.sft_config import SFTRunConfig

CPU_S_PER_STEP = 1.0  # per 8 examples, tiny model on 2 CPU cores: the first-run ETA guess


def _estimate(cfg: SFTRunConfig) -> float:
    return 30.0 + CPU_S_PER_STEP * tuned_total_steps(cfg) * cfg.train.batch_size / 8


def _run(ctx: StageContext) -> dict:
    from krllm.tracking import read_metrics
    from krllm.train.sft import run_sft

    cfg: SFTRunConfig = KIND.typed(ctx.config, f"stage {ctx.stage}")
    stage_dir = Path(ctx.stage_dir)
    has_ckpt = any((stage_dir / "checkpoints").glob("checkpoint-*"))
    # resume from the newest Trainer checkpoint; crashed before the first one: start over in place
    s = run_sft(cfg, resume=ctx.resume and has_ckpt, overwrite=not (ctx.resume and has_ckpt))
    data = s.get("data") or {}
    # tokens trained ~ train-set tokens x passes made (steps x examples per step / examples)
    passes = s["steps"] * cfg.train.batch_size * cfg.train.grad_accum / max(int(data.get("examples") or 1), 1)
    return {"tokens": int((data.get("tokens") or 0) * passes) or None,
            "tokens_per_s": median_speed(read_metrics(stage_dir / "metrics.jsonl")),
            "trainable_params": s.get("trainable_params"), "steps": s.get("steps"),
            "train_loss": s.get("train_loss"), "eval_loss": s.get("eval_loss"),
            "note": f"{s.get('method')} on {data.get('examples', 0):,} examples, {s.get('steps')} steps"
                    + (f", eval loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else "")}


KIND = StageKind(
    name="sft", run=_run, needs={"base": ("pretrain", "sft")}, outputs=tuned_outputs, prepare=tuned_prepare,
    schema=SFTRunConfig, resumable=True, progress=tuned_progress,
    estimate_s=_estimate, command="krllm sft -c {config}",
    description="supervised fine-tuning with LoRA/DoRA/full (krllm.train.sft.run_sft)")
