"""`krllm export int8|int4`: a model, run or adapter directory -> a directory of quantized weights.

    krllm export int4 runs/demo_ko/sft --out demo-int4        # then: krllm serve demo-int4
    krllm export int8 Qwen2.5-0.5B-Instruct --out qwen-int8

What `--dtype int8|int4` does at every load, done once and saved (layout: docs/quantization.md), so
serving starts without reading, or holding, the fp32 weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def export_quantized(source: str | Path, out_dir: str | Path, fmt: str, group_size: int | None = None,
                     base: str | Path | None = None) -> Path:
    """Load `source` quantized to `fmt` (int8 | int4, an adapter merged first) and save it to `out_dir`
    with its tokenizer (atomically; krllm.model.load.load reads it back as saved)."""
    from krllm.model.load import load
    from krllm.model.quant import save_quantized

    lm = load(source, base=base, device="cpu", dtype=fmt, group_size=group_size)
    with tempfile.TemporaryDirectory(prefix="krllm-quant-tok-") as tok:
        lm.tokenizer.save_pretrained(tok)
        return save_quantized(lm.model, out_dir, tokenizer_dir=tok)
