"""The `eval` stage: perplexity, NPC chat loss, math exact match and sample answers, base vs fine-tuned.

Stand-alone: `krllm eval -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from krllm.config import validate
from krllm.eval.run import EvalConfig, TrainingSet
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config, section
from krllm.pipeline.stages.generate import GenerateConfig
from krllm.train.sft_config import SFTRunConfig

CPU_S_PER_PROBLEM = 0.5  # greedy math answers, tiny model on 2 CPU cores: the first-run ETA guess


def _trained_on(ctx: StageContext) -> list[TrainingSet]:
    """The generated / JSONL sets the models were trained on: the tuned model's SFT data, the generated texts."""
    sets = []  # upstream_config holds only upstream configs that validated
    if "tuned" in ctx.upstream_config:
        sft = validate(ctx.upstream_config.get("tuned") or {}, SFTRunConfig, f"stage {ctx.upstream['tuned']}")
        sets.append(TrainingSet(data=sft.data.train, n=sft.data.n, seed=sft.data.seed))
    if "texts" in ctx.upstream_config:
        gen = validate(ctx.upstream_config.get("texts") or {}, GenerateConfig, f"stage {ctx.upstream['texts']}")
        sets += [TrainingSet(data=st.data, n=st.n, seed=st.seed) for st in gen.sets
                 if st.data.startswith(("builtin:npc", "builtin:math"))]
    return sets


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    """Wire the models and shards, and hold the eval sets out from every generated set trained on."""
    cfg = copy_config(cfg)
    cfg["out_dir"] = ctx.stage_dir
    if ctx.has_input("base"):
        cfg["base"] = str(ctx.input("base", "model"))
    if ctx.has_input("tuned"):
        cfg["tuned"] = str(ctx.input("tuned", "model"))
    own = validate(cfg, EvalConfig, f"stage {ctx.stage}")
    for ts in _trained_on(ctx):
        key = "math" if ts.data.startswith("builtin:math") else "npc"
        have = getattr(own, key).holdout_from
        if ts not in have:
            have.append(ts)
            section(cfg, key)["holdout_from"] = [h.model_dump(mode="json") for h in have]
    if ctx.has_input("data") and not own.perplexity.shards:
        section(cfg, "perplexity")["shards"] = str(ctx.input("data", "shards"))
    return cfg


def _run(ctx: StageContext) -> dict:
    from krllm.eval.run import run_eval

    out = run_eval(KIND.typed(ctx.config, f"stage {ctx.stage}"))
    summary = {"tokens": out["tokens_scored"], "tokens_per_s": out["tokens_per_s"]}
    for role in ("base", "tuned"):
        for sec, key in (("perplexity", "loss"), ("npc", "loss"), ("math", "accuracy")):
            v = out.get(sec, {}).get(role, {}).get(key)
            if v is not None:
                summary[f"{role}_{sec}_{key}"] = v
    return summary


def _estimate(cfg: EvalConfig) -> float:
    return 30.0 + CPU_S_PER_PROBLEM * cfg.math.n


KIND = StageKind(
    name="eval", run=_run,
    needs={"base": ("pretrain",), "tuned": ("sft",), "data": ("data",), "texts": ("generate",)},
    optional=("tuned", "data", "texts"), outputs={"eval": "eval.json"}, prepare=_prepare,
    schema=EvalConfig, estimate_s=_estimate, command="krllm eval -c {config}",
    description="perplexity, NPC chat loss, math exact match and sample answers, base vs fine-tuned")
