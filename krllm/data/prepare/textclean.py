"""Korean text cleaning and the small pure functions the data pipeline is built from.

Pure functions (no datatrove here) so they are easy to test and reuse: `clean_text` (HTML tags,
control characters, Unicode normalization, whitespace), `hangul_ratio`, `dedupe_key` (what exact
dedupe hashes) and `split_of` (the stable train/val/test assignment of a document).

Speed matters: `krllm data prepare` runs these on every byte of the corpus, so the character
classes are precomputed lookup tables / compiled regexes, and character counting goes through
numpy (`text.encode("utf-32-le")` viewed as code points) instead of a Python loop.
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
from typing import Literal

import numpy as np

Normalization = Literal["NFC", "NFKC", "none"]

# Script/style blocks are dropped with their content; other tags are dropped, keeping their text.
_HTML_DROP_BLOCK = re.compile(r"<(script|style|noscript)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Block-level tags become line breaks so paragraphs survive; `<` must be followed by a letter (or
# `/letter`) so "a < b" and "x<3" are left alone.
_HTML_BREAK_TAG = re.compile(r"</?(?:br|p|div|li|ul|ol|tr|h[1-6]|table|section|article|blockquote)\b[^<>]*>",
                             re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")
_HTML_ENTITY = re.compile(r"&(?:#\d{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")

# C0/C1 control characters except tab and newline, plus invisible format characters that only get
# in the way of training (zero-width space, word joiner, BOM, soft hyphen). ZWJ/ZWNJ are kept:
# they change how emoji and some scripts render.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2060\ufeff\u00ad]")
# Every horizontal whitespace character (NBSP, ideographic space, en/em spaces, tabs...) -> one space.
# Only runs and non-ASCII/tab spaces match, so ordinary single spaces cost nothing.
_HSPACE_RUN = re.compile(r"[^\S\n]{2,}|[^\S\n ]")
_SPACE_AROUND_NEWLINE = re.compile(r" \n ?|\n ")
_MANY_NEWLINES = re.compile(r"\n{3,}")


def _char_tables() -> tuple[np.ndarray, np.ndarray]:
    """Boolean lookup tables over the Basic Multilingual Plane: is-letter and is-Hangul."""
    letter = np.zeros(0x10000, dtype=bool)
    for cp in range(0x10000):
        if unicodedata.category(chr(cp)).startswith("L"):
            letter[cp] = True
    hangul = np.zeros(0x10000, dtype=bool)
    hangul[0xAC00:0xD7A4] = True  # syllables
    hangul[0x1100:0x1200] = True  # conjoining jamo
    hangul[0x3131:0x318F] = True  # compatibility jamo
    hangul[0xA960:0xA980] = True  # jamo extended-A
    hangul[0xD7B0:0xD800] = True  # jamo extended-B
    return letter, hangul & letter


_IS_LETTER, _IS_HANGUL = _char_tables()


def strip_html(text: str) -> str:
    """Remove HTML/XML markup and decode entities (`&amp;` -> `&`); plain text is returned as is."""
    if "<" in text:
        text = _HTML_DROP_BLOCK.sub("", text)
        text = _HTML_COMMENT.sub("", text)
        text = _HTML_BREAK_TAG.sub("\n", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text and _HTML_ENTITY.search(text):
        text = html.unescape(text)
    return text


def _maybe_dirty(text: str) -> bool:
    """False when no control character, odd space or space run can be in `text` (C-speed checks:
    `isprintable` is False for every control/format character and every space but " ")."""
    if "  " in text or " \n" in text or "\n " in text or "\n\n\n" in text:
        return True
    return not all(map(str.isprintable, text.split("\n")))


def clean_text(text: str, normalization: Normalization = "NFC", strip_html_tags: bool = True,
               remove_control: bool = True, collapse_whitespace: bool = True) -> str:
    """The Korean cleaning step: markup, control characters, Unicode form, whitespace.

    Whitespace collapsing keeps the paragraph structure: runs of spaces/tabs become one space,
    lines are stripped, and at most one blank line separates paragraphs. Text that is already
    clean takes a fast path (no regex passes).
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if strip_html_tags:
        text = strip_html(text)
    dirty = _maybe_dirty(text)
    if remove_control and dirty:
        text = _CONTROL.sub("", text)
    if normalization != "none" and not unicodedata.is_normalized(normalization, text):
        text = unicodedata.normalize(normalization, text)
        dirty = _maybe_dirty(text)  # NFKC can turn compatibility characters into spaces
    if collapse_whitespace:
        if dirty:
            text = _HSPACE_RUN.sub(" ", text)
            if "\n" in text:
                text = _SPACE_AROUND_NEWLINE.sub("\n", text)
                text = _MANY_NEWLINES.sub("\n\n", text)
        text = text.strip()
    return text


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def hangul_ratio(text: str) -> float:
    """Hangul letters / all letters (Unicode category L*). Digits, punctuation, spaces don't count;
    a text without letters has ratio 0. Letters outside the BMP count as non-Hangul letters."""
    cps = _code_points(text)
    bmp = cps[cps < 0x10000]
    n_letters = int(np.count_nonzero(_IS_LETTER[bmp])) + (len(cps) - len(bmp))
    if n_letters == 0:
        return 0.0
    return int(np.count_nonzero(_IS_HANGUL[bmp])) / n_letters


def dedupe_key(text: str) -> bytes:
    """What exact dedupe compares: case-folded text with all whitespace collapsed to one space, so
    documents that differ only in spacing, line breaks or letter case count as duplicates."""
    return " ".join(text.lower().split()).encode("utf-8")


SPLITS = ("train", "val", "test")


def split_of(text: str, val: float, test: float, seed: int = 0) -> str:
    """Stable split of a document from a hash of its (cleaned) text and the seed.

    The same text lands in the same split on every run and machine, whatever the worker count or
    input order; a fraction `test` of documents goes to test, `val` to val, the rest to train.
    """
    h = hashlib.blake2b(text.encode("utf-8"), digest_size=8, salt=seed.to_bytes(8, "little", signed=True))
    u = int.from_bytes(h.digest(), "little") / 2.0**64
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"
