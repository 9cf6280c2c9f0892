"""The one source reader: text sources -> files -> records, for tokenizer training and `krllm data prepare`.

A source spec is one of
    builtin:ko-law                 konlpy's law and bill texts (krllm.data.sets.builtin)
    builtin:ko-help                LibreOffice's Korean help, one document per page (fetched once; help_corpus)
    builtin:npc | builtin:math[:ko|en|mixed] | builtin:sentiment
                                   generated sets (krllm.data.sets.generated; `iter_texts` only)
    path/to/file.txt[.gz]          plain text: one document per file, per paragraph, or per ~1 MB block
    path/to/file.jsonl[.gz]        one JSON object per line; `text_field` names the text
    path/to/file.parquet           the `text_field` column
    path/to/dir, path/*.jsonl      every .txt/.md/.jsonl/.json/.ndjson/.parquet file below, sorted

A source marked `optional: true` in a config is left out, with a warning, where it can't be had
(`without_unavailable`): a file that is not there, a built-in corpus whose one-time fetch fails
(no apt on macOS). The demo reads builtin:ko-help this way and still runs on konlpy's text alone.

Layers, each used by both callers:
- `without_unavailable(sources)` the config's sources less the optional ones that can't be had
- `expand_source(spec)`       spec -> [(path, display name)]
- `iter_values(path, format)` one file -> (line or row number, raw value): a txt document, a JSONL
                              record's `text_field` value, a parquet cell (maybe None)
- `iter_jsonl(path)`          (line number, parsed object) of a JSON Lines file (records.py reads
                              fine-tuning sets with it)
- `iter_texts(spec)`          a whole source as non-empty strings with SourceStats (the tokenizer)
The datatrove readers of `krllm data prepare` (krllm.data.prepare.readers) wrap `iter_values`.

Malformed input raises DataError naming file:line (bad JSON, missing field, undecodable bytes); a
caller that skips bad records instead passes `on_bad` (called with the same message).
"""

from __future__ import annotations

import glob
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from krllm.errors import DataError

FORMATS = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".json": "jsonl",
           ".ndjson": "jsonl", ".parquet": "parquet"}
TXT_MODES = ("file", "paragraph", "block")
BLOCK_CHARS = 1 << 20  # txt_mode "block": documents of whole lines, about this many characters
BOM = b"\xef\xbb\xbf"

OnBad = Callable[[str], None]
Progress = Callable[[float], None]


def _raise(message: str) -> None:
    raise DataError(message)


# ---------------------------------------------------------------- specs -> files

def detect_format(path: Path) -> str | None:
    """txt | jsonl | parquet from the extension (a trailing .gz is allowed), None when unknown."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return FORMATS.get(suffixes[-1]) if suffixes else None


def expand_source(spec: str, fmt: str = "auto") -> list[tuple[Path, str]]:
    """(path, display name) for every file behind one spec, sorted.

    A directory (hidden entries skipped) and a glob keep only files of a known format, unless the
    source names its format (`fmt` other than "auto"): then a glob keeps every file it matches."""
    from krllm.data.sets.builtin import builtin_files, is_builtin

    if is_builtin(spec):
        try:
            files = builtin_files(spec)
        except (ValueError, FileNotFoundError) as e:
            raise DataError(f"source {spec}: {e}") from None
        return [(p, f"{spec}/{p.parent.name}/{p.name}") for p in files]
    p = Path(spec).expanduser()
    if p.is_file():
        return [(p, spec)]
    if p.is_dir():
        found = sorted(q for q in p.rglob("*") if q.is_file() and not any(part.startswith(".") for part in q.parts[len(p.parts):]))
        found = [q for q in found if detect_format(q)]
        if not found:
            raise DataError(f"source {spec}: directory has no .txt/.jsonl/.parquet files")
        return [(q, str(q)) for q in found]
    matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
    if fmt == "auto":
        matches = [q for q in matches if detect_format(q)]
    if not matches:
        raise DataError(f"source {spec}: no such file, directory or glob match")
    return [(q, str(q)) for q in matches]


def without_unavailable(sources: list, warn: Callable[[str], None]) -> list:
    """`sources` (config entries with `.path`, `.optional`) less the optional ones that can't be had
    here, each skip told through `warn`. Checking a built-in corpus fetches it (once), so the
    readers after this never meet a failed fetch halfway through."""
    from krllm.data.sets.generated import is_generated

    kept = []
    for src in sources:
        if src.optional and not is_generated(src.path):
            try:
                expand_source(src.path, getattr(src, "format", "auto"))
            except DataError as e:
                warn(f"optional source {src.path} left out: {e}")
                continue
        kept.append(src)
    if not kept:
        raise DataError("no source can be read here: every one is optional and was left out (see above)")
    return kept


# ---------------------------------------------------------------- files -> values

def open_binary(path: str | Path) -> BinaryIO:
    """Open for reading bytes, decompressing `.gz` files."""
    return gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")


def _not_utf8(where: str, e: UnicodeDecodeError, start: int = 0) -> str:
    return f"{where}: not valid UTF-8 ({e.reason} at byte {e.start - start} of the line)"


def _iter_txt(path: Path, name: str, mode: str, on_bad: OnBad, progress: Progress | None) -> Iterator[tuple[int, str]]:
    """(first line number, text) per document: the whole file, a blank-line-separated paragraph or a block."""
    if mode not in TXT_MODES:
        raise ValueError(f"txt mode {mode!r}: use one of {', '.join(TXT_MODES)}")
    with open_binary(path) as fh:
        if mode == "file":
            data = fh.read()
            if progress:
                progress(len(data))
            data = data.removeprefix(BOM)
            try:
                yield 1, data.decode("utf-8")
            except UnicodeDecodeError as e:
                line_no, line_start = data.count(b"\n", 0, e.start) + 1, data.rfind(b"\n", 0, e.start) + 1
                on_bad(_not_utf8(f"{name}:{line_no}", e, line_start))
            return
        lines: list[str] = []
        start, size, bad = 0, 0, False
        for line_no, raw in enumerate(fh, 1):
            if progress:
                progress(len(raw))
            if line_no == 1:
                raw = raw.removeprefix(BOM)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                on_bad(_not_utf8(f"{name}:{line_no}", e))
                bad, line = True, "x"  # the whole paragraph / block is one record: drop it
            if mode == "block":
                if not lines:
                    start = line_no
                lines.append(line)
                size += len(line)
                if size >= BLOCK_CHARS:
                    if not bad:
                        yield start, "".join(lines)
                    lines, size, bad = [], 0, False
                continue
            if line.strip():  # paragraph mode: a blank line ends a document
                if not lines and not bad:
                    start = line_no
                lines.append(line)
                continue
            if lines and not bad:
                yield start, "".join(lines)
            lines, bad = [], False
        if lines and not bad:
            yield start, "".join(lines)


def iter_jsonl(path: str | Path, name: str | None = None, on_bad: OnBad = _raise,
               progress: Progress | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, parsed JSON) for each non-blank line of a .jsonl / .jsonl.gz file."""
    import orjson

    path = Path(path)
    name = name or str(path)
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    with open_binary(path) as fh:
        for line_no, raw in enumerate(fh, 1):
            if progress:
                progress(len(raw))
            if line_no == 1:
                raw = raw.removeprefix(BOM)
            if not raw.strip():
                continue
            try:
                yield line_no, orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as ue:
                    on_bad(_not_utf8(f"{name}:{line_no}", ue))
                    continue
                hint = ""
                if line_no == 1 and raw.lstrip().startswith(b"["):
                    hint = "; this looks like a JSON array: write one JSON object per line (JSON Lines)"
                on_bad(f"{name}:{line_no}: invalid JSON ({e}){hint}")


def _iter_jsonl_field(path: Path, name: str, key: str, on_bad: OnBad, progress: Progress | None):
    for line_no, record in iter_jsonl(path, name, on_bad, progress):
        if not isinstance(record, dict):
            on_bad(f"{name}:{line_no}: expected a JSON object, got {type(record).__name__}")
        elif key not in record:
            keys = ", ".join(sorted(record)[:10]) or "none"
            on_bad(f"{name}:{line_no}: missing field {key!r} (keys: {keys}); set text_field")
        else:
            yield line_no, record[key]


def _iter_parquet(path: Path, name: str, key: str, on_bad: OnBad, progress: Progress | None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    size = path.stat().st_size
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        on_bad(f"{name}: not a readable parquet file ({e})")
        if progress:
            progress(size)
        return
    with pf:
        names = pf.schema_arrow.names
        if key not in names:
            on_bad(f"{name}: no column {key!r} (columns: {', '.join(names)}); set text_field")
            if progress:
                progress(size)
            return
        n_rows = max(pf.metadata.num_rows, 1)
        row = 0
        for batch in pf.iter_batches(batch_size=1000, columns=[key]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield row, value
            if progress:
                progress(size * batch.num_rows / n_rows)


def iter_values(path: str | Path, fmt: str, *, name: str | None = None, text_field: str = "text",
                txt_mode: str = "paragraph", on_bad: OnBad = _raise,
                progress: Progress | None = None) -> Iterator[tuple[int, Any]]:
    """(line or row number, value) of one file: a txt document (str), a JSONL record's `text_field`
    value, or a parquet cell (any type, None for null): what the value must be is the caller's call.

    on_bad(message) is called for each malformed record (default: raise DataError); progress(n)
    receives bytes read."""
    path = Path(path)
    name = name or str(path)
    if fmt == "txt":
        return _iter_txt(path, name, txt_mode, on_bad, progress)
    if fmt == "jsonl":
        return _iter_jsonl_field(path, name, text_field, on_bad, progress)
    if fmt == "parquet":
        return _iter_parquet(path, name, text_field, on_bad, progress)
    raise DataError(f"{name}: unknown format {fmt!r} (txt, jsonl or parquet)")


# ---------------------------------------------------------------- a whole source as texts (tokenizer)

@dataclass
class SourceStats:
    """What one source contributed (written into the tokenizer's training summary)."""

    spec: str
    documents: int = 0
    chars: int = 0
    bytes: int = 0
    files: list[dict] = field(default_factory=list)  # [{"path", "sha256"}] for file sources


def _as_text(value: Any, where: str, text_field: str, render_messages: Callable[[list], str] | None) -> str | None:
    """A record's text: a string, ChatML-rendered messages (when the caller renders them), None for null."""
    if value is None or isinstance(value, str):
        return value
    if (render_messages is not None and isinstance(value, list)
            and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)):
        return render_messages(value)
    raise DataError(f"{where}: field {text_field!r} must be a string"
                    + (" or a list of {role, content} messages" if render_messages else "")
                    + f", got {type(value).__name__}")


def iter_texts(spec: str, text_field: str = "text", n: int | None = None, seed: int = 0,
               stats: SourceStats | None = None,
               render_messages: Callable[[list], str] | None = None) -> Iterator[str]:
    """Yield the non-empty texts of one source, counting them into `stats`.

    Plain-text files come in blocks of whole lines (~1 MB, never a whole large file at once); a file
    of unknown extension is read as text. `render_messages` turns a JSONL/parquet value that is a
    list of {role, content} messages into text (the tokenizer passes its ChatML renderer)."""
    from krllm.data.sets.builtin import builtin_documents, is_builtin
    from krllm.data.sets.generated import generated_documents, is_generated
    from krllm.runs import hash_file

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
        return
    if is_builtin(spec):  # whole files read as text (universal newlines: konlpy's files end lines in CRLF)
        try:
            docs = list(builtin_documents(spec))
        except (ValueError, FileNotFoundError) as e:
            raise DataError(f"source {spec}: {e}; generated sets: builtin:npc, builtin:math[:ko|en|mixed], "
                            "builtin:sentiment") from None
        yield from counted(text for _, text in docs)
        return
    for path, name in expand_source(spec):
        stats.files.append({"path": str(path), "sha256": hash_file(path)})
        fmt = detect_format(path) or "txt"
        values = iter_values(path, fmt, name=name, text_field=text_field, txt_mode="block")
        where = "row" if fmt == "parquet" else ""
        yield from counted(_as_text(v, f"{name}:{where}{' ' if where else ''}{no}", text_field, render_messages)
                           for no, v in values)


def source_size_hint(spec: str, n: int | None = None) -> tuple[int | None, str]:
    """(total, unit) for a progress bar: bytes of files, or records of a generated set."""
    from krllm.data.sets.generated import default_size, is_generated

    if is_generated(spec):
        return (n if n is not None else default_size(spec)), "docs"
    try:
        files = [p for p, _ in expand_source(spec)]
    except DataError:
        return None, "bytes"
    if any(f.name.lower().endswith(".gz") for f in files):
        return None, "bytes"  # compressed size says nothing about the text size
    return sum(f.stat().st_size for f in files), "bytes"
