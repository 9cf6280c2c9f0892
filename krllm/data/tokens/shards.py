"""Read the token shards of `krllm data prepare` by memmap.

    from krllm.data.tokens.shards import TokenShards
    train = TokenShards("data/ko_pretrain", "train")
    len(train)                  # tokens in the split
    train.slice(1000, 513)      # int64 array, may span shard files
    train.document(0)           # tokens of document 0, ending with <|endoftext|>

Opening checks the manifest against the files (cheap: sizes and the last index entry), so a
truncated or mismatched shard fails with the file name and what to do, not with garbage batches
hours into training. `verify()` additionally reads every token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from krllm.errors import DataError

_SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = "krllm.token_shards"
MANIFEST_VERSION = 1


def load_manifest(out_dir: str | Path) -> dict:
    """manifest.json of a prepared directory (DataError naming the file when missing or malformed)."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; is {out_dir} an output of `krllm data prepare`?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg}); re-run krllm data prepare") from None


class TokenShards:
    """One split of a prepared directory as a flat token sequence (documents end with eos)."""

    def __init__(self, out_dir: str | Path, split: str = "train", *, allow_empty: bool = False):
        self.dir = Path(out_dir)
        self.split = split
        m = load_manifest(self.dir)
        where = self.dir / "manifest.json"
        if m.get("format") != MANIFEST_FORMAT or m.get("version") != MANIFEST_VERSION:
            raise DataError(f"{where}: not a krllm token-shards manifest version {MANIFEST_VERSION} "
                            f"(format={m.get('format')!r}, version={m.get('version')!r}); re-run krllm data prepare")
        if split not in _SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(_SPLITS)}")
        try:
            info = m["splits"][split]
            self.dtype = np.dtype(m["dtype"])
            self.vocab_size = int(m["tokenizer"]["vocab_size"])
            self.eos_id = int(m["tokenizer"]["eos_id"])
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: missing key {e} (truncated or hand-edited manifest); re-run krllm data prepare") from None
        self.manifest = m
        self.files = [self.dir / f["path"] for f in info["files"]]
        self._tokens: list[np.memmap] = []
        self._ends: list[np.ndarray] = []  # per file: uint64 cumulative document ends
        for f, path in zip(info["files"], self.files):
            self._open(path, int(f["tokens"]), int(f["documents"]))
        sizes = np.array([len(t) for t in self._tokens], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])  # token offset of each file
        docs = np.array([len(e) for e in self._ends], dtype=np.int64)
        self._doc_offsets = np.concatenate([[0], np.cumsum(docs)])
        if self._offsets[-1] != info["tokens"] or self._doc_offsets[-1] != info["documents"]:
            raise DataError(f"{where}: split {split} totals ({info['tokens']} tokens, {info['documents']} documents) "
                            f"disagree with its file list; re-run krllm data prepare")
        if len(self) == 0 and not allow_empty:
            raise DataError(f"{self.dir}: split {split!r} has no documents (the corpus is too small for "
                            f"split.{split} = {m.get('config', {}).get('split', {}).get(split)}); add data or raise "
                            "that fraction and re-run krllm data prepare")

    def _open(self, path: Path, n_tokens: int, n_docs: int) -> None:
        index = path.with_name(path.name + ".index")
        for p in (path, index):
            if not p.is_file():
                raise DataError(f"{p}: missing shard file listed in manifest.json; re-run krllm data prepare")
        want = n_tokens * self.dtype.itemsize
        got = path.stat().st_size
        if got != want:
            raise DataError(f"{path}: {got} bytes, but manifest.json says {n_tokens} tokens of {self.dtype} = {want} "
                            "bytes (truncated or corrupt shard); re-run krllm data prepare")
        if index.stat().st_size != n_docs * 8:
            raise DataError(f"{index}: {index.stat().st_size} bytes, expected {n_docs} documents x 8 bytes "
                            "(truncated or corrupt index); re-run krllm data prepare")
        ends = np.fromfile(index, dtype=np.uint64)
        if n_docs and (int(ends[-1]) != n_tokens or np.any(np.diff(ends.astype(np.int64)) <= 0) or ends[0] == 0):
            raise DataError(f"{index}: document ends are not increasing up to {n_tokens} (corrupt index); "
                            "re-run krllm data prepare")
        self._tokens.append(np.memmap(path, dtype=self.dtype, mode="r") if n_tokens else np.zeros(0, self.dtype))
        self._ends.append(ends)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def num_documents(self) -> int:
        return int(self._doc_offsets[-1])

    def slice(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) as int64, crossing file boundaries as needed."""
        start, length = int(start), int(length)
        if start < 0 or length < 0 or start + length > len(self):
            raise IndexError(f"slice({start}, {length}) is outside split {self.split!r} of {len(self)} tokens")
        out = np.empty(length, dtype=np.int64)
        pos = 0
        i = int(np.searchsorted(self._offsets, start, side="right")) - 1
        while pos < length:
            local = start + pos - int(self._offsets[i])
            take = min(length - pos, len(self._tokens[i]) - local)
            out[pos:pos + take] = self._tokens[i][local:local + take]
            pos += take
            i += 1
        return out

    def document(self, i: int) -> np.ndarray:
        """Tokens of document `i` of the split (int64), its end-of-document token included."""
        if not 0 <= i < self.num_documents:
            raise IndexError(f"document {i} is outside split {self.split!r} of {self.num_documents} documents")
        f = int(np.searchsorted(self._doc_offsets, i, side="right")) - 1
        j = i - int(self._doc_offsets[f])
        ends = self._ends[f]
        begin = int(ends[j - 1]) if j else 0
        return np.asarray(self._tokens[f][begin:int(ends[j])], dtype=np.int64)

    def verify(self) -> None:
        """Read every token: ids must be < vocab_size and every document must end with eos."""
        for path, tokens, ends in zip(self.files, self._tokens, self._ends):
            if not len(tokens):
                continue
            top = int(tokens.max())
            if top >= self.vocab_size:
                raise DataError(f"{path}: token id {top} >= vocab size {self.vocab_size} (shard from another tokenizer?)")
            last = np.asarray(tokens[(ends.astype(np.int64) - 1)])
            bad = np.flatnonzero(last != self.eos_id)
            if len(bad):
                raise DataError(f"{path}: document {int(bad[0])} does not end with eos id {self.eos_id}; corrupt shard")

    def __repr__(self) -> str:
        return (f"TokenShards({str(self.dir)!r}, {self.split!r}: {len(self):,} tokens, {self.num_documents:,} documents, "
                f"{len(self.files)} file(s), {self.dtype})")
