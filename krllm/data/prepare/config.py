"""Schema of `krllm data prepare` configs (configs/data/*.yaml).

    cfg = load_config("configs/data/ko_pretrain.yaml", PrepareConfig, ["executor.workers=4"])
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from krllm.config import StrictModel

Format = Literal["auto", "txt", "jsonl", "parquet"]


class SourceConfig(StrictModel):
    """One input. A bare string in `sources` is shorthand for `{path: ...}`."""

    path: str = Field(description="file, directory (read recursively), glob, or builtin:NAME")
    format: Format = Field("auto", description="auto = by extension: .txt/.md, .jsonl/.json/.ndjson, .parquet "
                                               "(a trailing .gz is allowed for txt/jsonl)")
    text_field: str | None = Field(None, description="JSONL/parquet key holding the text (default: top-level text_field)")
    txt_mode: Literal["file", "paragraph"] | None = Field(
        None, description="txt: one document per file, or per blank-line-separated paragraph (default: top-level txt_mode)")
    optional: bool = Field(False, description="true: leave this source out, with a warning, where it can't be had "
                                              "(a missing file, a built-in corpus whose fetch fails)")


class CleanConfig(StrictModel):
    normalization: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normal form; NFKC also folds compatibility characters (① -> 1, full-width "
                           "letters); use the same form as the tokenizer's normalizer")
    strip_html: bool = Field(True, description="drop HTML tags, <script>/<style> blocks, decode &entities;")
    remove_control_chars: bool = Field(True, description="drop control characters (not tab/newline), zero-width "
                                                         "space, BOM, soft hyphen")
    collapse_whitespace: bool = Field(True, description="spaces/tabs -> one space, strip lines, at most one blank line")


class FilterConfig(StrictModel):
    min_chars: int = Field(20, ge=0, description="drop documents shorter than this (characters, after cleaning)")
    max_chars: int = Field(1_000_000, ge=0, description="drop documents longer than this; 0 = no limit")
    min_hangul_ratio: float = Field(0.5, ge=0.0, le=1.0, description="drop documents whose Hangul / all-letters ratio "
                                                                     "is below this; 0 = keep any language")

    @model_validator(mode="after")
    def _range(self):
        if self.max_chars and self.max_chars < self.min_chars:
            raise ValueError(f"max_chars ({self.max_chars}) is below min_chars ({self.min_chars}): every "
                             "document would be dropped; raise max_chars or set it to 0 (no limit)")
        return self


class DedupeConfig(StrictModel):
    exact: bool = Field(True, description="drop documents whose case-folded, whitespace-collapsed text repeats")
    minhash: bool = Field(True, description="drop near-duplicates with datatrove's MinHash LSH")
    ngrams: int = Field(5, ge=1, description="MinHash shingle size in words (space-separated eojeol)")
    buckets: int = Field(14, ge=1, description="LSH bands; more bands = lower similarity threshold")
    hashes_per_bucket: int = Field(8, ge=1, description="rows per band; more rows = higher threshold")
    seed: int = Field(1, description="MinHash permutation seed")


class SplitConfig(StrictModel):
    val: float = Field(0.01, ge=0.0, lt=1.0, description="fraction of documents for validation")
    test: float = Field(0.01, ge=0.0, lt=1.0, description="fraction of documents for test")
    seed: int = Field(0, description="salt of the document hash that assigns splits")

    @model_validator(mode="after")
    def _sum(self):
        if self.val + self.test >= 1.0:
            raise ValueError(f"val + test = {self.val + self.test:g} leaves nothing for train; keep it below 1")
        return self


class ExecutorConfig(StrictModel):
    workers: int = Field(2, ge=1, description="processes running tasks at once on this machine")
    tasks: int = Field(0, ge=0, description="input shards (files are spread over tasks by size); "
                                            "0 = one per worker, at most one per input file")
    start_method: Literal["forkserver", "spawn", "fork"] = Field(
        "forkserver", description="how worker processes start (forkserver: safe and fast on Linux/macOS)")


class PrepareConfig(StrictModel):
    """`krllm data prepare` config: sources -> clean -> filter -> dedupe -> split -> token shards."""

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig(path="builtin:ko-law")], min_length=1)
    text_field: str = Field("text", description="default JSONL/parquet text key")
    txt_mode: Literal["file", "paragraph"] = Field("paragraph", description="default txt document boundaries")
    skip_bad_records: bool = Field(False, description="skip and count malformed records instead of stopping "
                                                      "with an error naming file:line")
    tokenizer: str = Field("runs/tok_ko", description="tokenizer directory (with tokenizer.json) or the file itself")
    eos_token: str = Field("<|endoftext|>", description="appended after every document")
    tokenize_batch_size: int = Field(1000, ge=1, description="documents per tokenizer batch call")
    out_dir: str = Field("data/ko_pretrain", description="output directory (replaced atomically)")
    clean: CleanConfig = Field(default_factory=CleanConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)

    @field_validator("sources", mode="before")
    @classmethod
    def _shorthand(cls, v):
        if isinstance(v, (str, dict)):
            v = [v]
        if isinstance(v, list):
            return [{"path": s} if isinstance(s, str) else s for s in v]
        return v
