"""Training batches: packed windows of `seq_len + 1` tokens from the token shards.

Why this shape: documents are already joined by `<|endoftext|>` in the shards, so a window is a
contiguous slice; inputs are its first `seq_len` tokens and targets the last `seq_len` (shifted by
one). Windows are visited in a shuffled order per epoch; each epoch also starts at a random
offset inside the first window so later epochs see different cuts of the same text.

Everything is a function of (seed, position): the whole state is `{"epoch", "index"}` — stored in
checkpoints — and every process computes the same global stream of windows. Under DDP each rank
takes its own slice of each global micro-batch, so a 2-process run with batch B sees exactly the
windows of a 1-process run with batch 2B (or with grad_accum 2).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from krllm.errors import DataError


class TokenSource(Protocol):
    """What batches need from a token store (krllm.data.tokens.shards.TokenShards satisfies it)."""

    def __len__(self) -> int: ...

    def slice(self, start: int, length: int) -> np.ndarray: ...


class ArrayTokens:
    """A TokenSource over an in-memory array (tests, benchmarks)."""

    def __init__(self, tokens):
        self.tokens = np.asarray(tokens, dtype=np.int64)
        self.vocab_size = int(self.tokens.max()) + 1 if len(self.tokens) else 0

    def __len__(self) -> int:
        return len(self.tokens)

    def slice(self, start: int, length: int) -> np.ndarray:
        return self.tokens[start:start + length]


class PackedWindows:
    """Deterministic shuffled stream of (seq_len+1)-token windows; `state()`/`load_state()` resume it."""

    def __init__(self, source: TokenSource, seq_len: int, seed: int, name: str = "train"):
        self.source, self.seq_len, self.seed, self.name = source, seq_len, seed, name
        if len(source) < seq_len + 1:
            raise DataError(f"{name} split has {len(source)} tokens; a training window needs "
                            f"seq_len+1 = {seq_len + 1} (lower data.seq_len or add data)")
        self.epoch, self.index = 0, 0
        self._order_epoch = -1
        self._starts = np.zeros(0, dtype=np.int64)

    def _epoch_starts(self, epoch: int) -> np.ndarray:
        """Window start offsets of `epoch`, in visiting order."""
        if epoch != self._order_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            n_tokens, T = len(self.source), self.seq_len
            offset = int(rng.integers(0, T)) if epoch > 0 and n_tokens - 1 >= 2 * T else 0
            n_windows = (n_tokens - 1 - offset) // T
            self._starts = offset + T * rng.permutation(n_windows).astype(np.int64)
            self._order_epoch = epoch
        return self._starts

    def next_starts(self, k: int) -> np.ndarray:
        """Start offsets of the next `k` windows of the global stream (advances the position)."""
        out = []
        while len(out) < k:
            starts = self._epoch_starts(self.epoch)
            take = starts[self.index:self.index + k - len(out)]
            out.extend(take.tolist())
            self.index += len(take)
            if self.index >= len(starts):
                self.epoch, self.index = self.epoch + 1, 0
        return np.asarray(out, dtype=np.int64)

    def load(self, starts: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return load_windows(self.source, starts, self.seq_len)

    def next_batch(self, global_batch: int, rank: int = 0, world: int = 1):
        """This rank's share of the next global micro-batch: (inputs, targets), each (B/world, T)."""
        starts = self.next_starts(global_batch)
        per = global_batch // world
        return self.load(starts[rank * per:(rank + 1) * per])

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "tokens": len(self.source)}

    def load_state(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed or state.get("tokens", len(self.source)) != len(self.source):
            raise DataError(f"checkpoint data position was saved for seed={state.get('seed')} over "
                            f"{state.get('tokens')} tokens, but this run has seed={self.seed} over "
                            f"{len(self.source)} {self.name} tokens: the data changed, resume would not be exact")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def load_windows(source: TokenSource, starts, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows at `starts` -> (inputs (B, T), targets (B, T)) int64 on CPU."""
    T = seq_len
    rows = np.stack([source.slice(int(s), T + 1) for s in starts]) if len(starts) else np.zeros((0, T + 1))
    rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))  # (B, T+1)
    return rows[:, :-1], rows[:, 1:]


def fixed_windows(source: TokenSource, seq_len: int, n: int) -> np.ndarray:
    """Start offsets of the first `n` aligned windows (the fixed validation subset)."""
    n_all = (len(source) - 1) // seq_len
    return seq_len * np.arange(min(n, n_all), dtype=np.int64)
