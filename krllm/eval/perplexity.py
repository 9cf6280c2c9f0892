"""Perplexity: mean next-token negative log-likelihood, on token shards and on chat conversations.

Token-weighted (total NLL / total predicted tokens), so a short last window counts for what it is.
Windows of `seq_len + 1` tokens are cut back to back from the start of the split; no window reuses
a token as a target, so every target is scored once.

Chat loss (`labeled_loss`) scores only labeled tokens; eval labels conversations with
`krllm.data.tokens.chat_tokens.tokenize_chat`, i.e. exactly the tokens SFT learns (assistant turns and their
end-of-turn token), so "fine-tuned below base" means the tuning taught what it was meant to teach.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from krllm.errors import KrllmError


def _window(tokens, start: int, length: int) -> np.ndarray:
    if hasattr(tokens, "slice"):  # krllm.data.tokens.shards.TokenShards
        return np.asarray(tokens.slice(start, length), dtype=np.int64)
    return np.asarray(tokens[start:start + length], dtype=np.int64)


@torch.no_grad()
def nll_sum(model, input_ids: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Sum of NLL over targets != -100 and how many there were. input_ids, targets (B, T)."""
    out = model(input_ids)  # krllm's Llama: (logits, loss); a transformers model: an output with .logits
    logits = out[0] if isinstance(out, tuple) else out.logits  # (B, T, V)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    return float(loss), int((targets != -100).sum())


@torch.no_grad()
def token_perplexity(model, tokens, seq_len: int = 256, max_tokens: int | None = None,
                     batch_size: int = 8, device: str | torch.device = "cpu") -> dict:
    """Perplexity of `model` on a 1-D token sequence (np array, list, or TokenShards).

    Returns {"loss": mean NLL (nats/token), "ppl": exp(loss), "tokens": targets scored, "windows"}.
    """
    n = len(tokens)
    if max_tokens is not None:
        n = min(n, max_tokens + 1)
    if n < 2:
        raise KrllmError(f"need at least 2 tokens to measure perplexity, got {n}")
    starts = list(range(0, n - 1, seq_len))  # window i predicts tokens start+1 .. start+seq_len
    total, count = 0.0, 0
    for b in range(0, len(starts), batch_size):
        rows = []
        for s in starts[b:b + batch_size]:
            w = _window(tokens, s, min(seq_len + 1, n - s))  # (<= seq_len + 1,)
            rows.append(w)
        width = max(len(r) for r in rows) - 1
        inp = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T); pad id is never a target
        tgt = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            inp[i, :len(r) - 1] = torch.from_numpy(r[:-1])
            tgt[i, :len(r) - 1] = torch.from_numpy(r[1:])
        s, c = nll_sum(model, inp.to(device), tgt.to(device))
        total, count = total + s, count + c
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": count, "windows": len(starts)}


@torch.no_grad()
def labeled_loss(model, examples: Sequence[tuple[list[int], list[int]]], pad_id: int = 0, batch_size: int = 8,
                 device: str | torch.device = "cpu") -> dict:
    """Mean NLL over the labeled tokens of (ids, labels) pairs, labels aligned with ids (-100 = not scored).

    Label i is the token at position i, so it is predicted from positions < i (shifted here).
    """
    if not examples:
        raise KrllmError("no examples to score")
    total, count = 0.0, 0
    for b in range(0, len(examples), batch_size):
        chunk = examples[b:b + batch_size]
        width = max(len(ids) for ids, _ in chunk) - 1
        inp = torch.full((len(chunk), width), pad_id, dtype=torch.long)  # (B, T) right-padded
        tgt = torch.full((len(chunk), width), -100, dtype=torch.long)  # (B, T)
        for i, (ids, labels) in enumerate(chunk):
            inp[i, :len(ids) - 1] = torch.tensor(ids[:-1])
            tgt[i, :len(labels) - 1] = torch.tensor(labels[1:])
        # right padding under a causal mask: real tokens never attend to the pads after them
        s, c = nll_sum(model, inp.to(device), tgt.to(device))
        total, count = total + s, count + c
    if count == 0:
        raise KrllmError("the examples have no labeled tokens to score")
    loss = total / count
    return {"loss": loss, "ppl": math.exp(min(loss, 80.0)), "tokens": count, "examples": len(examples)}
