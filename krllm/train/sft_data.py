"""Records -> token ids + labels for SFT, with the loss on assistant turns and a learned end-of-turn.

Why we tokenize ourselves instead of letting TRL do it: we need (a) the same assistant mask for any
chat template and (b) the end-of-turn token always learned — both in `krllm.data.tokens.chat_tokens`, which
eval uses too, so it scores exactly the tokens SFT learns; (c) lengths up front for length-grouped
batching; (d) counts to report (truncated, dropped).

    rows, stats = tokenize_records(records, tokenizer, max_length=1024, loss_on="assistant")
    rows[0] == {"input_ids": [...], "labels": [-100, ..., 1234, 3], "length": 57}
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from krllm.data.tokens.chat_tokens import IGNORE, tokenize_chat, tokenize_text
from krllm.errors import DataError


@dataclass
class TokenStats:
    examples: int = 0
    tokens: int = 0
    target_tokens: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    max_len: int = 0
    lengths_p50_p90: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def check_tokenizer(tokenizer, records: list[dict]) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("krllm sft needs a fast (Rust) tokenizer: a directory with tokenizer.json")
    if any("messages" in r for r in records) and not tokenizer.chat_template:
        raise DataError("the tokenizer has no chat template but the data is chat: set data.chat_template to a "
                        ".jinja file (krllm tokenizers ship ChatML)")


def tokenize_records(records: list[dict], tokenizer, max_length: int,
                     loss_on: str = "assistant") -> tuple[list[dict], TokenStats]:
    """Tokenize normalized SFT records; drop (and count) rows left without a learned token."""
    check_tokenizer(tokenizer, records)
    rows, stats = [], TokenStats()
    lengths = []
    for r in records:
        if "messages" in r:
            ids, labels = tokenize_chat(tokenizer, r["messages"], loss_on)
        else:
            ids, labels = tokenize_text(tokenizer, r["text"])
        if len(ids) > max_length:
            stats.truncated += 1
            ids, labels = ids[:max_length], labels[:max_length]
        n_target = sum(1 for x in labels[1:] if x != IGNORE)  # labels[0] is never predicted
        if n_target == 0:
            stats.dropped_no_target += 1
            continue
        rows.append({"input_ids": ids, "labels": labels, "length": len(ids)})
        stats.tokens += len(ids)
        stats.target_tokens += n_target
        lengths.append(len(ids))
    stats.examples = len(rows)
    if lengths:
        s = sorted(lengths)
        stats.max_len = s[-1]
        stats.lengths_p50_p90 = [s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.9))]]
    return rows, stats


def split_and_tokenize(cfg, tokenizer) -> tuple[list[dict], list[dict], list[dict], list[dict], object]:
    """An SFT config's data (both backends): records split into train / eval, then tokenized ->
    (train_records, eval_records, train_rows, eval_rows, stats of the train rows)."""
    from krllm.errors import KrllmError
    from krllm.train.hf.data import split_records

    train_records, eval_records = split_records(cfg.data, "sft")
    train_rows, stats = tokenize_records(train_records, tokenizer, cfg.data.max_length, cfg.data.loss_on)
    eval_rows, _ = tokenize_records(eval_records, tokenizer, cfg.data.max_length, cfg.data.loss_on)
    if not train_rows:
        raise KrllmError("no training example has a token to learn (all dropped); check data.loss_on / max_length")
    return train_records, eval_records, train_rows, eval_rows, stats
