"""Built-in stage kinds: each wires pipeline paths into a stage's own config and calls its entry point.

An adapter only (1) sets the keys the pipeline manages — the output directory, the paths of the
upstream outputs, the resume flag — and (2) calls the stage's Python entry point with its own
config schema, returning a small summary (tokens, tokens/s, parameter counts) for the report.
The stages themselves stay unaware of the pipeline: each can be run alone with the command shown.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from krllm.config import StrictModel, validate
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


# --------------------------------------------------------------------------- generate

class GeneratedSet(StrictModel):
    data: str = Field(description="a generated set: builtin:npc, builtin:math[:ko|en|mixed], builtin:sentiment")
    n: int = Field(1000, ge=1, description="records to generate")
    seed: int = 0


class GenerateConfig(StrictModel):
    """Generated sets written as JSONL text documents, e.g. to pretrain on NPC talk next to prose."""

    out_dir: str = "runs/texts"
    sets: list[GeneratedSet] = Field(min_length=1)


def _generate_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    cfg["out_dir"] = ctx.stage_dir
    return cfg


def _generate_run(ctx: StageContext) -> dict:
    from krllm.data.generated import generated_documents
    from krllm.runs import atomic_dir

    cfg = validate(ctx.config, GenerateConfig, f"stage {ctx.stage}")
    docs = chars = 0
    with atomic_dir(cfg.out_dir) as tmp:
        for i, st in enumerate(cfg.sets):
            name = st.data.removeprefix("builtin:").replace(":", "-")
            try:
                rows = list(generated_documents(st.data, st.n, st.seed))
            except ValueError as e:
                raise KrllmError(f"stage {ctx.stage}: sets[{i}].data: {e}") from None
            with open(tmp / f"{i:02d}_{name}_s{st.seed}.jsonl", "w", encoding="utf-8") as f:
                for doc_id, text in rows:
                    f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
                    docs, chars = docs + 1, chars + len(text)
    return {"note": f"{docs:,} documents, {chars:,} characters"}


GENERATE = StageKind(
    name="generate", run=_generate_run, outputs={"texts": "."}, prepare=_generate_prepare,
    schema="krllm.pipeline.stages:GenerateConfig", estimate_s=5.0,
    description="write generated sets (krllm.data.generated) as JSONL documents for data prepare")


# --------------------------------------------------------------------------- data prepare

def _data_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    cfg["out_dir"] = ctx.stage_dir
    if ctx.has_input("tokenizer"):
        cfg["tokenizer"] = str(ctx.input("tokenizer", "tokenizer"))
    if ctx.has_input("texts"):  # generated documents join the configured sources
        sources = list(cfg.get("sources") or ["builtin:ko-law"])
        cfg["sources"] = sources + [{"path": str(ctx.input("texts", "texts")), "format": "jsonl"}]
    return cfg


def _data_run(ctx: StageContext) -> dict:
    import time

    from rich.console import Console

    from krllm.data.prepare import prepare
    from krllm.data.prepare_config import PrepareConfig

    cfg = validate(ctx.config, PrepareConfig, f"stage {ctx.stage}")
    t0 = time.time()
    m = prepare(cfg, console=Console())
    secs = time.time() - t0
    tokens = sum(int(s["tokens"]) for s in m["splits"].values())
    split = ", ".join(f"{k} {int(v['tokens']):,}" for k, v in m["splits"].items())
    return {"tokens": tokens, "tokens_per_s": round(tokens / secs, 1) if secs > 0 else None,
            "note": f"{m['documents']['kept']:,} of {m['documents']['read']:,} documents kept; tokens: {split}"}


DATA = StageKind(
    name="data", run=_data_run, needs={"tokenizer": ("tokenizer",), "texts": ("generate",)}, optional=("texts",),
    outputs={"shards": "."},
    prepare=_data_prepare, schema="krllm.data.prepare_config:PrepareConfig", estimate_s=60.0,
    command="krllm data prepare -c {config}",
    description="clean, dedupe, split and tokenize text into shards (krllm.data.prepare.prepare)")


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
    command="krllm pretrain -c {config}",
    description="pretrain from scratch on token shards (krllm.train.pretrain.pretrain)")


# --------------------------------------------------------------------------- sft

def _sft_prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = _copy(cfg)
    cfg["name"], cfg["runs_dir"] = ctx.stage, ctx.run_dir
    if ctx.has_input("base"):
        cfg["base_model"] = str(ctx.input("base", "model"))
    return cfg


def _sft_outputs(cfg: dict) -> dict[str, str]:
    method = (cfg.get("peft") or {}).get("method", "lora")
    if method == "full":
        return {"model": "hf"}
    out = {"adapter": "adapter"}
    if cfg.get("merge", True) and method != "qlora":
        out["model"] = "merged"
    return out


def _sft_total_steps(cfg: dict) -> int | None:
    t, d = cfg.get("train") or {}, cfg.get("data") or {}
    if int(t.get("max_steps", -1)) > 0:
        return int(t["max_steps"])
    n = int(d.get("n") or 1000) * (1 - float(d.get("eval_fraction", 0.05)))
    per = int(t.get("batch_size", 8)) * int(t.get("grad_accum", 1))
    return int(-(-n // per) * float(t.get("epochs", 1.0)))


def _sft_progress(ctx: StageContext):
    total = _sft_total_steps(ctx.config)
    steps = [r["step"] for r in _tail_records(Path(ctx.stage_dir) / "metrics.jsonl") if r.get("split") == "train"]
    return (steps[-1], total) if steps and total else None


def _sft_estimate(cfg: dict) -> float:
    t = cfg.get("train") or {}
    return 30.0 + 1.0 * (_sft_total_steps(cfg) or 100) * int(t.get("batch_size", 8)) / 8


def _sft_run(ctx: StageContext) -> dict:
    from krllm.tracking import read_metrics
    from krllm.train.sft import run_sft
    from krllm.train.sft_config import SFTRunConfig

    cfg = validate(ctx.config, SFTRunConfig, f"stage {ctx.stage}")
    stage_dir = Path(ctx.stage_dir)
    has_ckpt = any((stage_dir / "checkpoints").glob("checkpoint-*"))
    # resume from the newest Trainer checkpoint; crashed before the first one: start over in place
    s = run_sft(cfg, resume=ctx.resume and has_ckpt, overwrite=not (ctx.resume and has_ckpt))
    speeds = [r["tok_per_s"] for r in read_metrics(stage_dir / "metrics.jsonl")
              if r.get("split") == "train" and isinstance(r.get("tok_per_s"), float)]
    data = s.get("data") or {}
    # tokens trained ~ train-set tokens x passes made (steps x examples per step / examples)
    passes = s["steps"] * cfg.train.batch_size * cfg.train.grad_accum / max(int(data.get("examples") or 1), 1)
    return {"tokens": int((data.get("tokens") or 0) * passes) or None,
            "tokens_per_s": round(sorted(speeds)[len(speeds) // 2], 1) if speeds else None,
            "trainable_params": s.get("trainable_params"), "steps": s.get("steps"),
            "train_loss": s.get("train_loss"), "eval_loss": s.get("eval_loss"),
            "note": f"{s.get('method')} on {data.get('examples', 0):,} examples, {s.get('steps')} steps"
                    + (f", eval loss {s['eval_loss']:.4f}" if s.get("eval_loss") is not None else "")}


SFT = StageKind(
    name="sft", run=_sft_run, needs={"base": ("pretrain", "sft")}, outputs=_sft_outputs, prepare=_sft_prepare,
    schema="krllm.train.sft_config:SFTRunConfig", resumable=True, progress=_sft_progress,
    estimate_s=_sft_estimate, command="krllm sft -c {config}",
    description="supervised fine-tuning with LoRA/DoRA/full (krllm.train.sft.run_sft)")


# --------------------------------------------------------------------------- eval

def _holdout(spec: dict, cfg: dict) -> None:
    """Add a training set {data, n, seed} to the eval section it overlaps (math or npc)."""
    key = "math" if str(spec["data"]).startswith("builtin:math") else "npc"
    sec = _section(cfg, key)
    have = sec.get("holdout_from") or []
    have = [have] if isinstance(have, dict) else list(have)
    if spec not in have:
        sec["holdout_from"] = have + [spec]


def _eval_prepare(cfg: dict, ctx: StageContext) -> dict:
    """Wire the models and shards, and hold the eval sets out from every generated set trained on."""
    cfg = _copy(cfg)
    cfg["out_dir"] = ctx.stage_dir
    if ctx.has_input("base"):
        cfg["base"] = str(ctx.input("base", "model"))
    if ctx.has_input("tuned"):
        cfg["tuned"] = str(ctx.input("tuned", "model"))
        data = (ctx.upstream_config.get("tuned") or {}).get("data") or {}
        if data.get("train"):
            _holdout({"data": data["train"], "n": data.get("n"), "seed": data.get("seed", 0)}, cfg)
    for st in (ctx.upstream_config.get("texts") or {}).get("sets") or []:
        if str(st.get("data", "")).startswith(("builtin:npc", "builtin:math")):
            _holdout({"data": st["data"], "n": st.get("n", 1000), "seed": st.get("seed", 0)}, cfg)
    if ctx.has_input("data"):
        sec = _section(cfg, "perplexity")
        if not sec.get("shards"):
            sec["shards"] = str(ctx.input("data", "shards"))
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
    name="eval", run=_eval_run,
    needs={"base": ("pretrain",), "tuned": ("sft",), "data": ("data",), "texts": ("generate",)},
    optional=("tuned", "data", "texts"), outputs={"eval": "eval.json"}, prepare=_eval_prepare,
    schema="krllm.eval.run:EvalConfig", estimate_s=_eval_estimate, command="krllm eval -c {config}",
    description="perplexity, NPC chat loss, math exact match and sample answers, base vs fine-tuned")


# --------------------------------------------------------------------------- report

def _report_run(ctx: StageContext) -> dict:
    from krllm.pipeline.report import build_report

    path = build_report(ctx.run_dir)
    return {"note": f"wrote {path}"}


REPORT = StageKind(
    name="report", run=_report_run, outputs={}, always_run=True, estimate_s=8.0,
    description="report card: report.md + report.html + plots/ in the pipeline directory")


BUILTIN_KINDS: dict[str, StageKind] = {k.name: k for k in (TOKENIZER, GENERATE, DATA, PRETRAIN, SFT, EVAL, REPORT)}
