"""How tokenized examples become batches: padded (length-grouped or random) or packed rows. Shared by
the TRL/PEFT methods (sft; classify uses the sampler and TokenCounter with its own label collator).

Why several strategies, chosen per device (`train.batching: auto`):
- CPU / MPS: `length_grouped` — examples of similar length share a batch (`LengthGroupedSampler`),
  so padding is ~1% and each example's attention is exactly its own T². Measured fastest here
  (benchmarks/sft_throughput.py).
- `packed`: several examples share a row of <= max_length tokens; position ids restart at 0 for
  each example, and transformers turns those restarts into a block-diagonal causal mask, so
  examples never attend to each other. Useful when fixed row counts matter; on CPU the masked
  attention still costs (row length)², which is why it is not the CPU default.
- CUDA with flash-attn: `padding_free` — TRL's best-fit-decreasing packing with varlen kernels.

Collators count real and padded tokens (`TokenCounter`) so the trainer can log real tokens/s.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch

from krllm.data.tokens.chat_tokens import IGNORE


def resolve_batching(requested: str, device: torch.device) -> str:
    """`auto` -> the measured best for this device; explicit choices are checked for feasibility."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "padding_free" if device.type == "cuda" and has_flash else "length_grouped"
    if requested == "padding_free" and not (device.type == "cuda" and has_flash):
        from krllm.errors import KrllmError

        raise KrllmError("train.batching=padding_free needs a CUDA device with flash-attn installed (without "
                         "varlen kernels the flattened batch attends densely and runs 2.5-3x slower); use "
                         "length_grouped or packed")
    return requested


@dataclass
class TokenCounter:
    """Running totals filled by the collators; read (and reset) by the metrics callback.

    The Trainer uses one collator for training and evaluation: the trainer sets `paused` while it
    evaluates, so evaluation batches are not counted as training throughput.
    """

    real: int = 0  # tokens of examples
    slots: int = 0  # positions computed, padding included
    examples: int = 0
    paused: bool = False

    def add(self, real: int, slots: int, examples: int) -> None:
        if not self.paused:
            self.real += real
            self.slots += slots
            self.examples += examples

    def take(self) -> tuple[int, int, int]:
        out = (self.real, self.slots, self.examples)
        self.real = self.slots = self.examples = 0
        return out


def _pad(seqs: list[list[int]], value: int, width: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class PadCollator:
    """Right-pad a batch to its longest example (rounded up to `pad_to_multiple_of`).

    -> input_ids (B, T), attention_mask (B, T) 1 = real token, labels (B, T) with -100 on padding.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    counter: TokenCounter = field(default_factory=TokenCounter)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        ids = [e["input_ids"] for e in examples]
        width = max(len(s) for s in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        self.counter.add(sum(len(s) for s in ids), width * len(ids), len(ids))
        return {
            "input_ids": _pad(ids, self.pad_token_id, width),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, width),
            "labels": _pad([e["labels"] for e in examples], IGNORE, width),
        }


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Indices such that each run of `batch_size` consecutive ones has similar lengths (little padding).

    Per epoch: shuffle, cut into mega-batches of `group * batch_size`, sort each by length, cut into
    batches, shuffle the batch order (the longest batch first, so an out-of-memory shows at step 1).
    Why not transformers' LengthGroupedSampler: it caps mega-batches at a quarter of the data, which on
    small fine-tuning sets (a few hundred examples) leaves ~8% padding where this leaves ~1%.
    Deterministic in (seed, epoch), so a resumed run replays the same order.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group: int = 64):
        self.lengths, self.batch_size, self.seed, self.group = list(lengths), batch_size, seed, group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        mega = self.group * self.batch_size
        batches = []
        for m in range(0, len(order), mega):
            chunk = sorted(order[m: m + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[b: b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        batches = [batches[i] for i in perm]
        longest = max(range(len(batches)), key=lambda b: max(self.lengths[i] for i in batches[b]), default=0)
        if batches:
            batches[0], batches[longest] = batches[longest], batches[0]
        return iter([i for b in batches for i in b])


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing: indices of `lengths` grouped into rows whose total is <= capacity."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example of {n} tokens does not fit a row of {capacity}")
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(capacity - n)
    return rows


@dataclass
class PackedCollator:
    """Pack a batch's examples into rows of <= max_length tokens, documents kept apart.

    -> input_ids (R, T), position_ids (R, T) restarting at 0 per example (padding continues as its
    own pseudo-document), labels (R, T) with -100 on padding and on each example's first token (so no
    example is predicted from the previous one). No attention_mask: transformers derives the
    block-diagonal causal mask from the position restarts.
    """

    pad_token_id: int
    max_length: int
    counter: TokenCounter = field(default_factory=TokenCounter)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        rows = pack_rows(lengths, self.max_length)
        width = max(sum(lengths[i] for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            t = 0
            for i in row:
                n = lengths[i]
                ids[r, t : t + n] = torch.as_tensor(examples[i]["input_ids"])
                labels[r, t : t + n] = torch.as_tensor(examples[i]["labels"])
                labels[r, t] = IGNORE
                pos[r, t : t + n] = torch.arange(n)
                t += n
            pos[r, t:] = torch.arange(width - t)
        self.counter.add(sum(lengths), ids.numel(), len(examples))
        return {"input_ids": ids, "position_ids": pos, "labels": labels}


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) position ids that restart per document -> (B, 1, T, T) bool, True = may attend.

    The reference for what PackedCollator asks of the model: causal within a document, nothing across.
    """
    first = torch.ones_like(position_ids, dtype=torch.bool)
    first[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    doc = first.long().cumsum(-1)  # (B, T) document index of each token
    t = torch.arange(position_ids.shape[1], device=position_ids.device)
    causal = t[None, :, None] >= t[None, None, :]  # (1, T, T)
    same = doc[:, :, None] == doc[:, None, :]  # (B, T, T)
    return (causal & same)[:, None]


@torch.no_grad()
def check_packing_isolation(model, vocab_size: int, atol: float = 1e-4) -> float:
    """Run two documents packed in one row and the second one alone; return the max logit difference.

    Raises KrllmError if the second document's logits change when the first precedes it, i.e. if this
    model family does not turn position restarts into a block-diagonal mask (then use length_grouped).
    """
    from krllm.errors import KrllmError

    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    a = torch.randint(4, vocab_size, (1, 7), generator=g)
    b = torch.randint(4, vocab_size, (1, 5), generator=g)
    ids = torch.cat([a, b], 1).to(device)
    pos = torch.cat([torch.arange(7), torch.arange(5)])[None].to(device)
    was_training = model.training
    model.eval()
    try:
        packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits[0, 7:].float()
        alone = model(input_ids=b.to(device), use_cache=False).logits[0].float()
    finally:
        model.train(was_training)
    diff = (packed - alone).abs().max().item()
    if diff > atol:
        raise KrllmError(f"packed documents attend to each other in this model (max logit change {diff:.3g}); "
                         "use train.batching: length_grouped")
    return diff
