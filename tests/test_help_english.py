"""builtin:en-help: the English paragraphs of the help's train pages (the translation pipeline's English text),
derived from the cache on first use, never holding a held-out page or a held-out pair's English."""

from __future__ import annotations

from krllm.data.sets import help_corpus as H
from krllm.data.sets.builtin import builtin_documents, builtin_files
from tests.test_help_corpus import cache, debs  # noqa: F401  (fixtures)


def test_english_text_is_the_train_pages_english(cache, debs):  # noqa: F811
    H.fetch(debs=list(debs), log=lambda m: None)
    assert not (cache / H.CACHE_NAME / H.ENGLISH_TEXT).exists()
    docs = list(builtin_documents("builtin:en-help"))
    assert builtin_files("builtin:en-help") == [cache / H.CACHE_NAME / H.ENGLISH_TEXT]
    assert docs == [("en-help/0", "Turning off Automatic URL Recognition\nChoose Tools - Options.\n"
                                  "The following texts are changed to hyperlinks:\n=SUM(1;2)\nExample:\nSame id"),
                    ("en-help/1", "Example:\nA translated sentence.")]
    text = "\n".join(t for _, t in docs)
    held = H.help_pairs("heldout")
    assert held and all(p["en"] not in text.splitlines() for p in held)
    assert "Held page" not in text and "Another sentence." not in text
    assert all(p["en"] in text for p in H.help_pairs("train"))
