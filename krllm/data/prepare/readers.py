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

import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseReader
from datatrove.pipeline.readers.jsonl import JsonlReader
from datatrove.utils.logging import logger

from krllm.data.prepare.progress import ProgressCounter
from krllm.data.sources import detect_format, expand_source, iter_values, without_unavailable
from krllm.errors import DataError
from krllm.runs import hash_file

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


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def resolve_sources(cfg) -> list[InputFile]:
    """Config sources -> InputFiles (deduplicated by path, each with format and content hash).

    Files under `cfg.out_dir` are skipped: a source directory may contain the previous output."""
    files: dict[str, InputFile] = {}
    out_dir = Path(cfg.out_dir).resolve()
    for src in without_unavailable(cfg.sources, _warn):
        for path, name in expand_source(src.path, src.format):
            if out_dir in path.resolve().parents:
                continue
            fmt = src.format if src.format != "auto" else detect_format(path)
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

    def _documents(self, f: InputFile, progress: ProgressCounter) -> Iterator[tuple[int, str]]:
        """(line or row number, text) of one file; values that are not strings are bad records."""
        for no, value in iter_values(f.path, f.format, name=f.name, text_field=f.text_field, txt_mode=f.txt_mode,
                                     on_bad=self._bad, progress=progress.add):
            if isinstance(value, str):
                yield no, value
            elif f.format == "parquet":
                what = "null" if value is None else type(value).__name__
                self._bad(f"{f.name}:row {no}: column {f.text_field!r} is {what}, expected a string")
            else:
                self._bad(f"{f.name}:{no}: field {f.text_field!r} must be a string, got {type(value).__name__}")

    # -- datatrove entry point -----------------------------------------------------------------
    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        self._n_bad = 0
        self._bad_examples: list[str] = []
        progress = ProgressCounter(self.progress_dir, rank)
        n_docs = 0
        try:
            for f in assign_files(self.files, world_size)[rank]:
                self.stat_update("input_files")
                for line_no, text in self._documents(f, progress):
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
