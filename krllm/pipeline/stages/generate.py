"""The `generate` stage: generated sets (NPC talk, math problems...) written as JSONL text documents.

Lets a pipeline pretrain on generated text next to prose: a `data` stage reads this stage's
directory as one more source. No stand-alone command: it is a few lines over
`krllm.data.sets.generated.generated_documents`.
"""

from __future__ import annotations

import json

from pydantic import Field

from krllm.config import StrictModel
from krllm.errors import KrllmError
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages.common import copy_config


class GeneratedSet(StrictModel):
    data: str = Field(description="a generated set: builtin:npc, builtin:math[:ko|en|mixed], builtin:sentiment")
    n: int = Field(1000, ge=1, description="records to generate")
    seed: int = 0


class GenerateConfig(StrictModel):
    """Generated sets written as JSONL text documents, e.g. to pretrain on NPC talk next to prose."""

    out_dir: str = "runs/texts"
    sets: list[GeneratedSet] = Field(min_length=1)


def _prepare(cfg: dict, ctx: StageContext) -> dict:
    cfg = copy_config(cfg)
    cfg["out_dir"] = ctx.stage_dir
    return cfg


def _run(ctx: StageContext) -> dict:
    from krllm.data.sets.generated import generated_documents
    from krllm.runs import atomic_dir

    cfg: GenerateConfig = KIND.typed(ctx.config, f"stage {ctx.stage}")
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


KIND = StageKind(
    name="generate", run=_run, outputs={"texts": "."}, prepare=_prepare,
    schema=GenerateConfig, estimate_s=5.0,
    description="write generated sets (krllm.data.sets.generated) as JSONL documents for data prepare")
