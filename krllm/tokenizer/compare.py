"""Compare tokenizers on one corpus: how many tokens each needs, and whether it round-trips.

    krllm tokenizer compare runs/tok_ko runs/tok_plain --corpus builtin:ko-law --json cmp.json

Any directory `AutoTokenizer.from_pretrained` loads works (ours, Llama, Qwen, EXAONE...).
Definitions (over the whole corpus, special tokens never added):
    tokens/char     total tokens / total Unicode characters (code points)     lower = denser
    tokens/eojeol   total tokens / total eojeol (어절: runs split by whitespace, `str.split()`)
    bytes/token     total UTF-8 bytes / total tokens                           higher = denser
    round trip      documents with decode(encode(doc)) == doc exactly (no normalization allowed)
    vocab           len(tokenizer), added tokens included
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

ENCODE_BATCH = 256  # documents per batch-encode call


@dataclass
class TokenizerStats:
    name: str
    path: str
    vocab_size: int
    documents: int
    chars: int
    bytes: int
    eojeol: int
    tokens: int
    roundtrip_ok: int

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / self.chars if self.chars else float("nan")

    @property
    def tokens_per_eojeol(self) -> float:
        return self.tokens / self.eojeol if self.eojeol else float("nan")

    @property
    def bytes_per_token(self) -> float:
        return self.bytes / self.tokens if self.tokens else float("nan")

    @property
    def roundtrip_exact(self) -> bool:
        return self.roundtrip_ok == self.documents

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(tokens_per_char=self.tokens_per_char, tokens_per_eojeol=self.tokens_per_eojeol,
                 bytes_per_token=self.bytes_per_token, roundtrip_exact=self.roundtrip_exact)
        return d


def load_tokenizer(path: str | Path):
    """AutoTokenizer from a local directory, with an error that says what is missing."""
    from transformers import AutoTokenizer

    from krllm.errors import KrllmError

    p = Path(path)
    if not p.is_dir():
        raise KrllmError(f"{path}: not a directory (expected a tokenizer directory with tokenizer.json)")
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise KrllmError(f"{path}: AutoTokenizer cannot load it ({e})") from None


def measure(tokenizer, texts: Sequence[str], name: str = "", path: str = "",
            on_batch: Callable[[int], None] | None = None) -> TokenizerStats:
    """Count tokens, characters, eojeol and exact round trips of `texts` under one tokenizer.

    `on_batch(n_documents)` is called after each batch (progress bars)."""
    tokenizer.model_max_length = sys.maxsize  # we only count; silence "sequence longer than" warnings
    chars = sum(len(t) for t in texts)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    eojeol = sum(len(t.split()) for t in texts)
    tokens = ok = 0
    for start in range(0, len(texts), ENCODE_BATCH):
        batch = list(texts[start:start + ENCODE_BATCH])
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for text, seq in zip(batch, ids):
            tokens += len(seq)
            back = tokenizer.decode(seq, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            ok += back == text
        if on_batch:
            on_batch(len(batch))
    return TokenizerStats(name=name, path=path, vocab_size=len(tokenizer), documents=len(texts), chars=chars,
                          bytes=nbytes, eojeol=eojeol, tokens=tokens, roundtrip_ok=ok)


def compare(dirs: Sequence[str | Path], texts: Sequence[str], names: Sequence[str] | None = None,
            progress: bool = False) -> list[TokenizerStats]:
    """Measure every tokenizer directory on the same texts (a rich progress bar when `progress`)."""
    names = list(names) if names else [Path(d).name or str(d) for d in dirs]
    if not progress:
        return [measure(load_tokenizer(d), texts, name=n, path=str(d)) for d, n in zip(dirs, names)]
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    out = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        for d, n in zip(dirs, names):
            task = bar.add_task(f"encode+decode with {n}", total=len(texts))
            out.append(measure(load_tokenizer(d), texts, name=n, path=str(d),
                               on_batch=lambda k, t=task: bar.advance(t, k)))
    return out


def render_table(stats: Sequence[TokenizerStats], corpus: str = ""):
    """A rich Table; the last column is each tokenizer's token count relative to the first one."""
    from rich.table import Table

    first = stats[0].tokens if stats else 0
    title = f"tokenizers on {corpus}" if corpus else "tokenizers"
    if stats:
        s = stats[0]
        title += f" ({s.documents} docs, {s.chars:,} chars, {s.eojeol:,} eojeol, {s.bytes:,} bytes)"
    table = Table(title=title)
    for col in ("tokenizer", "vocab", "tokens", "tokens/char", "tokens/eojeol", "bytes/token", "round trip", "vs 1st"):
        table.add_column(col, justify="left" if col == "tokenizer" else "right")
    for s in stats:
        rt = f"{s.roundtrip_ok}/{s.documents}" + ("" if s.roundtrip_exact else " LOSSY")
        table.add_row(s.name, f"{s.vocab_size:,}", f"{s.tokens:,}", f"{s.tokens_per_char:.3f}",
                      f"{s.tokens_per_eojeol:.3f}", f"{s.bytes_per_token:.3f}", rt,
                      f"{s.tokens / first:.3f}x" if first else "-")
    return table


def markdown_table(stats: Sequence[TokenizerStats]) -> str:
    """The same numbers as a Markdown table (for docs and reports)."""
    lines = ["| tokenizer | vocab | tokens | tokens/char | tokens/eojeol | bytes/token | round trip |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for s in stats:
        lines.append(f"| {s.name} | {s.vocab_size:,} | {s.tokens:,} | {s.tokens_per_char:.3f} | "
                     f"{s.tokens_per_eojeol:.3f} | {s.bytes_per_token:.3f} | {s.roundtrip_ok}/{s.documents} |")
    return "\n".join(lines)
