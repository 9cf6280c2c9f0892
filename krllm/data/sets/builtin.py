"""Built-in Korean prose: konlpy's law texts (shipped, offline) and LibreOffice's Korean help (fetched once).

`builtin:ko-law` = kolaw (the Constitution of the Republic of Korea) + kobill (ten National
Assembly bills): 11 plain UTF-8 files, ~65K characters. Read as package data files, so no Java
VM starts. Public-domain government works (Korean Copyright Act, Article 7).

`builtin:ko-help` = the Korean pages of LibreOffice's help (MPL-2.0), ~0.8M characters of Korean
paragraphs in ~2,000 documents (one per page): Debian's `libreoffice-help-ko`, downloaded with
`apt-get download` on first use and cached (krllm.data.sets.help_corpus). `builtin:en-help` = the
English paragraphs of the same (train) pages, from the English package fetched with it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator

BUILTIN_CORPORA = {
    "ko-law": "konlpy's law and bill texts (offline)",
    "ko-help": "LibreOffice's Korean help pages (Debian package, fetched once)",
    "en-help": "the English paragraphs of those help pages (train pages; the translation pairs' English side)",
}
KONLPY_DIRS = {"ko-law": ("kolaw", "kobill")}


def is_builtin(spec: str) -> bool:
    return str(spec).startswith("builtin:")


def _name(spec: str) -> str:
    name = str(spec).removeprefix("builtin:")
    if name not in BUILTIN_CORPORA:
        raise ValueError(f"unknown built-in corpus {spec!r}; available: "
                         + ", ".join(f"builtin:{k}" for k in BUILTIN_CORPORA))
    return name


def builtin_files(spec: str) -> list[Path]:
    """Files behind a `builtin:NAME` spec, sorted (deterministic order). `builtin:ko-help` is one
    text file with a blank line between pages (fetched first if not cached: may raise DataError)."""
    name = _name(spec)
    if name == "ko-help":
        from krllm.data.sets.help_corpus import text_file

        return [text_file()]
    if name == "en-help":
        from krllm.data.sets.help_corpus import english_text_file

        return [english_text_file()]
    root = Path(str(resources.files("konlpy") / "data" / "corpus"))
    files = []
    for sub in KONLPY_DIRS[name]:
        files.extend(sorted((root / sub).glob("*.txt")))
    if not files:
        raise FileNotFoundError(f"konlpy is installed but its corpus files are missing under {root}")
    return files


def builtin_inputs(spec: str) -> list[Path]:
    """The files whose content a `builtin:` corpus or the `builtin:ko-en-help[:split]` pairs come from
    (pipeline fingerprints hash them); ValueError for other specs (generated sets have no files)."""
    name, _, split = str(spec).removeprefix("builtin:").partition(":")
    if name == "ko-en-help":
        from krllm.data.sets.help_corpus import SPLITS, fetch

        if split not in ("", *SPLITS):
            raise ValueError(f"{spec!r}: builtin:ko-en-help takes :train or :heldout")
        return [fetch() / f"pairs-{split or 'train'}.jsonl"]
    return builtin_files(spec)


def builtin_documents(spec: str) -> Iterator[tuple[str, str]]:
    """Yield (document id, text): one per konlpy file, one per help page."""
    if _name(spec) == "ko-help":
        from krllm.data.sets.help_corpus import help_documents

        yield from help_documents()
        return
    if _name(spec) == "en-help":
        from krllm.data.sets.help_corpus import english_text_file

        for i, doc in enumerate(english_text_file().read_text(encoding="utf-8").split("\n\n")):
            if doc.strip():
                yield f"en-help/{i}", doc.strip("\n")
        return
    for path in builtin_files(spec):
        yield f"{path.parent.name}/{path.name}", path.read_text(encoding="utf-8")
