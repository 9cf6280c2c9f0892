"""What a training run leaves behind, written so a crash or a second process never leaves a half file:
run-directory checks (resume / overwrite), final adapter / HF directories (atomic, multi-process safe).
Shared by every TRL/PEFT method (sft, classify, ...).

Multi-process (accelerate launch, FSDP, DeepSpeed): `trainer.save_model` is a collective (it gathers
sharded weights) that writes on rank 0; every other write here happens on rank 0 only.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from krllm.config import write_resolved
from krllm.errors import KrllmError
from krllm.runs import replace_dir, write_lineage

CHECKPOINTS = "checkpoints"
STALE_FILES = ("metrics.jsonl", "summary.json", "samples.md", "samples.jsonl", "eval.json", "predictions.jsonl")


def rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


# ---------------------------------------------------------------- run directory

def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Path | None:
    """The checkpoint to resume from (or None); refuse to silently mix a new run into an old one."""
    ckpts = sorted((run_dir / CHECKPOINTS).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    if resume:
        if not ckpts:
            raise KrllmError(f"--resume: no checkpoint in {run_dir / CHECKPOINTS}")
        return ckpts[-1]
    if ckpts or (run_dir / "metrics.jsonl").exists():
        clear_previous_run(run_dir, overwrite)
    return None


def clear_previous_run(run_dir: Path, overwrite: bool, extra_dirs: tuple[str, ...] = ()) -> None:
    """A run directory that already holds a run: refused without --overwrite; with it, (rank 0) everything
    a previous run wrote is deleted (`extra_dirs`: a backend's own), so nothing stale is mistaken for this run's."""
    if not overwrite:
        raise KrllmError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                         "start over (deletes its checkpoints, metrics and outputs), or change name")
    if rank() == 0:
        for sub in (CHECKPOINTS, "tb", "adapter", "merged", "hf", *extra_dirs):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for name in STALE_FILES:
            (run_dir / name).unlink(missing_ok=True)


def start_run(cfg, resume: bool, overwrite: bool) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from): checks the directory, then (rank 0) creates it and
    writes the resolved config.yaml. `cfg` is a method's run config (it has `runs_dir` and `name`)."""
    run_dir = Path(cfg.runs_dir) / cfg.name
    resume_from = prepare_run_dir(run_dir, resume, overwrite)
    if rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_resolved(cfg, run_dir / "config.yaml")
    return run_dir, resume_from


def write_run_lineage(cfg, run_dir: Path, resume_from: Path | None) -> None:
    """lineage.json of a tuning run (rank 0): base model, tokenizer and data files hashed as inputs; the data
    spec (built-in sets are regenerated from it) and the checkpoint a resumed run continued from."""
    inputs = {"base_model": cfg.base_model, "tokenizer": cfg.tokenizer or cfg.base_model}
    for role, spec in (("data", cfg.data.train), ("eval_data", cfg.data.eval)):
        if spec and not str(spec).startswith("builtin:"):
            inputs[role] = spec
    write_lineage(run_dir, inputs, extra={"data": {
        "train": cfg.data.train, "eval": cfg.data.eval, "n": cfg.data.n, "seed": cfg.data.seed,
        "resumed_from": str(resume_from) if resume_from else None}})


# ---------------------------------------------------------------- final directories

def publish_dir(staging: Path, final: Path) -> None:
    """Rename a complete `staging` directory to `final`, replacing an old one (krllm.runs.replace_dir)."""
    replace_dir(staging, final)


def save_final(trainer, tokenizer, out: Path, extra=None) -> None:
    """The trained model (PEFT: the adapter only) + tokenizer + generation config, published atomically.

    Call on every rank. `extra(path)` may add files (rank 0, before publishing).
    """
    staging = out.parent / f".{out.name}.staging"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(staging))  # collective under FSDP / ZeRO-3; writes on rank 0
    if trainer.is_world_process_zero():
        (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle of TrainingArguments: not needed
        tokenizer.save_pretrained(staging)
        gen = getattr(trainer.model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(staging)  # stop ids (<|im_end|>) for `krllm merge` and servers
        if (staging / "config.json").exists():
            from krllm.model.hf import top_level_rope_theta

            top_level_rope_theta(staging / "config.json")
        _pin_adapter_base(staging)
        if extra is not None:
            extra(staging)
        publish_dir(staging, out)
    trainer.accelerator.wait_for_everyone()


def _pin_adapter_base(staging: Path) -> None:
    """PEFT records the base path as training saw it (relative to the cwd); store it absolute so the
    adapter finds its base from any working directory. A hub id (no such local directory) stays."""
    from krllm.model.adapters import BASE_KEY, is_adapter_dir, pin_base_path, read_adapter_config

    if is_adapter_dir(staging):
        recorded = read_adapter_config(staging).get(BASE_KEY)
        if recorded and Path(recorded).is_dir():
            pin_base_path(staging, recorded)


def save_merged(model, tokenizer, out: Path) -> None:
    """A merged (plain) model as an HF directory; single process, rank 0."""
    from krllm.model.hf import top_level_rope_theta

    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    top_level_rope_theta(staging / "config.json")
    publish_dir(staging, out)


def save_outputs(trainer, tokenizer, run_dir: Path, method: str, merge: bool) -> dict[str, str]:
    """A tuning run's results: hf/ (full) or adapter/ (+ merged/ for lora/dora when `merge`).
    Call on every rank; merged/ is written by single-process runs only (else `krllm merge` is printed).
    Returns {output name: path}."""
    out_name = "hf" if method == "full" else "adapter"
    save_final(trainer, tokenizer, run_dir / out_name)
    outputs = {out_name: str(run_dir / out_name)}
    if merge and method in ("lora", "dora"):
        if world_size() == 1:
            save_merged(trainer.model.merge_and_unload(), tokenizer, run_dir / "merged")
            outputs["merged"] = str(run_dir / "merged")
        elif rank() == 0:
            print(f"note: multi-process run: merge with `krllm merge {run_dir / 'adapter'} --out "
                  f"{run_dir / 'merged'}`")
    return outputs
