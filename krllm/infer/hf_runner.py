"""The engine's runner for every causal LM krllm has no fast path for: transformers' own forward.

Same public interface as `krllm.infer.runner.ModelRunner` (prefill one slot, decode a batch of
slots, free a slot), so the Engine, the scheduler and the HTTP server do not know which one runs.
Each slot owns one transformers `DynamicCache` built from the model's config (so sliding-window
and hybrid layer layouts are what `generate` would build), and every forward is called exactly as
`GenerationMixin.generate` calls it for a single unpadded sequence: explicit `position_ids`, no
attention mask, `logits_to_keep=1`. Greedy tokens are therefore identical to
`model.generate(do_sample=False)`, for Qwen2, Mistral, Gemma, Mixtral, Qwen2-MoE, ...

Decode loops over the active slots, one forward each (slower than krllm's batched runner, but
rows at different positions need no padding or masks, and each row computes exactly what it
would compute alone).

    runner = TransformersRunner(model, n_slots=4, max_seq_len=1024)
    logits = runner.prefill(slot=0, ids=[5, 6, 7])                 # (V,)
    logits = runner.decode(torch.tensor([42]), n_rows=1)           # (1, V) for slot 0
"""

from __future__ import annotations

import torch

from krllm.errors import KrllmError
from krllm.infer.runner import prompt_tensor
from krllm.model.config_facts import config_max_len, text_config


class SlotCaches:
    """One transformers cache per slot; `lengths[s]` = tokens cached in slot s (0 = free)."""

    preallocated = False  # grows with the sequences (the start-up line says so instead of a size)

    def __init__(self, config, n_slots: int, max_seq_len: int):
        self.config = config  # the decoder config the caches are built from
        self.caches: list = [None] * n_slots
        self.lengths = [0] * n_slots
        self.max_seq_len = max_seq_len

    @property
    def n_slots(self) -> int:
        return len(self.lengths)

    def fresh(self, slot: int):
        from transformers import DynamicCache

        self.caches[slot] = DynamicCache(config=self.config)
        self.lengths[slot] = 0
        return self.caches[slot]

    def free(self, slot: int) -> None:
        self.caches[slot] = None
        self.lengths[slot] = 0

    def nbytes(self) -> int:
        """Bytes the caches hold now (they grow with the sequences; nothing is reserved up front)."""
        total = 0
        for cache in self.caches:
            for layer in getattr(cache, "layers", None) or ():
                for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                    if isinstance(t, torch.Tensor):
                        total += t.numel() * t.element_size()
        return total


class TransformersRunner:
    """Prefill one slot / decode a batch of slots with a transformers causal LM; token ids in, logits out."""

    def __init__(self, model, n_slots: int, max_seq_len: int):
        name = type(model).__name__
        if not hasattr(model, "get_output_embeddings") or not hasattr(model, "config"):
            raise KrllmError(f"{name} is not a transformers causal LM (no config / output embeddings)")
        supports_cache = getattr(model, "_supports_default_dynamic_cache", None)
        if callable(supports_cache) and not supports_cache():
            raise KrllmError(f"{name} keeps its own kind of cache (not transformers' DynamicCache); krllm's "
                             "transformers path cannot serve it")
        self.model = model.eval()  # dropout off: generation must be deterministic
        self.cfg = text_config(model.config)
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        limit = config_max_len(self.cfg)
        if limit is not None and max_seq_len > limit:
            raise KrllmError(f"max_seq_len={max_seq_len} exceeds the model's {limit}-token limit "
                             f"({type(self.cfg).__name__})")
        head = model.get_output_embeddings()
        self._vocab = int(getattr(head, "out_features", 0) or self.cfg.vocab_size)
        supports_keep = getattr(model, "_supports_logits_to_keep", None)
        # only the last position's logits, as generate asks for them (saves a (T, V) matmul at prefill)
        self._extra = {"logits_to_keep": 1} if callable(supports_keep) and supports_keep() else {}
        self.cache = SlotCaches(self.cfg, n_slots, max_seq_len)
        self.decode_path = f"transformers ({name})"

    @property
    def max_seq_len(self) -> int:
        return self.cache.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self._vocab

    def _forward(self, cache, ids: torch.Tensor, start: int) -> torch.Tensor:
        """ids (1, T) at positions start..start+T-1 through `cache` -> last-position logits (V,) fp32."""
        pos = torch.arange(start, start + ids.shape[1], device=self.device)[None]  # (1, T)
        out = self.model(input_ids=ids, position_ids=pos, cache=cache, use_cache=True, **self._extra)
        return out.logits[0, -1].float()  # (V,)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Run a whole prompt through slot `slot` (replacing what it held) -> last-position logits (V,)."""
        ids = prompt_tensor(ids, self.device, self.max_seq_len)  # (1, T)
        T = ids.shape[1]
        logits = self._forward(self.cache.fresh(slot), ids, 0)
        self.cache.lengths[slot] = T
        return logits

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, n_rows: int, active: list[bool] | None = None) -> torch.Tensor:
        """One new token for each active slot among 0..n_rows-1: tokens (n_rows,) -> logits (n_rows, V).

        Rows that are not `active` are left alone (their logits are zeros nobody reads)."""
        active = active if active is not None else [True] * n_rows
        lengths = self.cache.lengths
        logits = torch.zeros(n_rows, self.vocab_size, device=self.device)  # (n_rows, V) fp32
        tokens = tokens.view(n_rows)
        for s in range(n_rows):
            if not active[s]:
                continue
            if self.cache.caches[s] is None:
                raise KrllmError(f"slot {s} holds no sequence: prefill it before decoding")
            if lengths[s] >= self.max_seq_len:
                raise KrllmError(f"slot {s} is full ({self.max_seq_len} tokens): finish it before decoding")
            logits[s] = self._forward(self.cache.caches[s], tokens[s:s + 1].view(1, 1), lengths[s])
            lengths[s] += 1
        return logits

    def free(self, slot: int) -> None:
        self.cache.free(slot)
