"""The `dpo` stage: preference alignment (DPO with LoRA / DoRA / full) of a pretrained, SFT or DPO model.

Stand-alone: `krllm dpo -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import (median_speed, tuned_outputs, tuned_prepare, tuned_progress,
                                         tuned_total_steps)
from krllm.train.dpo_config import DPORunConfig

# per 8 pairs, tiny model on 2 CPU cores: two sequences a pair, a policy forward + backward and a reference
# forward each, about 2.5x an SFT step on 8 examples (the first-run ETA guess)
CPU_S_PER_STEP = 2.5


def _estimate(cfg: DPORunConfig) -> float:
    return 30.0 + CPU_S_PER_STEP * tuned_total_steps(cfg) * cfg.train.batch_size / 8


def _run(ctx: StageContext) -> dict:
    from krllm.tracking import read_metrics
    from krllm.train.dpo import run_dpo

    cfg: DPORunConfig = KIND.typed(ctx.config, f"stage {ctx.stage}")
    stage_dir = Path(ctx.stage_dir)
    has_ckpt = any((stage_dir / "checkpoints").glob("checkpoint-*"))
    # resume from the newest Trainer checkpoint; crashed before the first one: start over in place
    s = run_dpo(cfg, resume=ctx.resume and has_ckpt, overwrite=not (ctx.resume and has_ckpt))
    train = (s.get("data") or {}).get("train") or {}
    # tokens trained ~ train-set tokens x passes made (steps x pairs per step / pairs)
    passes = s["steps"] * cfg.train.batch_size * cfg.train.grad_accum / max(int(train.get("pairs") or 1), 1)
    note = f"{s.get('method')} on {train.get('pairs', 0):,} pairs, {s.get('steps')} steps"
    if s.get("eval_reward_margin") is not None:
        note += (f", eval reward margin {s['eval_reward_margin']:.3f}, "
                 f"accuracy {s['eval_reward_accuracy']:.2f}")
    return {"tokens": int((train.get("tokens") or 0) * passes) or None,
            "tokens_per_s": median_speed(read_metrics(stage_dir / "metrics.jsonl")),
            "trainable_params": s.get("trainable_params"), "steps": s.get("steps"),
            "train_loss": s.get("train_loss"), "eval_loss": s.get("eval_loss"),
            "reward_margin": s.get("eval_reward_margin"), "reward_accuracy": s.get("eval_reward_accuracy"),
            "note": note}


KIND = StageKind(
    # the base: preferably the latest SFT stage (align a model that already answers), else an earlier DPO, else
    # the pretrained model
    name="dpo", run=_run, needs={"base": ("sft", "dpo", "pretrain")}, outputs=tuned_outputs,
    prepare=tuned_prepare, schema=DPORunConfig, resumable=True, progress=tuned_progress,
    estimate_s=_estimate, command="krllm dpo -c {config}",
    description="preference alignment (DPO) with LoRA/DoRA/full (krllm.train.dpo.run_dpo)")
