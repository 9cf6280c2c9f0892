"""Built-in Korean prose that works offline: the law and bill texts shipped by `konlpy`.

`builtin:ko-law` = kolaw (the Constitution of the Republic of Korea) + kobill (ten National
Assembly bills): 11 plain UTF-8 files, ~65K characters. Read as package data files, so no Java
VM starts. Public-domain government works (Korean Copyright Act, Article 7).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Iterator

BUILTIN_CORPORA = {"ko-law": ("kolaw", "kobill")}


def is_builtin(spec: str) -> bool:
    return str(spec).startswith("builtin:")


def builtin_files(spec: str) -> list[Path]:
    """Files behind a `builtin:NAME` spec, sorted (deterministic order)."""
    name = str(spec).removeprefix("builtin:")
    if name not in BUILTIN_CORPORA:
        raise ValueError(f"unknown built-in corpus {spec!r}; available: "
                         + ", ".join(f"builtin:{k}" for k in BUILTIN_CORPORA))
    root = Path(str(resources.files("konlpy") / "data" / "corpus"))
    files = []
    for sub in BUILTIN_CORPORA[name]:
        files.extend(sorted((root / sub).glob("*.txt")))
    if not files:
        raise FileNotFoundError(f"konlpy is installed but its corpus files are missing under {root}")
    return files


def builtin_documents(spec: str) -> Iterator[tuple[str, str]]:
    """Yield (document id, text) for each file of a built-in corpus."""
    for path in builtin_files(spec):
        yield f"{path.parent.name}/{path.name}", path.read_text(encoding="utf-8")
