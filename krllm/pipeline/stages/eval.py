"""The `eval` stage: perplexity, NPC chat loss, math exact match (and pass@k), translation BLEU / chrF / TER
and sample answers of every model.

Stand-alone: `krllm eval -c runs/<p>/_pipeline/configs/<stage>.yaml`.

Models, by input role: `base` (pretrain), `tuned` (the latest sft stage), and the math track's
`math_sft` (an sft stage, wired only when the pipeline names it: the latest sft is `tuned`'s), `dpo`
and `grpo` (the latest stage of that kind, if any). The math-track roles go to `models` in that order.
"""

from __future__ import annotations

from krllm.config import validate
from krllm.eval.run import EvalConfig, TrainingSet
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config, section
from krllm.pipeline.stages.generate import GenerateConfig

CPU_S_PER_PROBLEM = 0.5  # greedy math answers of two tiny models on 2 CPU cores: the first-run ETA guess

# role -> the kind of stage that fills it; every tuning role reads its upstream's `data` {train, n, seed}
TUNED_ROLES = {"tuned": "sft", "math_sft": "sft", "dpo": "dpo", "grpo": "grpo"}
MATH_ROLES = ("math_sft", "dpo", "grpo")  # evaluated after base and tuned, in this order; trained on math


def _data_section(ctx: StageContext, role: str):
    """The upstream tuning stage's `data` section, validated by that kind's own schema (its defaults count)."""
    from krllm.pipeline.stages import get_kind

    return get_kind(TUNED_ROLES[role]).typed(ctx.upstream_config.get(role) or {}, f"stage {ctx.upstream[role]}").data


def _trained_on(ctx: StageContext) -> list[tuple[str, TrainingSet]]:
    """(eval section, set) for every generated / JSONL set the models were trained on: each tuning stage's
    data.train (read as its own record kind, matched by the problems' user turns) and the generated texts."""
    sets = []  # upstream_config holds only upstream configs that validated
    for role, kind in TUNED_ROLES.items():
        if role not in ctx.upstream_config:
            continue
        data = _data_section(ctx, role)
        math = role in MATH_ROLES or data.train.startswith("builtin:math")
        key = "math" if math else "npc"
        own = "grpo" if math else "sft"  # the record kind the eval section reads its own set as
        sets.append((key, TrainingSet(data=data.train, n=data.n, seed=data.seed, kind=None if kind == own else kind)))
    if "texts" in ctx.upstream_config:
        gen = validate(ctx.upstream_config.get("texts") or {}, GenerateConfig, f"stage {ctx.upstream['texts']}")
        sets += [("math" if st.data.startswith("builtin:math") else "npc", TrainingSet(data=st.data, n=st.n, seed=st.seed))
                 for st in gen.sets if st.data.startswith(("builtin:npc", "builtin:math"))]
    return sets


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    """Wire the models and shards, and hold the eval sets out from every set trained on."""
    cfg = copy_config(cfg)
    cfg["out_dir"] = ctx.stage_dir
    for role in ("base", "tuned"):
        if ctx.has_input(role):
            cfg[role] = str(ctx.input(role, "model"))
    wired = {role: str(ctx.input(role, "model")) for role in MATH_ROLES if ctx.has_input(role)}
    if wired:
        cfg["models"] = {**(cfg.get("models") or {}), **wired}
    own = validate(cfg, EvalConfig, f"stage {ctx.stage}")
    for key, ts in _trained_on(ctx):
        have = getattr(own, key).holdout_from
        if ts not in have:
            have.append(ts)
            section(cfg, key)["holdout_from"] = [h.as_config() for h in have]
    if ctx.has_input("data") and not own.perplexity.shards:
        section(cfg, "perplexity")["shards"] = str(ctx.input("data", "shards"))
    return cfg


def _run(ctx: StageContext) -> dict:
    from krllm.eval.run import run_eval

    out = run_eval(KIND.typed(ctx.config, f"stage {ctx.stage}"))
    summary = {"tokens": out["tokens_scored"], "tokens_per_s": out["tokens_per_s"]}
    for role in out["models"]:
        for sec, key in (("perplexity", "loss"), ("npc", "loss"), ("math", "accuracy"), ("translate", "bleu"),
                         ("translate", "chrf")):
            v = out.get(sec, {}).get(role, {}).get(key)
            if v is not None:
                summary[f"{role}_{sec}_{key}"] = v
    return summary


def _estimate(cfg: EvalConfig) -> float:
    math = cfg.math.n * (1 + cfg.math.samples) if cfg.math.enabled else 0
    pairs = (cfg.translate.n or 100) if cfg.translate.enabled else 0
    return 30.0 + CPU_S_PER_PROBLEM * (math + pairs) * len(cfg.roles()) / 2


KIND = StageKind(
    name="eval", run=_run,
    needs={"base": ("pretrain",), "tuned": ("sft",), "math_sft": ("sft",), "dpo": ("dpo",), "grpo": ("grpo",),
           "data": ("data",), "texts": ("generate",)},
    optional=("tuned", "math_sft", "dpo", "grpo", "data", "texts"), explicit=("math_sft",),
    outputs={"eval": "eval.json"}, prepare=_prepare, schema=EvalConfig, estimate_s=_estimate,
    command="krllm eval -c {config}",
    description="perplexity, NPC chat loss, math exact match / pass@k, translation BLEU / chrF / TER and sample "
                "answers of every model (base, fine-tuned, math track)")
