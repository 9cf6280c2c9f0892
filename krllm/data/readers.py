"""Input side of `krllm data prepare`: resolve sources to files, and the datatrove readers.

`resolve_sources` turns config sources (files, directories, globs, `builtin:NAME`) into a sorted
list of `InputFile`s with their format and sha256. `InputReader` is the first datatrove step:
each task reads its share of the files (spread by size, largest first) and yields one Document
per txt file / paragraph / JSONL line / parquet row. Malformed records raise `DataError` naming
file:line, or, with `skip_bad_records`, are skipped and counted (stat `bad_records`; the first
ones are listed in the task log and in manifest.json). `CleanReader` re-reads the
intermediate JSONL a stage-1 task wrote, by rank, so later stages see the same documents in the
same order (datatrove's dedupe filters address documents by (rank, index)).
"""

from __future__ import annotations

import glob
import gzip
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.utils.logging import logger

from krllm.data.builtin import builtin_files, is_builtin
from krllm.data.progress import ProgressCounter
from krllm.errors import DataError
from krllm.runs import hash_file

_EXT_FORMAT = {".txt": "txt", ".text": "txt", ".md": "txt", ".jsonl": "jsonl", ".json": "jsonl",
               ".ndjson": "jsonl", ".parquet": "parquet"}
MAX_BAD_EXAMPLES = 20  # per task, kept in stats-side files for the manifest


@dataclass(frozen=True)
class InputFile:
    path: str  # absolute path
    name: str  # how documents and errors refer to it (relative path or builtin:NAME/file)
    format: str  # txt | jsonl | parquet
    text_field: str
    txt_mode: str  # file | paragraph
    size: int
    sha256: str

    def to_dict(self) -> dict:
        return asdict(self)


def _detect_format(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return _EXT_FORMAT.get(suffixes[-1]) if suffixes else None


def _expand(spec: str) -> list[tuple[Path, str]]:
    """(path, display name) for every file behind one source spec."""
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
        found = [q for q in found if _detect_format(q)]
        if not found:
            raise DataError(f"source {spec}: directory has no .txt/.jsonl/.parquet files")
        return [(q, str(q)) for q in found]
    matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
    if not matches:
        raise DataError(f"source {spec}: no such file, directory or glob match")
    return [(q, str(q)) for q in matches]


def resolve_sources(cfg) -> list[InputFile]:
    """Config sources -> InputFiles (deduplicated by path, each with format and content hash).

    Files under `cfg.out_dir` are skipped: a source directory may contain the previous output."""
    files: dict[str, InputFile] = {}
    out_dir = Path(cfg.out_dir).resolve()
    for src in cfg.sources:
        for path, name in _expand(src.path):
            if out_dir in path.resolve().parents:
                continue
            fmt = src.format if src.format != "auto" else _detect_format(path)
            if fmt is None:
                raise DataError(f"{name}: can't tell the format from the extension; set `format:` "
                                "(txt, jsonl or parquet) on this source")
            key = str(path.resolve())
            if key in files:
                continue
            files[key] = InputFile(path=key, name=name, format=fmt, text_field=src.text_field or cfg.text_field,
                                   txt_mode=src.txt_mode or cfg.txt_mode, size=path.stat().st_size,
                                   sha256=hash_file(path))
    return sorted(files.values(), key=lambda f: f.name)


def assign_files(files: list[InputFile], world_size: int) -> list[list[InputFile]]:
    """Spread files over tasks by size (largest first onto the least loaded task); deterministic."""
    shards: list[list[InputFile]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for f in sorted(files, key=lambda f: (-f.size, f.name)):
        i = min(range(world_size), key=lambda k: (load[k], k))
        shards[i].append(f)
        load[i] += f.size
    return [sorted(s, key=lambda f: f.name) for s in shards]


def _open_binary(path: str):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _decode_error(name: str, line_no: int, e: UnicodeDecodeError) -> str:
    return f"{name}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start} of the line)"


class InputReader(BaseReader):
    """Reads this task's share of the input files into Documents (first step of stage 1)."""

    name = "krllm input reader"

    def __init__(self, files: list[dict], skip_bad_records: bool = False, progress_dir: str | None = None,
                 bad_records_dir: str | None = None):
        super().__init__()
        self.files = [InputFile(**f) for f in files]
        self.skip_bad_records = skip_bad_records
        self.progress_dir = progress_dir
        self.bad_records_dir = bad_records_dir

    # -- bad records ---------------------------------------------------------------------------
    def _bad(self, message: str) -> None:
        """Raise, or (skip_bad_records) count and remember where the bad record was."""
        if not self.skip_bad_records:
            raise DataError(message + " (set skip_bad_records: true to skip and count such records)")
        self.stat_update("bad_records")
        self._n_bad += 1
        if self._n_bad <= MAX_BAD_EXAMPLES:
            logger.info(f"skipped bad record: {message}")
            self._bad_examples.append(message)

    # -- formats -------------------------------------------------------------------------------
    def _read_txt(self, f: InputFile, progress: ProgressCounter) -> Iterator[tuple[int, str]]:
        with _open_binary(f.path) as fh:
            if f.txt_mode == "file":
                data = fh.read()
                progress.add(f.size)
                if data.startswith(b"\xef\xbb\xbf"):
                    data = data[3:]
                try:
                    yield 1, data.decode("utf-8")
                except UnicodeDecodeError as e:
                    line_no = data.count(b"\n", 0, e.start) + 1
                    line_start = data.rfind(b"\n", 0, e.start) + 1
                    self._bad(f"{f.name}:{line_no}: not valid UTF-8 ({e.reason} at byte {e.start - line_start} "
                              "of the line)")
                return
            # paragraph mode: stream lines, a blank line ends a document
            lines: list[str] = []
            start = 0
            bad = False
            line_no = 0
            for line_no, raw in enumerate(fh, 1):
                progress.add(len(raw))
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    self._bad(_decode_error(f.name, line_no, e))
                    bad = True  # the whole paragraph is one record: drop it
                    line = "x"
                if line.strip():
                    if not lines and not bad:
                        start = line_no
                    lines.append(line)
                    continue
                if lines and not bad:
                    yield start, "".join(lines)
                lines, bad = [], False
            if lines and not bad:
                yield start, "".join(lines)

    def _read_jsonl(self, f: InputFile, progress: ProgressCounter) -> Iterator[tuple[int, str]]:
        import orjson

        key = f.text_field
        with _open_binary(f.path) as fh:
            for line_no, raw in enumerate(fh, 1):
                progress.add(len(raw))
                if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError as e:
                    hint = ""
                    if line_no == 1 and raw.lstrip().startswith(b"["):
                        hint = "; this looks like a JSON array: write one JSON object per line (JSON Lines)"
                    self._bad(f"{f.name}:{line_no}: invalid JSON ({e}){hint}")
                    continue
                if not isinstance(record, dict):
                    self._bad(f"{f.name}:{line_no}: expected a JSON object, got {type(record).__name__}")
                    continue
                if key not in record:
                    keys = ", ".join(sorted(record)[:10]) or "none"
                    self._bad(f"{f.name}:{line_no}: missing field {key!r} (keys: {keys}); set text_field")
                    continue
                text = record[key]
                if not isinstance(text, str):
                    self._bad(f"{f.name}:{line_no}: field {key!r} must be a string, got {type(text).__name__}")
                    continue
                yield line_no, text

    def _read_parquet(self, f: InputFile, progress: ProgressCounter) -> Iterator[tuple[int, str]]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pf = pq.ParquetFile(f.path)
        except (pa.ArrowException, OSError) as e:
            self._bad(f"{f.name}: not a readable parquet file ({e})")
            progress.add(f.size)
            return
        with pf:
            names = pf.schema_arrow.names
            if f.text_field not in names:
                self._bad(f"{f.name}: no column {f.text_field!r} (columns: {', '.join(names)}); set text_field")
                progress.add(f.size)
                return
            n_rows = max(pf.metadata.num_rows, 1)
            row = 0
            for batch in pf.iter_batches(batch_size=1000, columns=[f.text_field]):
                for text in batch.column(0).to_pylist():
                    row += 1
                    if not isinstance(text, str):
                        what = "null" if text is None else type(text).__name__
                        self._bad(f"{f.name}:row {row}: column {f.text_field!r} is {what}, expected a string")
                        continue
                    yield row, text
                progress.add(f.size * batch.num_rows / n_rows)

    # -- datatrove entry point -----------------------------------------------------------------
    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        self._n_bad = 0
        self._bad_examples: list[str] = []
        progress = ProgressCounter(self.progress_dir, rank)
        readers = {"txt": self._read_txt, "jsonl": self._read_jsonl, "parquet": self._read_parquet}
        n_docs = 0
        try:
            for f in assign_files(self.files, world_size)[rank]:
                self.stat_update("input_files")
                for line_no, text in readers[f.format](f, progress):
                    n_docs += 1
                    yield Document(text=text, id=f"{f.name}:{line_no}", metadata={"source": f.name})
        finally:
            self.stat_update("documents", value=n_docs)  # once per task: per-document updates cost ~4 us each
            progress.flush()
            if self.bad_records_dir and self._bad_examples:
                out = Path(self.bad_records_dir)
                out.mkdir(parents=True, exist_ok=True)
                (out / f"{rank:05d}.txt").write_text("\n".join(self._bad_examples) + "\n", encoding="utf-8")


class CleanReader(JsonlReader):
    """Reads `<folder>/<rank>.jsonl` (written by the same rank of stage 1), in order."""

    name = "krllm clean reader"

    def __init__(self, data_folder: str, progress_dir: str | None = None):
        super().__init__(data_folder, compression=None, add_file_path=False)
        self.progress_dir = progress_dir

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import orjson

        if data:
            yield from data
        filename = f"{rank:05d}.jsonl"
        if not self.data_folder.isfile(filename):
            return  # this task kept no documents in stage 1
        progress = ProgressCounter(self.progress_dir, rank)
        self.stat_update("input_files")
        n_docs = 0
        try:
            # our own file of {"text", "id"} lines: no adapter, media or metadata to handle
            with self.data_folder.open(filename, "rb") as f:
                for line in f:
                    record = orjson.loads(line)
                    n_docs += 1
                    progress.add(1)
                    yield Document(text=record["text"], id=record["id"])
        finally:
            self.stat_update("documents", value=n_docs)
            progress.flush()


def count_lines(path: str | os.PathLike) -> int:
    """Lines in a file, read in 1 MB blocks (documents in an intermediate JSONL)."""
    n = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


__all__ = ["InputFile", "resolve_sources", "assign_files", "InputReader", "CleanReader", "count_lines"]
