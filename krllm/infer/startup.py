"""From a loaded model to a running engine, and the one start-up line every command prints.

    lm = krllm.model.load.load("runs/demo_ko/sft", dtype="auto")
    engine = make_engine(lm, max_batch=8)
    print(describe(lm, engine))   # path, params, dtype (and why), device, slots, KV cache, decode path, stop ids
"""

from __future__ import annotations

from krllm.infer.config import PREFILL_CHUNK
from krllm.infer.engine import Engine
from krllm.model.load import LoadedModel


def make_engine(lm: LoadedModel, max_batch: int = 1, max_seq_len: int = 0,
                prefill_chunk: int = PREFILL_CHUNK, kv_dtype: str = "auto") -> Engine:
    """An Engine for `lm` that stops on `lm.stop_ids`; max_seq_len 0 = the model's max_position_embeddings;
    prefill_chunk 0 = whole prompts (see Engine)."""
    return Engine(lm.model, max_batch=max_batch, max_seq_len=max_seq_len or None, eos_ids=lm.stop_ids,
                  prefill_chunk=prefill_chunk, kv_dtype=kv_dtype)


def describe(lm: LoadedModel, engine: Engine) -> str:
    """One start-up line: what runs where, in which dtype, with how much KV cache."""
    cache = engine.runner.cache
    kv_dtype = str(cache.k.dtype).removeprefix("torch.") if hasattr(cache, "k") else ""
    kv = (f"KV cache {cache.nbytes() / 2**20:.0f} MiB {kv_dtype}".rstrip() if getattr(cache, "preallocated", True)
          else "KV cache grows with each sequence")
    extra = f" + adapter {lm.adapter}" if lm.adapter else ""
    path = lm.base if lm.adapter else lm.path
    dtype = str(lm.dtype).removeprefix("torch.")
    return (f"{path}{extra}: {lm.num_parameters / 1e6:.2f}M params, {dtype} ({lm.dtype_reason}) on {lm.device}, "
            f"{engine.max_batch} slot(s) x {engine.max_seq_len} tokens ({kv}), "
            f"decoding: {engine.runner.decode_path}, stop ids {sorted(engine.eos_ids)}")
