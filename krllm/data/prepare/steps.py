"""The datatrove steps of `krllm data prepare`: Korean cleaning, filters, dedupe wiring, split +
tokenize. Each is a standard datatrove `PipelineStep`, so the same pipeline runs under datatrove's
local, Slurm or Ray executors.

- `KoreanCleaner`      markup, control characters, NFC/NFKC, whitespace (krllm.data.prepare.textclean)
- `LengthFilter`       (False, "empty" | "too_short" | "too_long")
- `HangulRatioFilter`  (False, "low_hangul_ratio")
- `exact_dedupe_config` datatrove ExactDedup* on the case-folded, whitespace-collapsed text
- `KoreanMinhashSignature` datatrove MinHash stage 1 with a whitespace (eojeol) word tokenizer
  instead of the spacy/kiwi defaults (no model downloads)
- `SplitShardWriter`   datatrove's DocumentTokenizer, writing each document into the shard of its
  stable split: `<out>/{train,val,test}/<rank>.ds` (+ `.ds.index`), `eos_token` after every document
"""

import contextlib
import hashlib
import itertools
import os
import re
from collections import Counter

import numpy as np
from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
from datatrove.pipeline.filters.base_filter import BaseFilter, get_filter_result
from datatrove.pipeline.formatters.base import BaseFormatter
from datatrove.pipeline.tokens.tokenizer import DocumentTokenizer, TokenizedFile
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.batching import batched
from datatrove.utils.hashing import HashConfig
from datatrove.utils.text import PUNCTUATION_SET, TextNormConfig
from datatrove.utils.typeshelper import StatHints
from datatrove.utils.word_tokenizers import WordTokenizer

from krllm.data.prepare.textclean import clean_text, dedupe_key, hangul_ratio, split_of


class KoreanCleaner(BaseFormatter):
    """Clean every document's text in place (see `krllm.data.prepare.textclean.clean_text`)."""

    name = "krllm Korean cleaner"

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        n = 0
        try:
            for doc in data:
                doc.text = self.format(doc.text)
                n += 1
                yield doc
        finally:
            self.stat_update(StatHints.total, value=n)  # once per task: per-document updates cost ~4 us each

    def __init__(self, normalization: str = "NFC", strip_html: bool = True, remove_control_chars: bool = True,
                 collapse_whitespace: bool = True):
        super().__init__()
        self.options = dict(normalization=normalization, strip_html_tags=strip_html,
                            remove_control=remove_control_chars, collapse_whitespace=collapse_whitespace)

    def format(self, text: str) -> str:
        return clean_text(text, **self.options)


class CountingFilter(BaseFilter):
    """A datatrove filter whose counts (total, forwarded, dropped, dropped_<reason>) are kept locally
    and recorded once per task: datatrove's run() updates 3-4 running statistics per document."""

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        counts: Counter = Counter()
        try:
            for doc in data:
                keep, reason = get_filter_result(self.filter(doc))
                if keep:
                    counts[StatHints.forwarded] += 1
                    yield doc
                else:
                    counts[StatHints.dropped] += 1
                    if reason:
                        counts[f"dropped_{reason}"] += 1
        finally:
            counts[StatHints.total] = counts[StatHints.forwarded] + counts[StatHints.dropped]
            for label, n in counts.items():
                if n:
                    self.stat_update(label, value=n)


class LengthFilter(CountingFilter):
    """Keep documents with min_chars <= len(text) <= max_chars (max_chars 0 = no upper limit)."""

    name = "krllm length filter"

    def __init__(self, min_chars: int = 0, max_chars: int = 0):
        super().__init__()
        self.min_chars, self.max_chars = min_chars, max_chars

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        n = len(doc.text)
        if n == 0:
            return False, "empty"
        if n < self.min_chars:
            return False, "too_short"
        if self.max_chars and n > self.max_chars:
            return False, "too_long"
        return True


class HangulRatioFilter(CountingFilter):
    """Keep documents where Hangul makes up at least `min_ratio` of the letters."""

    name = "krllm Hangul ratio filter"

    def __init__(self, min_ratio: float):
        super().__init__()
        self.min_ratio = min_ratio

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if hangul_ratio(doc.text) < self.min_ratio:
            return False, "low_hangul_ratio"
        return True


class CleanWriter(JsonlWriter):
    """The intermediate copy after cleaning and filtering: only {"text", "id"} per line (datatrove's
    default adapter deep-copies every Document with dataclasses.asdict, a third of this stage)."""

    name = "krllm intermediate writer"

    def __init__(self, output_folder: str):
        super().__init__(output_folder, output_filename="${rank}.jsonl", compression=None)

    def _default_adapter(self, document: Document) -> dict:
        return {"text": document.text, "id": document.id}


def exact_dedupe_content(doc: Document) -> bytes:
    """What datatrove's exact dedupe hashes (bytes: xxhash 4 refuses str, see datatrove#508)."""
    return dedupe_key(doc.text)


def exact_dedupe_config() -> ExactDedupConfig:
    return ExactDedupConfig(content_getter=exact_dedupe_content, hash_config=HashConfig(precision=64, hash_fc="xxhash"))


class KoreanWordTokenizer(WordTokenizer):
    """Words = whitespace-separated eojeol. Korean writes spaces between eojeol, so this is the
    natural shingle unit for near-duplicate detection, without spacy or a morphological model."""

    def word_tokenize(self, text: str) -> list[str]:
        return text.split()

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in text.splitlines() if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


def xxhash64_utf8(text: str) -> int:
    """datatrove's shingle hash (xxhash64), encoding first: xxhash>=4 rejects str (datatrove#508)."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8"))


def minhash_config(ngrams: int, buckets: int, hashes_per_bucket: int, seed: int) -> MinhashConfig:
    # Korean has no diacritics to strip; datatrove's default NFD pass would only decompose Hangul
    # into jamo and double the cost.
    norm = TextNormConfig(norm_unicode_diacritics=False)
    return MinhashConfig(n_grams=ngrams, num_buckets=buckets, hashes_per_bucket=hashes_per_bucket, seed=seed,
                         norm_config=norm, hash_config=HashConfig(precision=64, hash_fc="xxhash"))


_DIGITS = re.compile(r"\d+(?:[.,]\d+)?")  # str patterns: \d is any Unicode decimal digit, like datatrove's
_PUNCT = "".join(sorted(PUNCTUATION_SET))
_SHINGLE_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the polynomial n-gram hash
_MERSENNE = np.uint64((1 << 61) - 1)
_NO_WORD = 0  # cache value of an eojeol that is only punctuation (xxhash64 of a real word is never 0 in practice)
_WORD_CACHE_MAX = 1 << 20
_SIG_ROWS = 4096  # shingles per block: memory stays ~4 MB however long a document is
_SIG_BLOCK_DOCS = 1024  # signatures written per block (~1 MB)


def normalize_word(word: str) -> str:
    """datatrove's `simplify_text` on one eojeol: lower case, numbers -> 0, edge punctuation off."""
    return _DIGITS.sub("0", word.lower()).strip(_PUNCT)


class KoreanMinhashSignature(MinhashDedupSignature):
    """MinHash stage 1 with eojeol shingles, vectorized.

    Words are whitespace-separated eojeol, normalized like datatrove's `simplify_text` (lower case,
    numbers -> 0, surrounding punctuation removed; pure-punctuation tokens dropped). datatrove
    hashes the joined text of every n-gram in Python (~4 us a shingle); here each distinct eojeol
    is normalized and hashed once (xxhash64, cached per task), an n-gram's hash is a polynomial of
    its word hashes computed with numpy, signatures are computed in blocks of shingles and written
    in blocks of documents. That makes this stage ~4x faster with memory bounded per document.
    datatrove's signature formula (min of (a*x + b) mod 2^61-1), its signature files (byte for
    byte, see `run`), buckets, clusters and final filter are unchanged.
    """

    def __init__(self, output_folder: str, config: MinhashConfig):
        super().__init__(output_folder, config=config, language=KoreanWordTokenizer())
        self._hash_func = xxhash64_utf8
        self._word_hashes: dict[str, int] = {}

    def _hash_word(self, raw: str) -> int:
        word = normalize_word(raw)
        h = xxhash64_utf8(word) if word else _NO_WORD
        self._word_hashes[raw] = h
        return h

    def get_shingles(self, text: str) -> np.ndarray:
        """(number of n-grams, 1) uint64 hashes of the eojeol n-grams of `text`."""
        cache = self._word_hashes
        if len(cache) > _WORD_CACHE_MAX:
            cache.clear()
        raw = text.split()
        found = list(map(cache.get, raw))
        if None in found:
            found = [self._hash_word(w) if h is None else h for w, h in zip(raw, found)]
        hashes = np.array(found, dtype=np.uint64)
        hashes = hashes[hashes != _NO_WORD]
        n = self.config.n_grams
        if len(hashes) < n:
            return np.empty((0, 1), dtype=np.uint64)
        m = len(hashes) - n + 1
        out = hashes[:m].copy()
        for k in range(1, n):  # uint64 arithmetic wraps around, as intended for hashing
            out *= _SHINGLE_MULT
            out += hashes[k:k + m]
        return out.reshape(-1, 1)

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        """(num_buckets * hashes_per_bucket,) uint64: datatrove's formula, min over shingles of
        (a * x + b) mod (2^61 - 1), per hash function.

        The modulo uses the Mersenne identity x mod p = (x & p) + (x >> 61), which is < p except
        with probability ~2^-58 per value; only then is the exact correction computed."""
        a, b = self.parameters
        best = None
        for i in range(0, len(shingles), _SIG_ROWS):
            x = np.multiply(shingles[i:i + _SIG_ROWS], a)  # (rows, num_hashes); wraps like datatrove's
            x += b
            y = x & _MERSENNE
            x >>= np.uint64(61)
            y += x
            if y.max() >= _MERSENNE:  # practically never
                y = np.where(y >= _MERSENNE, y - _MERSENNE, y)
            m = y.min(axis=0)
            best = m if best is None else np.minimum(best, m)
        return best

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        """datatrove's interface: the signature as num_buckets lists of hashes_per_bucket ints."""
        return self.signature(shingles).reshape(self.config.num_buckets, self.config.hashes_per_bucket).tolist()

    def record_dtype(self) -> np.dtype:
        """One signature file record, as datatrove packs it: hashes_per_bucket '<u8' hashes, then the
        '<u4' document index (fields field1..fieldN, the names datatrove sorts by)."""
        hpb = self.config.hashes_per_bucket
        return np.dtype([(f"field{i + 1}", "<u8") for i in range(hpb)] + [(f"field{hpb + 1}", "<u4")])

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1):
        """datatrove's stage 1, writing signatures in blocks of documents.

        Same files, bytes and checks as `MinhashDedupSignature.run`: `bucket_XXX/<rank>.minhash.sig`
        holding one record per document that has shingles (its hashes for that bucket + its index in
        the stream), each file sorted, then re-read and compared by hash. datatrove packs every
        record with `struct` and writes it on its own (14 writes a document); here a block of
        documents becomes one numpy record array per bucket."""
        assert self.config.hash_config.precision == 64, "record_dtype assumes 64-bit hashes"
        with self.track_time():
            can_skip, n_records = self.check_can_skip_sig_writing(rank)
            if not can_skip:
                n_records = self._write_signatures(data, rank)
            for bi in range(self.config.num_buckets):
                self._sort_bucket(f"bucket_{bi:03d}/{rank:05d}.minhash.sig", n_records)

    def _write_signatures(self, data: DocumentsPipeline, rank: int) -> int:
        cfg = self.config
        nb, hpb = cfg.num_buckets, cfg.hashes_per_bucket
        dtype = self.record_dtype()
        sigs = np.empty((_SIG_BLOCK_DOCS, nb, hpb), dtype=np.uint64)
        index = np.empty(_SIG_BLOCK_DOCS, dtype=np.uint32)
        files = [self.output_folder.open(f"bucket_{bi:03d}/{rank:05d}.minhash.sig", mode="wb") for bi in range(nb)]
        n_docs = n_records = n = 0

        def flush():
            records = np.empty((nb, n), dtype=dtype)  # (bucket, document)
            for i in range(hpb):
                records[f"field{i + 1}"] = sigs[:n, :, i].T
            records[f"field{hpb + 1}"] = index[:n]
            for f, bucket_records in zip(files, records):
                f.write(bucket_records.tobytes())

        try:
            for doc_idx, doc in enumerate(data):
                n_docs += 1
                shingles = self.get_shingles(doc.text)
                if shingles.size == 0:
                    continue
                sigs[n] = self.signature(shingles).reshape(nb, hpb)
                index[n] = doc_idx
                n += 1
                n_records += 1
                if n == _SIG_BLOCK_DOCS:
                    flush()
                    n = 0
            if n:
                flush()
        finally:
            for f in files:
                f.close()
            self.stat_update(StatHints.total, value=n_docs)  # once per task, not per document
        return n_records

    def _sort_bucket(self, path: str, n_records: int) -> None:
        """datatrove's sort of one signature file, and its check that the sorted file was written."""
        dtype = self.record_dtype()
        expected_len = n_records * dtype.itemsize
        buffer = bytearray(expected_len)
        with self.output_folder.open(path, mode="rb") as f:
            got = f.readinto(buffer)
        if got != expected_len:
            raise ValueError(f"Corrupted minhash signature detected for {path}: expected {expected_len} bytes, "
                             f"got {got}")
        records = np.frombuffer(buffer, dtype=dtype)
        records.sort(order=dtype.names)
        digest = hashlib.blake2b(buffer, digest_size=16).digest()
        with self.output_folder.open(path, mode="wb") as f:
            f.write(buffer)
        with self.output_folder.open(path, mode="rb") as f:
            written = f.read()
        if len(written) != expected_len or hashlib.blake2b(written, digest_size=16).digest() != digest:
            raise ValueError(f"Corrupted minhash signature detected for {path}: the sorted file reads back "
                             "differently")


class SplitShardWriter(DocumentTokenizer):
    """Tokenize documents in batches and append each to the shard file of its split.

    Built on datatrove's DocumentTokenizer (tokenizer loading, eos post-processor, uint16/uint32
    choice) and TokenizedFile (`.ds` + `.ds.index` of uint64 document ends). Documents are not
    shuffled here: training samples windows at random, and shard order stays reproducible.

    Speed (same ids as the plain tokenizer):
    - `text_is_nfc=True` (the cleaner wrote NFC or NFKC text) drops the tokenizer's own `NFC`
      normalizer: it could change nothing, and its alignment bookkeeping is ~20% of encoding time.
    - `rust_threads=False` sets TOKENIZERS_PARALLELISM=false for the task (unless the variable is
      set): with one worker process per core, tokenizers' thread pool in every worker only
      oversubscribes the cores.
    """

    name = "krllm split + tokenize"

    def __init__(self, output_folder: str, tokenizer_path: str, eos_token: str, val: float, test: float,
                 seed: int = 0, batch_size: int = 1000, progress_dir: str | None = None, text_is_nfc: bool = False,
                 rust_threads: bool = True):
        super().__init__(output_folder, tokenizer_name_or_path=tokenizer_path, eos_token=eos_token,
                         save_final_metadata=False, batch_size=batch_size, shuffle_documents=False)
        self.val, self.test, self.split_seed = val, test, seed
        self.progress_dir = progress_dir
        self.text_is_nfc = text_is_nfc
        self.rust_threads = rust_threads

    def encoder(self):
        """The batch encode function for this task (see the class docstring)."""
        from tokenizers import normalizers

        tokenizer = self.tokenizer
        if self.text_is_nfc and type(tokenizer.normalizer) is normalizers.NFC:
            tokenizer.normalizer = None
        return getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # no offsets needed

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with _tokenizers_parallelism(self.rust_threads):
            yield from self._run(data, rank)

    def _run(self, data: DocumentsPipeline, rank: int) -> DocumentsPipeline:
        files: dict[str, TokenizedFile] = {}
        dtype = np.uint32 if self.token_size == 4 else np.uint16
        encode = self.encoder()
        try:
            for batch in batched(data, self.batch_size):
                with self.track_time(unit="batch"):
                    encoded = encode([doc.text for doc in batch])
                    by_split: dict[str, list[list[int]]] = {}
                    for doc, enc in zip(batch, encoded):
                        split = split_of(doc.text, self.val, self.test, self.split_seed)
                        by_split.setdefault(split, []).append(enc.ids)
                    for split, id_lists in by_split.items():
                        if split not in files:
                            files[split] = TokenizedFile(self.output_folder, f"{split}/{rank:05d}.ds", save_index=True,
                                                         token_size=self.token_size, save_final_metadata=False)
                        lengths = [len(ids) for ids in id_lists]
                        tokens = np.fromiter(itertools.chain.from_iterable(id_lists), dtype=dtype, count=sum(lengths))
                        files[split].write_bytes(tokens.tobytes(), doc_ends=np.cumsum(lengths).tolist())
                        self.stat_update(f"{split}_documents", value=len(id_lists))
                        self.stat_update(f"{split}_tokens", value=int(sum(lengths)))
        finally:
            for f in files.values():
                f.close()
        return
        yield  # a generator, like every datatrove step, though it forwards nothing


@contextlib.contextmanager
def _tokenizers_parallelism(allowed: bool):
    """TOKENIZERS_PARALLELISM=false while the body runs, unless allowed or the user set it."""
    key = "TOKENIZERS_PARALLELISM"
    if allowed or key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)

