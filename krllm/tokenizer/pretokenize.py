"""Normalizer, pre-tokenizer and special tokens of the krllm tokenizer, as HF `tokenizers` objects.

Everything here is representable in tokenizer.json, so transformers, tokenizers and converters
(llama.cpp, MLX) load the same pipeline without our code:

    normalizer      NFC (default) | NFKC | none      -- see "Round trip" below
    pre_tokenizer   Sequence([Split(Regex(KOREAN_SPLIT_PATTERN), "isolated"),
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

Normalization = Literal["nfc", "nfkc", "none"]
PreTokenizerKind = Literal["korean", "gpt2"]


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
    """`korean`: our Split regex then byte mapping. `gpt2`: GPT-2's own ByteLevel regex (the
    baseline without Korean-aware splitting: digits grouped, Hangul split only at spaces)."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "korean":
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(KOREAN_SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
            ]
        )
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    raise ValueError(f"unknown pre_tokenizer {kind!r}; use korean or gpt2")


def split_preview(text: str, kind: PreTokenizerKind = "korean") -> list[str]:
    """The pieces BPE sees for `text`, as readable strings (for docs, tests and debugging)."""
    from tokenizers import Regex, pre_tokenizers

    if kind == "korean":
        splitter = pre_tokenizers.Split(Regex(KOREAN_SPLIT_PATTERN), behavior="isolated")
        return [piece for piece, _ in splitter.pre_tokenize_str(text)]
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
