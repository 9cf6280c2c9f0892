"""The `grpo` stage: GRPO with verifiable rewards (LoRA / DoRA / full) of an SFT or DPO model, rollouts on
krllm's engine.

Stand-alone: `krllm grpo -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import tuned_outputs, tuned_prepare, tuned_progress
from krllm.train.grpo_config import GRPORunConfig

# per completion of max_completion_length 96, tiny model on 2 CPU cores: sampling on krllm's engine plus
# the policy's forward + backward (the first-run ETA guess)
CPU_S_PER_COMPLETION = 0.05


def _estimate(cfg: GRPORunConfig) -> float:
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    scale = cfg.grpo.max_completion_length / 96
    return 20.0 + CPU_S_PER_COMPLETION * per_step * scale * max(cfg.train.max_steps, 1)


def _run(ctx: StageContext) -> dict:
    from krllm.train.grpo import run_grpo

    cfg: GRPORunConfig = KIND.typed(ctx.config, f"stage {ctx.stage}")
    has_ckpt = any((Path(ctx.stage_dir) / "checkpoints").glob("checkpoint-*"))
    s = run_grpo(cfg, resume=ctx.resume and has_ckpt, overwrite=not (ctx.resume and has_ckpt))
    note = f"{s.get('method')}, {s.get('steps')} steps x {s['num_generations']} generations"
    if "reward_first" in s:
        note += f", reward {s['reward_first']:.3f} -> {s['reward_last_fifth']:.3f}"
    if "kl_last" in s:
        note += f", kl {s['kl_last']:.4f}"
    return {"trainable_params": s.get("trainable_params"), "steps": s.get("steps"),
            "train_loss": s.get("train_loss"), "reward_first": s.get("reward_first"),
            "reward_last": s.get("reward_last_fifth"), "kl": s.get("kl_last"), "note": note}


KIND = StageKind(
    name="grpo", run=_run, needs={"base": ("sft", "dpo", "grpo", "pretrain")}, outputs=tuned_outputs,
    prepare=tuned_prepare, schema=GRPORunConfig, resumable=True, progress=tuned_progress,
    estimate_s=_estimate, command="krllm grpo -c {config}",
    description="reinforcement learning with verifiable rewards (GRPO) on krllm's engine (krllm.train.grpo.run_grpo)")
