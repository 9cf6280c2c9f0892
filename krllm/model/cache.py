"""Every KV cache `Llama.forward` reads and writes, in one place.

- `KVCache`: one contiguous sequence per batch row, all rows at the same position (a padded batch):
  pretraining samples (krllm.train.samples), tests, anything that decodes a fixed batch together.
- `SlotKVCache`: one row ("slot") per request, each at its own length, for continuous batching
  (krllm.infer.runner). A forward does not take the slot cache itself but a `SlotBatch` from
  `cache.prefill(...)` / `cache.decode(...)`, which says, for each batch row, which slot it writes
  and at which position.

Both speak the same small protocol, which is all `Llama.forward` knows about caches:
    start, position_ids, mask = cache.begin(T, position_ids, attn_mask, device)
    k_all, v_all = cache.update(layer_idx, k, v)   # k, v (B, H_kv, T, D) -> (B, H_kv, S, D) views
    cache.advance(T)
`start` is the first position when all rows share it (RoPE tables are then sliced, no gather);
`mask` is None when plain causal attention is right (SDPA's `is_causal`, or one query seeing every
key), else bool (B|1, 1, T, S), True = may attend.

Shapes: L layers, B batch rows, T new tokens, S keys read, H_kv kv heads, D head_dim, N slots.
"""

from __future__ import annotations

import torch


def causal_mask(T: int, start: int, attn_mask: torch.Tensor | None, device) -> torch.Tensor | None:
    """Bool (B|1, 1, T, S), S = start + T: query i (absolute position start+i) sees keys j <= start+i,
    ANDed with `attn_mask` (broadcastable to (B, 1, T, S), e.g. a padding mask (B, 1, 1, S)).

    The key at the query's own position is always allowed, so a fully padded row still attends to
    itself: its output is garbage but finite (an all-False row makes SDPA return NaN, which would
    leak into every later position through the values). None when no mask is needed (one new token
    without `attn_mask` sees every cached key).
    """
    S = start + T
    if attn_mask is None and T == 1:
        return None
    q_pos = torch.arange(start, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    causal = k_pos <= q_pos  # (T, S)
    if attn_mask is None:
        return causal[None, None]
    return (causal & attn_mask.to(torch.bool)) | (k_pos == q_pos)  # (B|1, 1, T, S)


class KVCache:
    """Static per-layer key/value buffers (L x (B, H_kv, S_max, D)), preallocated once.

    `Llama.forward(..., cache=c)` calls `update(i, k, v)` for each layer (writes T entries at `pos`,
    returns views of everything up to pos + T) and then `advance(T)`. `reset()` starts over
    (buffers are reused, not cleared: entries beyond `pos` are never read).
    """

    def __init__(self, cfg, batch_size: int, max_seq_len: int,
                 device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        shape = (cfg.num_hidden_layers, batch_size, cfg.kv_heads, max_seq_len, cfg.dim_per_head)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, H_kv, S_max, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_seq_len = max_seq_len
        self.pos = 0

    def begin(self, T: int, position_ids, attn_mask, device):
        """-> (start, position_ids, mask) for T new tokens after the `pos` cached ones."""
        start = self.pos
        mask = causal_mask(T, start, attn_mask, device) if (attn_mask is not None or start > 0) else None
        return start, position_ids, mask

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H_kv, T, D) -> all keys/values so far (B, H_kv, pos + T, D) (views, no copy)."""
        end = self.pos + k.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache is full: {self.pos} cached + {k.shape[2]} new tokens > "
                             f"max_seq_len={self.max_seq_len} (make a larger cache)")
        self.k[layer_idx, :, :, self.pos:end] = k
        self.v[layer_idx, :, :, self.pos:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0


class SlotKVCache:
    """Static keys/values for `n_slots` independent sequences; `lengths[s]` = tokens cached in slot s.

    One extra row (index n_slots) is scratch space: idle rows of a decode step write there, so they
    never clobber a slot that was just prefilled and joins at the next step. The cache's dtype may
    differ from the model's (the runner keeps it fp32 on CPU); attention then runs in the cache's.
    """

    def __init__(self, n_layers: int, n_slots: int, n_kv: int, max_seq_len: int, head_dim: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (n_layers, n_slots + 1, n_kv, max_seq_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, N + 1, H_kv, S_max, D)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_seq_len = max_seq_len
        self.lengths = [0] * n_slots
        self._arange = torch.arange(max_seq_len, device=device)  # (S_max,)
        self.k_layers, self.v_layers = self.k.unbind(0), self.v.unbind(0)  # per-layer views (N + 1, H_kv, S_max, D)

    @classmethod
    def for_model(cls, cfg, n_slots: int, max_seq_len: int, device, dtype) -> "SlotKVCache":
        return cls(cfg.num_hidden_layers, n_slots, cfg.kv_heads, max_seq_len, cfg.dim_per_head, device, dtype)

    @property
    def n_slots(self) -> int:
        return len(self.lengths)

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def free(self, slot: int) -> None:
        self.lengths[slot] = 0

    def prefill(self, slot: int, start: int, T: int) -> "SlotBatch":
        """One batch row: T tokens of `slot` at positions start..start+T (a prompt, or a chunk of one
        after `start` cached tokens); afterwards the slot holds start + T tokens."""
        if start + T > self.max_seq_len:
            raise ValueError(f"slot {slot}: {start} cached + {T} new tokens > max_seq_len={self.max_seq_len}")
        return SlotBatch(self, row0=slot, n_rows=1, start=start)

    def decode(self, n_rows: int, active: list[bool] | None = None) -> "SlotBatch":
        """Batch row s = slot s (s < n_rows), one token each at the slot's own length. Rows that are not
        `active` (free, or just prefilled and joining next step) write to the scratch row, stay where
        they are, and their outputs are garbage nobody reads."""
        active = active if active is not None else [True] * n_rows
        pos = [self.lengths[s] if active[s] else 0 for s in range(n_rows)]
        for s in range(n_rows):
            if active[s] and pos[s] >= self.max_seq_len:
                raise ValueError(f"slot {s} is full ({self.max_seq_len} tokens)")
        if all(active) and all(p == pos[0] for p in pos):  # e.g. batch 1: views only, no mask
            return SlotBatch(self, row0=0, n_rows=n_rows, start=pos[0])
        return SlotBatch(self, row0=0, n_rows=n_rows, positions=pos, active=active)


class SlotBatch:
    """One forward's view of a SlotKVCache: where each of its B rows writes and what it reads.

    Block form (`start`): rows are slots row0..row0+B, all at positions start..start+T (a prefill,
    or a decode step whose rows share a position): writes and reads are slices, the mask is plain
    causal. Scattered form (`positions`, decode only, T = 1): row b writes slot b (scratch when idle)
    at positions[b] and reads slot b's first positions[b] + 1 keys, through a (B, 1, 1, S) mask.
    """

    def __init__(self, cache: SlotKVCache, row0: int, n_rows: int, start: int | None = None,
                 positions: list[int] | None = None, active: list[bool] | None = None):
        self.cache, self.row0, self.n_rows, self.start = cache, row0, n_rows, start
        self.positions, self.active = positions, active
        if positions is not None:
            device = cache.k.device
            self._pos = torch.tensor(positions, device=device)  # (B,)
            scratch = cache.n_slots
            self._rows = torch.tensor([row0 + b if active[b] else scratch for b in range(n_rows)], device=device)
            self._S = max(positions) + 1

    def begin(self, T: int, position_ids, attn_mask, device):
        if position_ids is not None or attn_mask is not None:
            raise ValueError("a SlotBatch sets positions and masks itself: pass neither position_ids nor attn_mask")
        if self.positions is None:
            mask = causal_mask(T, self.start, None, device) if self.start > 0 else None
            self._S = self.start + T
            return self.start, None, mask
        if T != 1:
            raise ValueError(f"a decode SlotBatch takes one token per row, got {T}")
        mask = (self.cache._arange[:self._S][None, :] <= self._pos[:, None])[:, None, None, :]  # (B, 1, 1, S)
        return 0, self._pos[:, None], mask  # position_ids (B, 1)

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v (B, H_kv, T, D) -> keys/values each row reads (B, H_kv, S, D), views of the cache."""
        kc, vc = self.cache.k_layers[layer_idx], self.cache.v_layers[layer_idx]  # (N + 1, H_kv, S_max, D)
        r0, r1 = self.row0, self.row0 + self.n_rows
        if self.positions is None:
            kc[r0:r1, :, self.start:self._S] = k
            vc[r0:r1, :, self.start:self._S] = v
        else:
            kc[self._rows, :, self._pos] = k[:, :, 0].to(kc.dtype)  # index_put does not cast
            vc[self._rows, :, self._pos] = v[:, :, 0].to(vc.dtype)
        return kc[r0:r1, :, :self._S], vc[r0:r1, :, :self._S]

    def advance(self, T: int) -> None:
        lengths = self.cache.lengths
        if self.positions is None:
            for s in range(self.row0, self.row0 + self.n_rows):
                lengths[s] = self.start + T
        else:
            for b in range(self.n_rows):
                if self.active[b]:
                    lengths[self.row0 + b] += 1
