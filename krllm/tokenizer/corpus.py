"""Text sources for tokenizer training and comparison: files, directories, globs and built-ins.

A source spec is one of
    builtin:ko-law                 konlpy's law and bill texts (krllm.data.builtin)
    builtin:npc | builtin:math[:ko|en|mixed] | builtin:sentiment
                                   generated sets (krllm.data.generated), rendered as plain text
    path/to/file.txt[.gz]          plain text; streamed in blocks of lines (~1 MB), never whole
    path/to/file.jsonl[.gz]        one JSON object per line; `text_field` holds a string, or a list
                                   of {"role", "content"} messages (rendered as ChatML text)
    path/to/file.parquet           the `text_field` column
    path/to/dir, path/*.txt        every .txt/.jsonl/.parquet file below, sorted

Malformed input raises DataError naming file:line (bad JSON, missing field, undecodable bytes).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from krllm.data.jsonl import decode_line, iter_jsonl, open_binary
from krllm.errors import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
BLOCK_CHARS = 1 << 20  # plain-text files are yielded in blocks of whole lines of about this size


@dataclass
class SourceStats:
    """What one source contributed (written into the training summary)."""

    spec: str
    documents: int = 0
    chars: int = 0
    bytes: int = 0
    files: list[dict] = field(default_factory=list)  # [{"path", "sha256"}] for file sources


def _suffixes(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def expand_files(spec: str) -> list[Path]:
    """A path, directory or glob -> the sorted list of readable files it names."""
    p = Path(spec)
    if any(c in spec for c in "*?["):
        paths = [Path(x) for x in sorted(glob.glob(spec, recursive=True))]
    elif p.is_dir():
        paths = sorted(x for x in p.rglob("*") if x.is_file() and not x.name.startswith("."))
    elif p.is_file():
        return [p]
    else:
        raise DataError(f"{spec}: no such file or directory")
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    files = [x for x in paths if x.is_file() and _suffixes(x).endswith(known)]
    if not files:
        raise DataError(f"{spec}: no .txt/.jsonl/.parquet files found")
    return files


def _read_text_file(path: Path) -> Iterator[str]:
    block: list[str] = []
    size = 0
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            line = decode_line(raw, path, lineno)
            block.append(line)
            size += len(line)
            if size >= BLOCK_CHARS:
                yield "".join(block)
                block, size = [], 0
    if block:
        yield "".join(block)


def record_text(value, where: str, text_field: str) -> str:
    """The training text of one JSON value: a string, or ChatML-rendered messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        from krllm.tokenizer.chat_template import render_chatml

        return render_chatml(value)
    raise DataError(f"{where}: field {text_field!r} must be a string or a list of "
                    f"{{role, content}} messages, got {type(value).__name__}")


def _read_jsonl_file(path: Path, text_field: str) -> Iterator[str]:
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if text_field not in record:
            raise DataError(f"{where}: missing field {text_field!r} (has: {', '.join(record) or 'nothing'}); "
                            f"set text_field to the key that holds the text")
        yield record_text(record[text_field], where, text_field)


def _read_parquet_file(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(pf.schema_arrow.names)})")
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is not None:
                yield record_text(value, f"{path}:row {row}", text_field)


def read_file_texts(path: Path, text_field: str = "text") -> Iterator[str]:
    kind = _suffixes(path)
    if kind.endswith(JSONL_SUFFIXES):
        yield from _read_jsonl_file(path, text_field)
    elif kind.endswith(PARQUET_SUFFIXES):
        yield from _read_parquet_file(path, text_field)
    else:
        yield from _read_text_file(path)


def iter_source(spec: str, text_field: str = "text", n: int | None = None, seed: int = 0,
                stats: SourceStats | None = None, on_file: Callable[[Path], None] | None = None) -> Iterator[str]:
    """Yield the non-empty texts of one source, counting them into `stats`."""
    from krllm.data.builtin import builtin_documents, is_builtin
    from krllm.data.generated import generated_documents, is_generated

    stats = stats if stats is not None else SourceStats(spec)

    def counted(texts: Iterator[str]) -> Iterator[str]:
        for text in texts:
            if not text:
                continue
            stats.documents += 1
            stats.chars += len(text)
            stats.bytes += len(text.encode("utf-8"))
            yield text

    if is_generated(spec):
        yield from counted(text for _, text in generated_documents(spec, n=n, seed=seed))
    elif is_builtin(spec):
        try:
            docs = list(builtin_documents(spec))
        except ValueError as e:
            raise DataError(f"{e}, builtin:npc, builtin:math[:ko|en|mixed], builtin:sentiment") from None
        yield from counted(text for _, text in docs)
    else:
        from krllm.runs import hash_file

        for path in expand_files(spec):
            if on_file:
                on_file(path)
            stats.files.append({"path": str(path), "sha256": hash_file(path)})
            yield from counted(read_file_texts(path, text_field))


def source_size_hint(spec: str, n: int | None = None) -> tuple[int | None, str]:
    """(total, unit) for a progress bar: bytes of files, or records of a generated set."""
    from krllm.data.builtin import builtin_files, is_builtin
    from krllm.data.generated import default_size, is_generated

    if is_generated(spec):
        return (n if n is not None else default_size(spec)), "docs"
    try:
        files = builtin_files(spec) if is_builtin(spec) else expand_files(spec)
    except (ValueError, DataError, FileNotFoundError):
        return None, "bytes"
    if any(f.name.lower().endswith(".gz") for f in files):
        return None, "bytes"  # compressed size says nothing about the text size
    return sum(f.stat().st_size for f in files), "bytes"
