"""TokenShards: memmap reads across files, and clear errors on truncated or mismatched shards.

Shard directories are written here by hand in the documented layout (docs/architecture.md), so
the reader is checked against the format itself; test_data_prepare.py reads real pipeline output.
"""

import json

import numpy as np
import pytest

from krllm.data.tokens.shards import MANIFEST_FORMAT, MANIFEST_VERSION, TokenShards
from krllm.errors import DataError

EOS = 0


def write_shards(out, splits: dict[str, list[list[list[int]]]], vocab_size=1000, dtype="uint16"):
    """splits: split -> files -> documents (token lists without eos). Returns all tokens per split."""
    manifest = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "dtype": dtype,
                "tokenizer": {"path": "tok.json", "sha256": "0" * 64, "vocab_size": vocab_size,
                              "eos_token": "<|endoftext|>", "eos_id": EOS},
                "splits": {}, "config": {"split": {"val": 0.01, "test": 0.01}}}
    flat = {}
    for split, files in splits.items():
        (out / split).mkdir(parents=True, exist_ok=True)
        entries, all_tokens = [], []
        for i, docs in enumerate(files):
            tokens = [t for d in docs for t in (*d, EOS)]
            ends = np.cumsum([len(d) + 1 for d in docs]).astype(np.uint64)
            np.asarray(tokens, dtype=dtype).tofile(out / split / f"{i:05d}.ds")
            ends.tofile(out / split / f"{i:05d}.ds.index")
            entries.append({"path": f"{split}/{i:05d}.ds", "tokens": len(tokens), "documents": len(docs)})
            all_tokens += tokens
        manifest["splits"][split] = {"tokens": len(all_tokens), "documents": sum(e["documents"] for e in entries),
                                     "files": entries}
        flat[split] = np.asarray(all_tokens, dtype=np.int64)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return flat


@pytest.fixture()
def shards(tmp_path):
    rng = np.random.default_rng(0)
    files = [[rng.integers(1, 1000, rng.integers(1, 40)).tolist() for _ in range(n)] for n in (5, 1, 7)]
    flat = write_shards(tmp_path, {"train": files, "val": [[[5, 6, 7]]], "test": []})
    return tmp_path, files, flat


def test_len_slice_and_documents_span_files(shards):
    out, files, flat = shards
    ts = TokenShards(out, "train")
    assert len(ts) == len(flat["train"]) and ts.num_documents == 13 and ts.vocab_size == 1000
    assert ts.manifest["splits"]["train"]["documents"] == 13
    rng = np.random.default_rng(1)
    for _ in range(200):
        start = int(rng.integers(0, len(ts)))
        length = int(rng.integers(0, len(ts) - start + 1))
        got = ts.slice(start, length)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, flat["train"][start:start + length])
    np.testing.assert_array_equal(ts.slice(0, len(ts)), flat["train"])  # all three files in one slice
    docs = [d for f in files for d in f]
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ts.document(i), [*d, EOS])
    ts.verify()
    assert TokenShards(out, "val").slice(0, 4).tolist() == [5, 6, 7, EOS]


def test_out_of_range_and_unknown_split(shards):
    out, _, flat = shards
    ts = TokenShards(out, "train")
    for start, length in ((-1, 2), (0, len(ts) + 1), (len(ts), 1)):
        with pytest.raises(IndexError, match="outside split 'train'"):
            ts.slice(start, length)
    assert ts.slice(len(ts), 0).size == 0
    with pytest.raises(IndexError):
        ts.document(13)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        TokenShards(out, "dev")


def test_empty_split_needs_allow_empty(shards):
    out, _, _ = shards
    with pytest.raises(DataError, match="split 'test' has no documents"):
        TokenShards(out, "test")
    empty = TokenShards(out, "test", allow_empty=True)
    assert len(empty) == 0 and empty.num_documents == 0 and empty.slice(0, 0).size == 0


def test_truncated_token_file_is_reported(shards):
    out, _, _ = shards
    path = out / "train" / "00001.ds"
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match=rf"{path}: \d+ bytes, but manifest.json says \d+ tokens of uint16 .*\(truncated"):
        TokenShards(out, "train")
    TokenShards(out, "val")  # other splits still open


def test_corrupt_or_missing_index_is_reported(shards):
    out, _, _ = shards
    index = out / "train" / "00002.ds.index"
    ends = np.fromfile(index, dtype=np.uint64)
    ends[[1, 2]] = ends[[2, 1]]
    ends.tofile(index)
    with pytest.raises(DataError, match=rf"{index}: document ends are not increasing"):
        TokenShards(out, "train")
    index.write_bytes(index.read_bytes()[:-8])
    with pytest.raises(DataError, match=rf"{index}: \d+ bytes, expected 7 documents x 8 bytes"):
        TokenShards(out, "train")
    index.unlink()
    with pytest.raises(DataError, match=rf"{index}: missing shard file"):
        TokenShards(out, "train")


def test_manifest_problems_are_reported(shards, tmp_path_factory):
    out, _, _ = shards
    with pytest.raises(DataError, match="manifest.json: not found"):
        TokenShards(tmp_path_factory.mktemp("nothing"), "train")
    m = json.loads((out / "manifest.json").read_text())
    m["splits"]["train"]["tokens"] += 1
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="split train totals .* disagree with its file list"):
        TokenShards(out, "train")
    m["version"] = 99
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="not a krllm token-shards manifest version 1"):
        TokenShards(out, "train")
    (out / "manifest.json").write_text('{"format": ')
    with pytest.raises(DataError, match=r"manifest.json:1: invalid JSON"):
        TokenShards(out, "train")


def test_verify_catches_foreign_ids_and_missing_eos(tmp_path):
    write_shards(tmp_path, {"train": [[[1, 2, 3], [4, 5]]]}, vocab_size=5)
    with pytest.raises(DataError, match="token id 5 >= vocab size 5"):
        TokenShards(tmp_path, "train").verify()
    write_shards(tmp_path, {"train": [[[1, 2, 3], [4]]]}, vocab_size=6)
    path = tmp_path / "train" / "00000.ds"
    tokens = np.fromfile(path, dtype=np.uint16)
    tokens[3] = 2  # end of document 0
    tokens.tofile(path)
    with pytest.raises(DataError, match="document 0 does not end with eos id 0"):
        TokenShards(tmp_path, "train").verify()


def test_uint32_shards_for_large_vocabularies(tmp_path):
    flat = write_shards(tmp_path, {"train": [[[70000, 1], [65536]]]}, vocab_size=100_000, dtype="uint32")
    ts = TokenShards(tmp_path, "train")
    assert ts.dtype == np.uint32
    np.testing.assert_array_equal(ts.slice(0, len(ts)), flat["train"])
    ts.verify()


def test_feeds_the_pretraining_window_sampler(shards):
    """The contract the trainer relies on: PackedWindows over TokenShards == windows of the flat array."""
    from krllm.train.batches import ArrayTokens, PackedWindows

    out, _, flat = shards
    a = PackedWindows(TokenShards(out, "train"), seq_len=16, seed=3)
    b = PackedWindows(ArrayTokens(flat["train"]), seq_len=16, seed=3)
    starts = a.next_starts(8)
    np.testing.assert_array_equal(starts, b.next_starts(8))
    for s in starts:
        np.testing.assert_array_equal(TokenShards(out, "train").slice(int(s), 17), flat["train"][s:s + 17])
