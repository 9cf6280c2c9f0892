"""The one JSON Lines reader: plain or gzip files, errors that name file:line.

    for lineno, obj in iter_jsonl("data/sft.jsonl.gz"):   # (1-based line number, parsed value)
        ...

Blank lines are skipped; a line that is not UTF-8 or not JSON raises `DataError`
(`data/sft.jsonl:17: invalid JSON: Expecting ',' delimiter (column 42)`). What a record must
contain is the caller's business (`krllm.data.records` for fine-tuning sets,
`krllm.tokenizer.corpus` for tokenizer text). The `krllm data prepare` readers stream their own
way (orjson, skip-and-count of bad records) but word their errors the same.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from krllm.errors import DataError


def open_binary(path: str | Path) -> BinaryIO:
    """Open for reading bytes, decompressing `.gz` files."""
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def decode_line(raw: bytes, path: str | Path, lineno: int) -> str:
    """A line's text; undecodable bytes raise DataError naming file:line and the byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start} of the line)") from None


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line of a .jsonl or .jsonl.gz file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_line(raw, path, lineno)
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
