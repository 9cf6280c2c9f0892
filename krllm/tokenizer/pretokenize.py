"""Normalizer, pre-tokenizer and special tokens of the krllm tokenizer, as HF `tokenizers` objects.

Everything here is representable in tokenizer.json, so transformers, tokenizers and converters
(llama.cpp, MLX) load the same pipeline without our code:

    normalizer      NFC (default) | NFKC | none      -- see "Round trip" below
    pre_tokenizer   Sequence([Split(Regex(SPLIT_PATTERNS[kind]), "isolated"),
                              ByteLevel(add_prefix_space=False, use_regex=False)])
    model           BPE over the 256 byte symbols (never an unknown token)
    decoder         ByteLevel

Round trip: no step drops or adds characters (no prefix space, no stripping, no whitespace
collapsing), so `decode(encode(x)) == normalize(x)` for any string, and `== x` exactly when `x` is
already in the chosen normal form. NFC only recomposes (e.g. decomposed jamo from macOS into
Hangul syllables), which is why it is the default; NFKC also rewrites compatibility characters
(`․` -> `.`, `①` -> `1`, full-width Latin -> ASCII), which the ko-law corpus itself contains, so
use it only when the data cleaning step applies the same NFKC. Whitespace clean-up (collapsing
runs, stripping lines) belongs to data cleaning, never to the tokenizer.
"""

from __future__ import annotations

from typing import Literal

# Fixed ids, see docs/architecture.md "Tokenizer directory". The trainer assigns special tokens
# ids in list order, before any learned token.
ENDOFTEXT, PAD, IM_START, IM_END = "<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, PAD, IM_START, IM_END)
SPECIAL_IDS: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}

# Pre-tokenization: the alternatives are tried left to right at each position.
#   '(?i:[sdmt]|ll|ve|re)      English contractions ('s, 'll, ...), as in GPT-2/4
#    ?\p{Hangul}+              a run of Hangul (syllables and jamo), with one optional leading space:
#                             " 대한민국은" stays one piece, so merges learn stems + particles
#    ?[^...]+                  a run of other letters/marks (Latin, Hanja, kana...), never mixed with
#                             Hangul, digits, punctuation or whitespace
#    ?\p{N}                    every digit alone: " 2024" -> " 2" 0 2 4 (no arbitrary number
#                             chunks like "202"+"4"); a space before a number goes with its first
#                             digit instead of costing a token of its own (GPT-4/Llama 3 spend one:
#                             measured -9% tokens on NPC text, -14% on math, docs/tokenizer.md)
#    ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*   punctuation / symbols / emoji runs (+ trailing newlines)
#   \s*[\r\n]+                 newline runs (with the indentation before them)
#   \s+(?!\S) | \s+            other whitespace; the last space before a word is left for the word
# The "other letters" class is written as a negated class (no `&&` intersection) so regex engines
# other than Oniguruma read it the same way.
# GPT-2's regex as ByteLevel(use_regex=True) applies it (for char-level training with `gpt2`).
GPT2_SPLIT_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

KOREAN_SPLIT_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)"
    r"| ?\p{Hangul}+"
    r"| ?[^\s\p{Hangul}\p{N}\p{P}\p{S}\p{C}\p{Z}]+"
    r"| ?\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# llama.cpp-compatible splits (tokenizer.json's original regexes; llama.cpp's src/llama-vocab.cpp
# runs the same pattern, with `(?i:...)` spelled out as `'[sS]|...`, under the name in LLAMA_CPP_PRE).
#   qwen2:  a letter run (any script, Hangul and Latin together) with one optional leading
#           non-letter/digit/newline character (a space or one punctuation mark); every digit alone;
#           the space before a number is a token of its own
#   llama3: the same with numbers in groups of one to three digits from the left (2024 -> 202 4)
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

Normalization = Literal["nfc", "nfkc", "none"]
PreTokenizerKind = Literal["korean", "gpt2", "qwen2", "llama3"]

# `tokenizer.ggml.pre` of each kind: the name under which llama.cpp splits text exactly as our
# tokenizer.json does (None: llama.cpp has no such pre-tokenizer, a GGUF export would split differently).
LLAMA_CPP_PRE: dict[str, str | None] = {"korean": None, "gpt2": "gpt-2", "qwen2": "qwen2", "llama3": "llama-bpe"}
# llama.cpp's `llama-bpe` also skips merges for a piece that is itself a vocabulary entry; the HF BPE
# model must do the same (`ignore_merges`) for the two to give identical ids.
IGNORE_MERGES: dict[str, bool] = {"korean": False, "gpt2": False, "qwen2": False, "llama3": True}
SPLIT_PATTERNS: dict[str, str] = {"korean": KOREAN_SPLIT_PATTERN, "qwen2": QWEN2_SPLIT_PATTERN,
                                  "llama3": LLAMA3_SPLIT_PATTERN}


def build_normalizer(form: Normalization):
    """The tokenizer.json normalizer for a normal form (`none` -> no normalizer at all)."""
    from tokenizers import normalizers

    if form == "nfc":
        return normalizers.NFC()
    if form == "nfkc":
        return normalizers.NFKC()
    if form == "none":
        return None
    raise ValueError(f"unknown normalization {form!r}; use nfc, nfkc or none")


def build_pre_tokenizer(kind: PreTokenizerKind):
    """`korean` / `qwen2` / `llama3`: that Split regex, then byte mapping. `gpt2`: GPT-2's own
    ByteLevel regex (the baseline: digits grouped, Hangul split only at spaces)."""
    from tokenizers import Regex, pre_tokenizers

    if kind in SPLIT_PATTERNS:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERNS[kind]), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    raise ValueError(f"unknown pre_tokenizer {kind!r}; use {', '.join(LLAMA_CPP_PRE)}")


def byte_level_bpe(kind: PreTokenizerKind, normalization: Normalization, vocab: dict | None = None,
                   merges: list | None = None):
    """A `tokenizers.Tokenizer`: byte-level BPE (empty, or the given vocab and merges) behind our normalizer
    and the `kind` pre-tokenizer, with the ByteLevel decoder. Every tokenizer krllm trains is one."""
    from tokenizers import Tokenizer, decoders, models

    bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=IGNORE_MERGES[kind]) if vocab is not None \
        else models.BPE(ignore_merges=IGNORE_MERGES[kind])
    tok = Tokenizer(bpe)
    norm = build_normalizer(normalization)
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = build_pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    return tok


def build_splitter(kind: PreTokenizerKind):
    """The pre-tokenizer without the byte mapping: pieces are plain text (char-level training, previews)."""
    from tokenizers import Regex, pre_tokenizers

    if kind in SPLIT_PATTERNS:
        return pre_tokenizers.Split(Regex(SPLIT_PATTERNS[kind]), behavior="isolated")
    if kind == "gpt2":
        return pre_tokenizers.Split(Regex(GPT2_SPLIT_PATTERN), behavior="isolated")
    raise ValueError(f"unknown pre_tokenizer {kind!r}; use {', '.join(LLAMA_CPP_PRE)}")


def split_preview(text: str, kind: PreTokenizerKind = "korean") -> list[str]:
    """The pieces BPE sees for `text`, as readable strings (for docs, tests and debugging)."""
    if kind in SPLIT_PATTERNS:
        return [piece for piece, _ in build_splitter(kind).pre_tokenize_str(text)]
    byte_level = build_pre_tokenizer(kind)
    decode = {v: k for k, v in _bytes_to_unicode().items()}
    return [bytes(decode[c] for c in piece).decode("utf-8", errors="replace")
            for piece, _ in byte_level.pre_tokenize_str(text)]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet ByteLevel maps bytes to)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}
