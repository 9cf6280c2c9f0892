"""LibreOffice's help in Korean and English: a larger real Korean corpus and Korean↔English pairs.

    builtin:ko-help                  Korean help pages as text, one document per page
    builtin:en-help                  the English paragraphs matching them (train pages), one document per page
    builtin:ko-en-help[:train|heldout]
                                     paragraphs whose `id` matches an English paragraph: {"id", "ko", "en"}

Why this source: the only Korean prose a Python package ships is ~65K characters of law text
(`builtin:ko-law`). Debian packages LibreOffice's help (MPL-2.0) per language; the Korean pages are
human translations of the English ones, paragraph by paragraph, with the same `id` attributes, so
matching ids gives real parallel text. Fetched once with `apt-get download` (no root needed once
package lists exist), the HTML read straight out of the .deb (krllm.data.sets._deb), parsed into a
cache directory (`$KRLLM_CACHE`, else `$XDG_CACHE_HOME/krllm`, else `~/.cache/krllm`):

    ko-help-v1/manifest.json        packages (version, sha256), counts, split rule
    ko-help-v1/paragraphs.jsonl.gz  every id'd paragraph of the Korean pages: {"page", "id", "ko", "en", "lang"}
    ko-help-v1/ko-help.txt          Korean paragraphs of the train pages; a blank line between pages
    ko-help-v1/pairs-{train,heldout}.jsonl

The directory is built under a temporary name and renamed into place, so an interrupted fetch leaves
nothing half-written and a present cache is never downloaded again (`--force` rebuilds it).

Untranslated text: about half the paragraphs of the Korean pages are still English (`lang: "en"`, no
Hangul). `builtin:ko-help` keeps only paragraphs with Hangul (`lang: "ko"`, mixed Korean/English
ones included); pairs need a Korean side with Hangul that differs from the English.

Held-out split: a page is held out when sha256(page path) falls in the first HELDOUT_PERCENT% of the
hash range; all of its pairs go to `heldout`, and its Korean text stays out of `builtin:ko-help`, so
a model pretrained on ko-help and fine-tuned on `:train` has never seen a held-out pair. Held-out
pairs whose Korean or English text also occurs in a train page are dropped (a boilerplate sentence
repeated on many pages would otherwise leak); exact duplicate pairs are kept once per split.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import sys
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterator

from krllm.data.sets import _deb
from krllm.errors import DataError

PACKAGES = {"ko": "libreoffice-help-ko", "en": "libreoffice-help-en-us"}
HELP_TEXT = {"ko": "usr/share/libreoffice/help/ko/text/", "en": "usr/share/libreoffice/help/en-US/text/"}
FORMAT = 1  # bump when parsing or the cache layout changes: the cache directory is named after it
CACHE_NAME = f"ko-help-v{FORMAT}"
HELDOUT_PERCENT = 5
SPLITS = ("train", "heldout")
SOURCE_URL = "https://packages.debian.org/stable/libreoffice-help-ko"
FALLBACK = ("Elsewhere, download libreoffice-help-ko and libreoffice-help-en-us (the .deb files, 'all' "
            f"architecture) from {SOURCE_URL} and https://packages.debian.org/stable/libreoffice-help-en-us, then run "
            "`krllm data fetch ko-help --deb libreoffice-help-ko_*.deb --deb libreoffice-help-en-us_*.deb`; "
            "or use builtin:ko-law, which works offline.")

HANGUL = re.compile("[\uac00-\ud7a3]")  # precomposed syllables
LATIN = re.compile("[A-Za-z]")
PARAGRAPH_ID = re.compile(r"^(par|hd)_")
BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6"}


# ---------------------------------------------------------------- cache location

def cache_dir() -> Path:
    from krllm.runs import cache_root

    return cache_root() / CACHE_NAME


# ---------------------------------------------------------------- HTML -> paragraphs

class HelpPageParser(HTMLParser):
    """The id'd paragraphs and headings of one help page, as (id, text) with whitespace collapsed.

    A `switchinline` span holds one variant per OS or module (hidden spans with a class such as
    MAC or WRITER) and a default (hidden, no class): only the default is kept, as the help viewer
    shows it. Text outside id'd <p>/<h1-6> (navigation, embedded snippets, code blocks) is dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[tuple[str, str]] = []
        self._cur: tuple[str, str] | None = None  # (id, tag) being captured
        self._depth = 0  # nesting of the captured tag
        self._parts: list[str] = []
        self._skip: tuple[str, int] | None = None  # (tag, nesting) of a skipped subtree

    def handle_starttag(self, tag, attrs):
        if self._skip is not None:
            if tag == self._skip[0]:
                self._skip = (tag, self._skip[1] + 1)
            return
        a = dict(attrs)
        if tag in ("script", "style") or ("hidden" in a and a.get("class")):
            self._skip = (tag, 1)
            return
        if tag in BLOCKS and PARAGRAPH_ID.match(a.get("id") or ""):
            self._finish()
            self._cur, self._depth, self._parts = (a["id"], tag), 1, []
        elif self._cur is not None and tag == self._cur[1]:
            self._depth += 1
        elif self._cur is not None and tag == "br":
            self._parts.append(" ")

    def handle_endtag(self, tag):
        if self._skip is not None:
            if tag == self._skip[0]:
                n = self._skip[1] - 1
                self._skip = (tag, n) if n else None
            return
        if self._cur is not None and tag == self._cur[1]:
            self._depth -= 1
            if self._depth == 0:
                self._finish()

    def handle_data(self, data):
        if self._cur is not None and self._skip is None:
            self._parts.append(data)

    def _finish(self):
        if self._cur is not None:
            text = " ".join("".join(self._parts).split())
            if text:
                self.paragraphs.append((self._cur[0], text))
        self._cur, self._parts = None, []

    def close(self):
        super().close()
        self._finish()


def parse_page(html: str) -> list[tuple[str, str]]:
    """(key, text) per paragraph; a repeated id gets `#2`, `#3`, ... in order of appearance."""
    p = HelpPageParser()
    p.feed(html)
    p.close()
    seen: dict[str, int] = {}
    out = []
    for pid, text in p.paragraphs:
        seen[pid] = seen.get(pid, 0) + 1
        out.append((pid if seen[pid] == 1 else f"{pid}#{seen[pid]}", text))
    return out


def read_help_deb(deb: str | Path, lang: str) -> dict[str, list[tuple[str, str]]]:
    """Page path (e.g. `text/shared/guide/autocorr_url.html`, the same in both languages) -> paragraphs."""
    root = HELP_TEXT[lang]
    pages = {}
    for path, data in _deb.iter_deb_files(deb, root, ".html"):
        try:
            html = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{deb}: {path} is not UTF-8 ({e.reason} at byte {e.start})") from None
        pages["text/" + path[len(root):]] = parse_page(html)
    if not pages:
        raise DataError(f"{deb}: no help pages under /{root} (is this {PACKAGES[lang]}?)")
    return pages


def lang_of(text: str) -> str:
    """ko: has Hangul; en: no Hangul but Latin letters (left untranslated); none: digits, symbols."""
    return "ko" if HANGUL.search(text) else "en" if LATIN.search(text) else "none"


def is_heldout(page: str) -> bool:
    """Deterministic page-level split: the same on every machine and Python version."""
    return int(hashlib.sha256(page.encode()).hexdigest()[:8], 16) % 100 < HELDOUT_PERCENT


# ---------------------------------------------------------------- build the cache

def build_cache(ko_deb: Path, en_deb: Path, out: Path) -> dict:
    """Parse both packages into `out` (paragraphs, text, pairs); returns the manifest it writes."""
    import orjson

    ko_deb, en_deb = Path(ko_deb), Path(en_deb)
    ko, en = read_help_deb(ko_deb, "ko"), read_help_deb(en_deb, "en")
    en_by_page = {page: dict(paras) for page, paras in en.items()}
    rows, texts = [], []
    pairs: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for page in sorted(ko):
        english = en_by_page.get(page, {})
        korean = []
        for key, text in ko[page]:
            lang, en_text = lang_of(text), english.get(key)
            rows.append({"page": page, "id": key, "ko": text, "en": en_text, "lang": lang})
            if lang == "ko":
                korean.append(text)
                if en_text and en_text != text:
                    split = "heldout" if is_heldout(page) else "train"
                    pairs[split].append({"id": f"{page}#{key}", "ko": text, "en": en_text})
        if korean and not is_heldout(page):
            texts.append("\n".join(korean))
    pairs = _dedupe(pairs)
    with gzip.GzipFile(out / "paragraphs.jsonl.gz", "wb", mtime=0) as f:  # 13.6 MB -> ~2 MB
        f.writelines(orjson.dumps(r) + b"\n" for r in rows)
    for split, items in pairs.items():
        with open(out / f"pairs-{split}.jsonl", "wb") as f:
            f.writelines(orjson.dumps(r) + b"\n" for r in items)
    (out / "ko-help.txt").write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    manifest = {
        "format": FORMAT,
        "source": {lang: {"package": PACKAGES[lang], "version": _deb.deb_version(deb), "file": deb.name,
                          "sha256": _sha256(deb), "bytes": deb.stat().st_size}
                   for lang, deb in (("ko", ko_deb), ("en", en_deb))},
        "license": "MPL-2.0 (parts Apache-2.0; © Oracle and LibreOffice contributors; the packages' copyright file)",
        "split": f"page held out when int(sha256(page)[:8], 16) % 100 < {HELDOUT_PERCENT}",
        "counts": _counts(ko, en, rows, texts, pairs),
    }
    (out / "manifest.json").write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _dedupe(pairs: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Each (ko, en) once per split; held-out pairs whose ko or en text a train pair has are dropped."""
    out, train_ko, train_en = {}, {p["ko"] for p in pairs["train"]}, {p["en"] for p in pairs["train"]}
    for split, items in pairs.items():
        seen, kept = set(), []
        for p in items:
            if (p["ko"], p["en"]) in seen or (split == "heldout" and (p["ko"] in train_ko or p["en"] in train_en)):
                continue
            seen.add((p["ko"], p["en"]))
            kept.append(p)
        out[split] = kept
    return out


def _counts(ko, en, rows, texts, pairs) -> dict:
    korean = [r["ko"] for r in rows if r["lang"] == "ko"]
    all_text = [r["ko"] for r in rows]
    return {
        "pages": len(ko), "pages_en": len(en), "pages_heldout": sum(map(is_heldout, ko)),
        "paragraphs": len(rows),
        "paragraphs_by_lang": {k: sum(r["lang"] == k for r in rows) for k in ("ko", "en", "none")},
        "chars_all_paragraphs": sum(map(len, all_text)),
        "chars_korean_paragraphs": sum(map(len, korean)),
        "hangul_syllables": sum(len(HANGUL.findall(t)) for t in korean),
        "id_matches_english": sum(r["en"] is not None for r in rows),
        "pairs_raw": sum(r["lang"] == "ko" and bool(r["en"]) and r["en"] != r["ko"] for r in rows),
        "pairs": {s: len(p) for s, p in pairs.items()},
        "ko_help_text": {"documents": len(texts), "chars": sum(map(len, texts)),
                         "hangul_syllables": sum(len(HANGUL.findall(t)) for t in texts)},
    }


def _sha256(path: Path) -> str:
    from krllm.runs import hash_file

    return hash_file(path)


def _download(dest: Path) -> dict[str, Path]:
    """lang -> .deb path, via apt-get download (tests replace this)."""
    got = _deb.apt_download(list(PACKAGES.values()), dest, "builtin:ko-help", FALLBACK)
    return {lang: got[pkg] for lang, pkg in PACKAGES.items()}


def fetch(debs: list[str | Path] | None = None, force: bool = False,
          log: Callable[[str], None] | None = None) -> Path:
    """The cache directory, built on first use: download (or take `debs`), parse, rename into place."""
    final = cache_dir()
    if (final / "manifest.json").is_file() and not force:
        return final
    from krllm.runs import atomic_dir

    log = log or (lambda msg: print(msg, file=sys.stderr))
    t0 = time.perf_counter()
    with atomic_dir(final) as tmp, tempfile.TemporaryDirectory(dir=final.parent, prefix=".debs-") as dl:
        if debs:
            found = _match_debs([Path(d) for d in debs])
        else:
            log(f"builtin:ko-help: apt-get download {' '.join(PACKAGES.values())} (~5 MB, once) -> {final}")
            found = _download(Path(dl))
        manifest = build_cache(found["ko"], found["en"], tmp)
        manifest["build_seconds"] = round(time.perf_counter() - t0, 2)
        from krllm.runs import write_json

        write_json(tmp / "manifest.json", manifest)
    c = manifest["counts"]
    log(f"builtin:ko-help: {c['pages']} pages, {c['ko_help_text']['chars']:,} characters of Korean text, "
        f"{c['pairs']['train']:,} train + {c['pairs']['heldout']:,} held-out pairs in {manifest['build_seconds']} s")
    return final


def _match_debs(paths: list[Path]) -> dict[str, Path]:
    found = {}
    for p in paths:
        if not p.is_file():
            raise DataError(f"--deb {p}: file not found")
        lang = next((lang for lang, pkg in PACKAGES.items() if p.name.startswith(pkg + "_")), None)
        if lang is None:
            raise DataError(f"--deb {p}: expected a file named {PACKAGES['ko']}_*.deb or {PACKAGES['en']}_*.deb")
        found[lang] = p
    missing = [PACKAGES[lang] for lang in PACKAGES if lang not in found]
    if missing:
        raise DataError(f"--deb: also pass the {' and '.join(missing)} package file")
    return found


def remove_cache() -> None:
    shutil.rmtree(cache_dir(), ignore_errors=True)


# ---------------------------------------------------------------- readers (fetch on first use)

def read_manifest() -> dict:
    from krllm.runs import read_json_object

    return read_json_object(fetch() / "manifest.json")


def text_file() -> Path:
    """The `builtin:ko-help` text (train pages only), for `krllm data prepare` (txt, paragraph mode = per page)."""
    return fetch() / "ko-help.txt"


ENGLISH_TEXT = "en-help.txt"  # derived from paragraphs.jsonl.gz on first use (no re-download, same FORMAT)


def english_text_file() -> Path:
    """The `builtin:en-help` text: the English paragraph of every id'd paragraph of the train pages (the
    English side of the pairs and its context), a blank line between pages: English prose for a tokenizer
    and a pretraining corpus that cover both languages of the translation pairs. Held-out pages stay out,
    and so does any paragraph equal to a held-out pair's English (a sentence repeated on several pages)."""
    from krllm.config import atomic_write_text

    path = fetch() / ENGLISH_TEXT
    if not path.exists():
        heldout = {p["en"] for p in help_pairs("heldout")}
        pages: dict[str, list[str]] = {}
        for row in paragraphs():
            text = row.get("en") or ""
            if LATIN.search(text) and not HANGUL.search(text) and not is_heldout(row["page"]) and text not in heldout:
                pages.setdefault(row["page"], []).append(text)
        atomic_write_text(path, "\n\n".join("\n".join(p) for p in pages.values()) + "\n")
    return path


def help_documents() -> Iterator[tuple[str, str]]:
    """(page number, text) per train page with Korean text."""
    text = text_file().read_text(encoding="utf-8")
    for i, doc in enumerate(text.split("\n\n")):
        if doc.strip():
            yield f"ko-help/{i}", doc.strip("\n")


def _read_jsonl(path: Path) -> Iterator[dict]:
    """Our own cache files (not krllm.data.sources, which imports this module through builtin.py)."""
    import orjson

    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
        for line in fh:
            yield orjson.loads(line)


def paragraphs() -> Iterator[dict]:
    """Every id'd paragraph of the Korean pages (both splits): {"page", "id", "ko", "en", "lang"}."""
    yield from _read_jsonl(fetch() / "paragraphs.jsonl.gz")


def help_pairs(split: str = "train") -> list[dict]:
    """Korean↔English pairs {"id", "ko", "en"} of one split (train | heldout), in page order."""
    if split not in SPLITS:
        raise DataError(f"builtin:ko-en-help split {split!r}: use one of {', '.join(SPLITS)}")
    return list(_read_jsonl(fetch() / f"pairs-{split}.jsonl"))


TRANSLATE_KO_EN = "다음 문장을 영어로 번역하세요."  # the user turn of a pair as an SFT record


def sample_pairs(split: str = "train", n: int | None = None, seed: int = 0) -> list[dict]:
    """The pairs of `split` in a seeded order (the whole split when n is None or larger)."""
    import random

    pairs = help_pairs(split)
    random.Random(f"ko-en-help:{split}:{seed}").shuffle(pairs)
    return pairs if n is None else pairs[:n]


def translation_messages(pair: dict) -> list[dict]:
    """A pair as a Korean->English chat turn (what `builtin:ko-en-help` gives as SFT records)."""
    return [{"role": "user", "content": f"{TRANSLATE_KO_EN}\n\n{pair['ko']}"},
            {"role": "assistant", "content": pair["en"]}]
