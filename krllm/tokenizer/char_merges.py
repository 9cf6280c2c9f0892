"""`merge_unit: char`: learn BPE merges over whole characters, then express them as a byte-level BPE.

Why: a byte-level BPE trainer counts byte pairs, so on Korean (3 UTF-8 bytes per syllable) it also
learns tokens that end in the middle of one syllable and start in the middle of the next (measured:
about 250 of 4096 tokens trained on ko-help, docs/tokenizer.md). Those tokens are never a unit of
the language and cut the syllables around them. Here the trainer sees characters instead, and the
result is converted into an ordinary byte-level BPE:

    vocab   special tokens, the 256 byte symbols, then for every character the trainer kept its
            UTF-8 prefixes and itself (EC 9D, EC 9D B4 = "이"), then one token per character merge
    merges  first the byte merges that build each kept character from its bytes (a lead byte and
            its continuation bytes always belong to one character, so these never cross a
            character boundary), then the character merges in the trainer's order

Encoding therefore first assembles every known character from its bytes and then applies the
learned merges exactly as the character-level model would; a character the trainer never saw stays
as bytes (never an unknown token). The output is a plain `tokenizers` BPE + ByteLevel pipeline, so
transformers and llama.cpp (same regex, same byte-level merges) run it unchanged.
"""

from __future__ import annotations

import json
from typing import Iterable


def _merges(model: dict) -> list[tuple[str, str]]:
    """Merges from a tokenizer.json model (`["a", "b"]` pairs, or `"a b"` strings in older files)."""
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]


def train_char_bpe(texts: Iterable[str], *, vocab_size: int, min_frequency: int, special_tokens: list[str],
                   normalization: str, kind: str, show_progress: bool = False):
    """Train merges over characters (pieces of pre-tokenizer `kind`), return `(tokenizer, info)`:
    the equivalent byte-level `tokenizers.Tokenizer` (BPE over the 256 byte symbols, the `kind`
    pre-tokenizer, ByteLevel decoder) of at most `vocab_size` tokens, special tokens first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from krllm.tokenizer.pretokenize import _bytes_to_unicode, build_normalizer, build_splitter, byte_level_bpe

    char_tok = Tokenizer(models.BPE())
    norm = build_normalizer(normalization)
    if norm is not None:
        char_tok.normalizer = norm
    char_tok.pre_tokenizer = build_splitter(kind)
    # `vocab_size` characters + merges is an upper bound: the byte-level vocab below also holds the
    # 256 bytes, the special tokens and the UTF-8 prefixes, so merges are cut to fit afterwards.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress)
    char_tok.train_from_iterator(texts, trainer=trainer)
    model = json.loads(char_tok.to_str())["model"]

    b2u = _bytes_to_unicode()

    def byte_level(s: str) -> str:
        return "".join(b2u[b] for b in s.encode("utf-8"))

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(special_tokens)}
    for sym in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[sym] = len(vocab)
    merges: list[tuple[str, str]] = []
    alphabet = sorted(t for t in model["vocab"] if len(t) == 1)
    for ch in alphabet:  # every kept character, assembled left to right from its bytes
        raw = ch.encode("utf-8")
        for k in range(2, len(raw) + 1):
            whole = "".join(b2u[b] for b in raw[:k])
            if whole not in vocab:
                merges.append(("".join(b2u[b] for b in raw[:k - 1]), b2u[raw[k - 1]]))
                vocab[whole] = len(vocab)
    n_char_merges = 0
    for a, b in _merges(model):
        if len(vocab) >= vocab_size:
            break
        merged = byte_level(a + b)
        if merged not in vocab:
            merges.append((byte_level(a), byte_level(b)))
            vocab[merged] = len(vocab)
            n_char_merges += 1
    if len(vocab) > vocab_size:
        from krllm.errors import KrllmError

        raise KrllmError(f"vocab_size {vocab_size} is smaller than the {len(vocab)} tokens needed to spell the "
                         f"{len(alphabet)} characters of the corpus (merge_unit: char); raise vocab_size or use "
                         "merge_unit: byte")

    tok = byte_level_bpe(kind, normalization, vocab, merges)
    tok.add_special_tokens(list(special_tokens))
    return tok, {"characters": len(alphabet), "character_tokens": len(vocab) - len(special_tokens) - 256 - n_char_merges}
