"""The `sft` stage: supervised fine-tuning (LoRA / DoRA / QLoRA / full) of a pretrained or tuned model.

Stand-alone: `krllm sft -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from pathlib import Path

from krllm.data.sets.records import BUILTIN_N
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config, last_train_step, median_speed
from krllm.train.sft_config import SFTRunConfig

CPU_S_PER_STEP = 1.0  # per 8 examples, tiny model on 2 CPU cores: the first-run ETA guess


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = copy_config(cfg)
    cfg["name"], cfg["runs_dir"] = ctx.stage, ctx.run_dir
    if ctx.has_input("base"):
        cfg["base_model"] = str(ctx.input("base", "model"))
    return cfg


def _outputs(cfg: SFTRunConfig) -> dict[str, str]:
    if cfg.peft.method == "full":
        return {"model": "hf"}
    out = {"adapter": "adapter"}
    if cfg.merge and cfg.peft.method != "qlora":
        out["model"] = "merged"
    return out


def _total_steps(cfg: SFTRunConfig) -> int:
    """Optimizer steps: max_steps, else epochs over the train examples (a file's size is a guess: BUILTIN_N)."""
    t, d = cfg.train, cfg.data
    if t.max_steps > 0:
        return t.max_steps
    n = (d.n or BUILTIN_N) * ((1 - d.eval_fraction) if d.eval is None else 1)
    return int(-(-n // (t.batch_size * t.grad_accum)) * t.epochs)


def _progress(ctx: StageContext, cfg: SFTRunConfig):
    step = last_train_step(ctx.stage_dir)
    total = _total_steps(cfg)
    return (step, total) if step and total else None


def _estimate(cfg: SFTRunConfig) -> float:
    return 30.0 + CPU_S_PER_STEP * _total_steps(cfg) * cfg.train.batch_size / 8


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
    name="sft", run=_run, needs={"base": ("pretrain", "sft")}, outputs=_outputs, prepare=_prepare,
    schema=SFTRunConfig, resumable=True, progress=_progress,
    estimate_s=_estimate, command="krllm sft -c {config}",
    description="supervised fine-tuning with LoRA/DoRA/full (krllm.train.sft.run_sft)")
