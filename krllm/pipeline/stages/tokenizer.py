"""The `tokenizer` stage: train a byte-level BPE tokenizer into the stage directory.

Stand-alone: `krllm tokenizer train -c runs/<p>/_pipeline/configs/<stage>.yaml`.
"""

from __future__ import annotations

from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config
from krllm.tokenizer.train import TokenizerTrainConfig


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = copy_config(cfg)
    cfg["out_dir"] = ctx.stage_dir
    return cfg


def _run(ctx: StageContext) -> dict:
    from krllm.tokenizer.train import train_tokenizer

    s = train_tokenizer(cfg=KIND.typed(ctx.config, f"stage {ctx.stage}"))
    secs = s.get("train_seconds") or 0
    return {"vocab_size": s["vocab_size"], "corpus_chars": s["corpus_chars"],
            "note": f"vocab {s['vocab_size']:,} from {s['corpus_chars']:,} characters"
                    + (f" ({s['corpus_chars'] / secs:,.0f} chars/s)" if secs else "")}


KIND = StageKind(
    name="tokenizer", run=_run, outputs={"tokenizer": "."}, prepare=_prepare,
    schema=TokenizerTrainConfig, estimate_s=20.0,
    command="krllm tokenizer train -c {config}",
    description="train a byte-level BPE tokenizer (krllm.tokenizer.train.train_tokenizer)")
