"""Train a byte-level BPE tokenizer with HF `tokenizers` and save it as a transformers directory.

    krllm tokenizer train -c configs/tokenizer/ko_bpe.yaml --set vocab_size=8000 --out runs/tok_ko

    from krllm.tokenizer.train import train_tokenizer
    summary = train_tokenizer("runs/tok", texts=["안녕하세요 ...", ...], vocab_size=500)

The output directory (written atomically: built in a temp sibling, then renamed):
    tokenizer.json          normalizer + pre-tokenizer + BPE + decoder (krllm.tokenizer.pretokenize)
    tokenizer_config.json   special tokens, model_max_length, `chat_template` (for older loaders)
    chat_template.jinja     the ChatML template (what transformers 5 reads first; same text)
    config.yaml             the resolved training config
    summary.json            vocab size, corpus chars/bytes/documents per source, seconds, special ids
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel, to_plain, validate, write_resolved
from krllm.errors import DataError, KrllmError
from krllm.tokenizer.pretokenize import (
    LLAMA_CPP_PRE,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    Normalization,
    PreTokenizerKind,
    byte_level_bpe,
)

MIN_VOCAB = 256 + len(SPECIAL_TOKENS) + 1  # every byte, the special tokens and at least one merge


class SourceConfig(StrictModel):
    """One training source with its own options (a bare string is shorthand for `{path: ...}`)."""

    path: str = Field(description="file, directory, glob, or builtin:NAME")
    text_field: str | None = Field(None, description="JSONL/parquet key holding the text (default: top-level text_field)")
    n: int | None = Field(None, ge=1, description="records to generate (builtin generated sets only)")
    seed: int = Field(0, description="seed of a generated set")
    optional: bool = Field(False, description="true: leave this source out, with a warning, where it can't be had "
                                              "(a missing file, a built-in corpus whose fetch fails)")


class TokenizerTrainConfig(StrictModel):
    """`krllm tokenizer train` config (configs/tokenizer/*.yaml)."""

    sources: list[SourceConfig] = Field(
        default_factory=lambda: [SourceConfig(path="builtin:ko-law"), SourceConfig(path="builtin:npc"),
                                 SourceConfig(path="builtin:math:mixed")],
        min_length=1,
    )
    text_field: str = "text"
    vocab_size: int = Field(4096, description="total size including the 256 bytes and special tokens")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")
    normalization: Normalization = "nfc"
    pre_tokenizer: PreTokenizerKind = Field("korean", description="korean | gpt2 | qwen2 | llama3 (docs/tokenizer.md)")
    merge_unit: Literal["byte", "char"] = Field(
        "byte", description="byte: merges over UTF-8 bytes; char: over whole characters, stored as byte-level BPE")
    model_max_length: int = Field(4096, ge=1, description="longest sequence, in tokens, a model may take")
    out_dir: str = "runs/tokenizer"

    @field_validator("sources", mode="before")
    @classmethod
    def _shorthand(cls, v):
        if isinstance(v, list):
            return [{"path": s} if isinstance(s, str) else s for s in v]
        return v

    @field_validator("vocab_size")
    @classmethod
    def _vocab(cls, v: int) -> int:
        if v < MIN_VOCAB:
            raise ValueError(f"must be at least {MIN_VOCAB} (256 byte tokens + {len(SPECIAL_TOKENS)} special + 1)")
        return v

    @model_validator(mode="after")
    def _generated_only_n(self):
        from krllm.data.sets.generated import is_generated

        bad = [s.path for s in self.sources if s.n is not None and not is_generated(s.path)]
        if bad:
            raise ValueError(f"`n` only applies to generated sets (builtin:npc, builtin:math, ...), not {bad}")
        return self


def _training_texts(cfg: TokenizerTrainConfig, stats: list, progress) -> Iterator[str]:
    """Stream every source's texts in config order, advancing one progress bar per source."""
    from krllm.data.sources import SourceStats, iter_texts, source_size_hint, without_unavailable
    from krllm.tokenizer.chat_template import render_chatml

    for src in without_unavailable(cfg.sources, _warn):
        st = SourceStats(src.path)
        stats.append(st)
        total, unit = source_size_hint(src.path, src.n)
        task = progress.add_task(f"read {src.path}", total=total) if progress else None
        for text in iter_texts(src.path, src.text_field or cfg.text_field, n=src.n, seed=src.seed, stats=st,
                               render_messages=render_chatml):
            if progress:
                progress.update(task, advance=1 if unit == "docs" else len(text.encode("utf-8")))
            yield text
        if progress:
            progress.update(task, completed=total or 0, total=total or 0)


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False)


def save_hf_tokenizer(tok, out_dir: Path, model_max_length: int) -> None:
    """Write tokenizer.json + tokenizer_config.json + chat_template.jinja via transformers.

    tokenizer_config.json names `PreTrainedTokenizerFast` (known to transformers 4.x and 5.x, where
    it maps to the tokenizers backend) and also carries `chat_template` and
    `additional_special_tokens`, so loaders that predate chat_template.jinja still find them.
    """
    from transformers import PreTrainedTokenizerFast

    from krllm.config import atomic_write_text
    from krllm.tokenizer.chat_template import CHATML_TEMPLATE
    from krllm.tokenizer.pretokenize import ENDOFTEXT, IM_END, IM_START, PAD

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    hf.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    data = json.loads(cfg_path.read_text(encoding="utf-8"))
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data["additional_special_tokens"] = [IM_START, IM_END]
    # transformers 5 writes them as a list under `extra_special_tokens`, which 4.x reads as a dict
    # of named tokens and fails on; `additional_special_tokens` is understood by both.
    data.pop("extra_special_tokens", None)
    data["chat_template"] = CHATML_TEMPLATE
    data["add_bos_token"] = False
    data["add_eos_token"] = False
    atomic_write_text(cfg_path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _progress_bar():
    """(stderr console, rich Progress) with one bar per source: percent, elapsed, ETA."""
    from rich.console import Console
    from rich.progress import (BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = Console(stderr=True)
    return console, Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _given_texts(texts: Iterable[str], stats: list) -> Iterator[str]:
    """Texts passed from Python, counted like a source named `<texts>`."""
    from krllm.data.sources import SourceStats

    st = SourceStats("<texts>")
    stats.append(st)
    for t in texts:
        if not isinstance(t, str):
            raise DataError(f"texts[{st.documents}]: expected str, got {type(t).__name__}")
        if t:
            st.documents += 1
            st.chars += len(t)
            st.bytes += len(t.encode("utf-8"))
            yield t


MAX_RUN = 256  # characters: no word of real text is longer; a longer run is cut for training only
_LONG_RUN = re.compile(r"\S{%d,}" % (MAX_RUN + 1))


def split_long_runs(texts: Iterable[str], counter: dict) -> Iterator[str]:
    """Texts for the BPE trainer with every run of more than MAX_RUN non-space characters cut into MAX_RUN
    pieces (each its own text, so no merge spans a cut). Why: the trainer's cost grows with the square of
    one pre-tokenized word's length (a 50,000-syllable Hangul line took 6 s, 5M characters did not finish).
    Only the statistics change; encoding is untouched, so round trips stay exact. counter["runs"] counts cuts."""
    for text in texts:
        if _LONG_RUN.search(text) is None:
            yield text
            continue
        start = 0
        for m in _LONG_RUN.finditer(text):
            counter["runs"] = counter.get("runs", 0) + 1
            if m.start() > start:
                yield text[start:m.start()]
            for i in range(m.start(), m.end(), MAX_RUN):
                yield text[i:min(i + MAX_RUN, m.end())]
            start = m.end()
        if start < len(text):
            yield text[start:]


def _check_special_ids(tok) -> None:
    for token, want in SPECIAL_IDS.items():
        got = tok.token_to_id(token)
        if got != want:
            raise KrllmError(f"special token {token} got id {got}, expected {want} (docs/architecture.md)")


def train_tokenizer(out_dir: str | Path | None = None, cfg: TokenizerTrainConfig | None = None, *,
                    texts: Iterable[str] | None = None, progress: bool = True, **overrides) -> dict:
    """Train on `cfg.sources` (or on `texts` when given) and write an HF tokenizer directory.

    `overrides` set config fields directly (`vocab_size=500`, `sources=["a.txt"]`). Returns the
    summary that is also written to `summary.json`. The directory appears only when complete.
    """
    from tokenizers import pre_tokenizers, trainers

    from krllm.runs import atomic_dir, write_json

    data = to_plain(cfg) if cfg is not None else {}
    data.update(overrides)
    if texts is not None:  # the resolved config must not claim sources that were not read
        data["sources"] = [{"path": "<texts given in Python>"}]
    if out_dir is not None:
        data["out_dir"] = str(out_dir)
    cfg = validate(data, TokenizerTrainConfig, "tokenizer config")
    out = Path(cfg.out_dir)

    tok = byte_level_bpe(cfg.pre_tokenizer, cfg.normalization)  # untrained
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=progress,
    )
    stats: list = []
    t0 = time.time()
    console, bar = _progress_bar() if progress else (None, None)
    stream = _given_texts(texts, stats) if texts is not None else _training_texts(cfg, stats, bar)
    long_runs: dict = {}
    stream = split_long_runs(stream, long_runs)

    char_info: dict = {}

    def fit():
        nonlocal tok, char_info
        if cfg.merge_unit == "char":
            from krllm.tokenizer.char_merges import train_char_bpe

            tok, char_info = train_char_bpe(stream, vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                            special_tokens=list(SPECIAL_TOKENS), normalization=cfg.normalization,
                                            kind=cfg.pre_tokenizer, show_progress=progress)
        else:
            tok.train_from_iterator(stream, trainer=trainer)

    if bar:
        with bar:
            fit()
        console.print(f"learned {tok.get_vocab_size()} tokens in {time.time() - t0:.1f}s; writing {out}")
    else:
        fit()
    seconds = time.time() - t0

    corpus_chars = sum(s.chars for s in stats)
    if corpus_chars == 0:
        raise DataError("the training corpus is empty: " + ", ".join(s.spec for s in stats)
                        + " produced no text")
    _check_special_ids(tok)
    vocab = tok.get_vocab_size()
    summary = {
        "vocab_size": vocab,
        "requested_vocab_size": cfg.vocab_size,
        "merges": vocab - 256 - len(SPECIAL_TOKENS),
        "special_tokens": dict(SPECIAL_IDS),
        "normalization": cfg.normalization,
        "pre_tokenizer": cfg.pre_tokenizer,
        "merge_unit": cfg.merge_unit,
        # what a GGUF export writes as `tokenizer.ggml.pre` (null: llama.cpp cannot split like this tokenizer)
        "llama_cpp_pre": LLAMA_CPP_PRE[cfg.pre_tokenizer],
        **char_info,
        "corpus_documents": sum(s.documents for s in stats),
        "corpus_chars": corpus_chars,
        "corpus_bytes": sum(s.bytes for s in stats),
        "sources": [vars(s) for s in stats],
        "train_seconds": round(seconds, 3),
    }
    if long_runs:
        summary["long_runs_split"] = long_runs["runs"]
        message = (f"{long_runs['runs']} run(s) of more than {MAX_RUN} characters without a space were cut into "
                   f"{MAX_RUN}-character pieces for training (encoding is unchanged)")
        if console:
            console.print(f"[yellow]note:[/yellow] {message}")
    empty = [s.spec for s in stats if s.documents == 0]
    if empty:
        summary["empty_sources"] = empty
        if console:
            console.print(f"[yellow]warning:[/yellow] no text in {', '.join(empty)}")
    if vocab < cfg.vocab_size:
        summary["note"] = (f"the corpus supports only {vocab} tokens at min_frequency={cfg.min_frequency}; "
                           "add text or lower min_frequency to reach the requested size")
    with atomic_dir(out) as tmp:
        save_hf_tokenizer(tok, tmp, cfg.model_max_length)
        write_resolved(cfg, tmp / "config.yaml")
        write_json(tmp / "summary.json", summary)
    return summary
