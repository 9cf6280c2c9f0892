"""Built-in stage kinds: each wires pipeline paths into a stage's own config and calls its entry point.

An adapter only (1) sets the keys the pipeline manages — the output directory, the paths of the
upstream outputs, the resume flag — and (2) calls the stage's Python entry point with its own
config schema, returning a small summary (tokens, tokens/s, parameter counts) for the report.
The stages themselves stay unaware of the pipeline: each can be run alone with the command shown.
"""

from __future__ import annotations

import json
from pathlib import Path

from krllm.config import validate
from krllm.errors import KrllmError
from krllm.pipeline.kinds import StageContext, StageKind


def _copy(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg))


def _section(cfg: dict, key: str) -> dict:
    if not isinstance(cfg.get(key), dict):
        cfg[key] = {}
    return cfg[key]


def _tail_records(path: Path, size: int = 16384) -> list[dict]:
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
        except json.JSONDecodeError:
            continue
    return out


def _count_params(model_dir: Path) -> int | None:
    """Exact parameter count of an HF Llama directory (shapes only, on the meta device)."""
    import torch

    from krllm.model.hf import config_from_hf_dir
    from krllm.model.llama import Llama

    if not (model_dir / "config.json").exists():
        return None
    with torch.device("meta"):
        model = Llama(config_from_hf_dir(model_dir))
    return model.num_parameters()


# --------------------------------------------------------------------------- tokenizer

def _tokenizer_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    cfg["out_dir"] = ctx.stage_dir
    return cfg


def _tokenizer_run(ctx: StageContext) -> dict:
    from krllm.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    cfg = validate(ctx.config, TokenizerTrainConfig, f"stage {ctx.stage}")
    s = train_tokenizer(cfg=cfg)
    secs = s.get("train_seconds") or 0
    return {"vocab_size": s["vocab_size"], "corpus_chars": s["corpus_chars"],
            "note": f"vocab {s['vocab_size']:,} from {s['corpus_chars']:,} characters"
                    + (f" ({s['corpus_chars'] / secs:,.0f} chars/s)" if secs else "")}


TOKENIZER = StageKind(
    name="tokenizer", run=_tokenizer_run, outputs={"tokenizer": "."}, prepare=_tokenizer_prepare,
    schema="krllm.tokenizer.train:TokenizerTrainConfig", estimate_s=20.0,
    command="krllm tokenizer train -c {config}",
    description="train a byte-level BPE tokenizer (krllm.tokenizer.train.train_tokenizer)")


# --------------------------------------------------------------------------- pretrain

def _pretrain_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    run = _section(cfg, "run")
    run["out_dir"], run["name"] = ctx.run_dir, ctx.stage
    if ctx.has_input("data"):
        _section(cfg, "data")["shards"] = str(ctx.input("data", "shards"))
    return cfg


def _pretrain_total_steps(cfg: dict) -> int | None:
    t = cfg.get("train") or {}
    if t.get("max_steps"):
        return int(t["max_steps"])
    if t.get("max_tokens"):
        per = int(t.get("batch_size", 8)) * int(t.get("grad_accum", 1)) * int((cfg.get("data") or {}).get("seq_len", 256))
        return -(-int(t["max_tokens"]) // per)
    return None


def _pretrain_progress(ctx: StageContext):
    total = _pretrain_total_steps(ctx.config)
    steps = [r["step"] for r in _tail_records(Path(ctx.stage_dir) / "metrics.jsonl") if r.get("split") == "train"]
    return (steps[-1], total) if steps and total else None


def _pretrain_estimate(cfg: dict) -> float:
    steps = _pretrain_total_steps(cfg) or 100
    t = cfg.get("train") or {}
    tokens = steps * int(t.get("batch_size", 8)) * int(t.get("grad_accum", 1)) * int((cfg.get("data") or {}).get("seq_len", 256))
    return 15.0 + tokens / 5000.0  # ~5K tok/s: the tiny preset on 2 CPU cores


def _pretrain_run(ctx: StageContext) -> dict:
    from krllm.tracking import read_metrics
    from krllm.train.pretrain import pretrain
    from krllm.train.pretrain_config import PretrainConfig

    cfg = validate(ctx.config, PretrainConfig, f"stage {ctx.stage}")
    result = pretrain(cfg, resume=ctx.resume)
    if result.get("status") != "done":
        raise KrllmError(f"pretraining stopped at step {result.get('step')} ({result.get('status')}); "
                         "re-run the pipeline to resume from the last checkpoint")
    train = [r for r in read_metrics(Path(ctx.stage_dir) / "metrics.jsonl") if r.get("split") == "train"]
    last = next((r for r in reversed(train) if "tokens" in r), {})
    speeds = [r["tok_per_s"] for r in train if isinstance(r.get("tok_per_s"), float) and r["tok_per_s"] == r["tok_per_s"]]
    return {"tokens": int(last.get("tokens", 0)) or None, "steps": result.get("step"),
            "tokens_per_s": round(sorted(speeds)[len(speeds) // 2], 1) if speeds else None,
            "params": _count_params(Path(ctx.stage_dir) / "hf"), "val_loss": result.get("val_loss")}


PRETRAIN = StageKind(
    name="pretrain", run=_pretrain_run, needs={"data": ("data",)}, optional=("data",),
    outputs={"model": "hf"}, prepare=_pretrain_prepare, schema="krllm.train.pretrain_config:PretrainConfig",
    resumable=True, progress=_pretrain_progress, estimate_s=_pretrain_estimate,
    command="krllm pretrain -c {config}    # add --resume to continue an interrupted run",
    description="pretrain from scratch on token shards (krllm.train.pretrain.pretrain)")


# --------------------------------------------------------------------------- eval

def _eval_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    cfg["out_dir"] = ctx.stage_dir
    if ctx.has_input("base"):
        cfg["base"] = str(ctx.input("base", "model"))
    if ctx.has_input("tuned"):
        cfg["tuned"] = str(ctx.input("tuned", "model"))
        data = (ctx.upstream_config.get("tuned") or {}).get("data") or {}
        train = data.get("train")
        if train:  # hold the eval sets out from what the fine-tuning saw
            spec = {"data": train, "n": data.get("n"), "seed": data.get("seed", 0)}
            key = "math" if str(train).startswith("builtin:math") else "npc"
            sec = _section(cfg, key)
            sec.setdefault("holdout_from", spec)
    if ctx.has_input("data"):
        sec = _section(cfg, "perplexity")
        sec.setdefault("shards", str(ctx.input("data", "shards")))
    return cfg


def _eval_run(ctx: StageContext) -> dict:
    from krllm.eval.run import EvalConfig, run_eval

    cfg = validate(ctx.config, EvalConfig, f"stage {ctx.stage}")
    out = run_eval(cfg)
    summary = {"tokens": out["tokens_scored"], "tokens_per_s": out["tokens_per_s"]}
    for role in ("base", "tuned"):
        for sec, key in (("perplexity", "loss"), ("npc", "loss"), ("math", "accuracy")):
            v = out.get(sec, {}).get(role, {}).get(key)
            if v is not None:
                summary[f"{role}_{sec}_{key}"] = v
    return summary


def _eval_estimate(cfg: dict) -> float:
    m = (cfg.get("math") or {})
    return 20.0 + 0.5 * int(m.get("n", 40)) + 10


EVAL = StageKind(
    name="eval", run=_eval_run, needs={"base": ("pretrain",), "tuned": ("sft",), "data": ("data",)},
    optional=("tuned", "data"), outputs={"eval": "eval.json"}, prepare=_eval_prepare,
    schema="krllm.eval.run:EvalConfig", estimate_s=_eval_estimate, command="krllm eval -c {config}",
    description="perplexity, NPC chat loss, math exact match and sample answers, base vs fine-tuned")


# --------------------------------------------------------------------------- report

def _report_run(ctx: StageContext) -> dict:
    from krllm.eval.report import build_report

    path = build_report(ctx.run_dir)
    return {"note": f"wrote {path}"}


REPORT = StageKind(
    name="report", run=_report_run, outputs={}, always_run=True, estimate_s=8.0,
    description="report card: report.md + report.html + plots/ in the pipeline directory")


BUILTIN_KINDS: dict[str, StageKind] = {k.name: k for k in (TOKENIZER, PRETRAIN, EVAL, REPORT)}
