"""Helpers the built-in stage adapters share: copying a config dict, reading a metrics tail, counting parameters,
and the wiring every tuning stage (sft, dpo) has in common."""

from __future__ import annotations

import json
from pathlib import Path


def copy_config(cfg: dict) -> dict:
    """A deep copy of a JSON-like config dict (prepare functions never mutate the caller's)."""
    return json.loads(json.dumps(cfg))


def section(cfg: dict, key: str) -> dict:
    """cfg[key] as a dict, created when absent (for setting pipeline-managed keys inside a section)."""
    if not isinstance(cfg.get(key), dict):
        cfg[key] = {}
    return cfg[key]


def tail_records(path: Path, size: int = 16384) -> list[dict]:
    """The last few records of a metrics.jsonl without reading the whole file."""
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(0, f.tell() - size))
        lines = f.read().decode("utf-8", errors="replace").splitlines()[1:] or []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the line the writer is in the middle of
            continue
    return out


def last_train_step(stage_dir: str | Path) -> int | None:
    """The last `train` step a stage logged to its metrics.jsonl (for the live progress bar)."""
    steps = [r["step"] for r in tail_records(Path(stage_dir) / "metrics.jsonl") if r.get("split") == "train"]
    return steps[-1] if steps else None


def median_speed(records: list[dict]) -> float | None:
    """Median tokens/s over the train records that logged one (NaN and missing skipped)."""
    speeds = sorted(r["tok_per_s"] for r in records
                    if r.get("split") == "train" and isinstance(r.get("tok_per_s"), float) and r["tok_per_s"] == r["tok_per_s"])
    return round(speeds[len(speeds) // 2], 1) if speeds else None


def count_params(model_dir: Path) -> int | None:
    """Exact parameter count of a saved model directory of any family: the elements of every tensor in
    its safetensors files, read from the headers (no weights loaded; a tied lm_head is stored once)."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not (model_dir / "config.json").exists() or not files:
        return None
    total = 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


# ---------------------------------------------------------------- tuning stages (sft, dpo: a TunedRunConfig)

def tuned_prepare(cfg: dict, ctx) -> dict:
    """The pipeline-managed keys of a tuning stage: its name and runs_dir (the stage directory), the base model."""
    cfg = copy_config(cfg)
    cfg["name"], cfg["runs_dir"] = ctx.stage, ctx.run_dir
    if ctx.has_input("base"):
        cfg["base_model"] = str(ctx.input("base", "model"))
    return cfg


def tuned_outputs(cfg) -> dict[str, str]:
    """full -> hf/; adapters -> adapter/ (+ merged/ as the model when `merge`, except qlora)."""
    if cfg.peft.method == "full":
        return {"model": "hf"}
    out = {"adapter": "adapter"}
    if cfg.merge and cfg.peft.method != "qlora":
        out["model"] = "merged"
    return out


def tuned_total_steps(cfg) -> int:
    """Optimizer steps: max_steps, else epochs over the train records (a file's size is a guess: BUILTIN_N)."""
    from krllm.data.sets.records import BUILTIN_N

    t, d = cfg.train, cfg.data
    if t.max_steps > 0:
        return t.max_steps
    n = (d.n or BUILTIN_N) * ((1 - d.eval_fraction) if d.eval is None else 1)
    return int(-(-n // (t.batch_size * t.grad_accum)) * t.epochs)


def tuned_progress(ctx, cfg):
    """(last logged train step, total steps) of a running tuning stage, or None before its first log."""
    step = last_train_step(ctx.stage_dir)
    total = tuned_total_steps(cfg)
    return (step, total) if step and total else None
