"""Data sets generated from a seed: offline, license-free and Korean-first.

    npc_dialogues(n, seed=0)            {"instruction", "input", "output"}   game-NPC role play
    math_problems(n, seed=0, lang="ko") {"question", "answer", "solution", "lang"}
    math_preference_pairs(n, seed=0, lang="ko")
                                        {"question", "chosen", "rejected", "answer", "rejected_answer",
                                         "flaw", "lang"}  the same problems, a right and a flawed solution
    sentiment_examples(n, seed=0)       {"text", "label"}  label in {"negative", "positive"}

Why generated: the only Korean prose that ships offline is ~65K characters of law text, far too
little to teach instruction following. These sets are built so a small fine-tuned model can learn
something checkable: every NPC reply is *computed from* the instruction (price list, rules, facts)
and the player's input (quantities, money, time), math answers are exact integers, and sentiment
labels follow from the text (with negation, contrast and sarcasm as harder cases).

Deterministic: the same (n, seed) gives the same list on any machine and Python version (only
`random.Random(seed)` draws over fixed tuples; no hashing, no set order). Record i depends only on
(seed, i), so `f(10, s)[:5] == f(5, s)`.

Math solution format: numbered steps, then a last line `정답: <integer>` (Korean) or
`Answer: <integer>` (English); `krllm.data.answers.extract_answer(text)` reads it back (also from
model output). The problem kinds and the flawed solutions live in `_gen_math.py`.
"""

from __future__ import annotations

import random
from typing import Iterator

from krllm.data.sets import _gen_math as math_mod
from krllm.data.sets import _gen_npc as npc_mod
from krllm.data.sets._gen_text import josa

__all__ = ["npc_dialogues", "math_problems", "math_preference_pairs", "sentiment_examples",
           "generated_documents", "generated_records", "is_generated", "default_size", "GENERATED_SETS", "josa"]


def _rng(seed: int, i: int, salt: str) -> random.Random:
    """One generator per record: record i never depends on how many records came before."""
    return random.Random(f"{salt}:{seed}:{i}")


# --------------------------------------------------------------------------- NPC dialogues

def npc_dialogues(n: int, seed: int = 0) -> list[dict]:
    """Korean game-NPC turns: {"instruction" (persona + facts), "input" (player), "output" (reply)}."""
    return [npc_mod.make_dialogue(_rng(seed, i, "npc")) for i in range(_check_n(n))]


# --------------------------------------------------------------------------- math word problems

def _check_lang(lang: str) -> str:
    if lang not in MATH_LANGS:
        raise ValueError(f"lang must be 'ko', 'en' or 'mixed', got {lang!r}")
    return lang


def math_problems(n: int, seed: int = 0, lang: str = "ko") -> list[dict]:
    """Arithmetic word problems with exact non-negative integer answers and step-by-step solutions."""
    _check_lang(lang)
    return [math_mod.make_problem(_rng(seed, i, f"math-{lang}"), lang)[0] for i in range(_check_n(n))]


def math_preference_pairs(n: int, seed: int = 0, lang: str = "ko") -> list[dict]:
    """DPO pairs over the very problems of `math_problems(n, seed, lang)`: the right solution is chosen, a
    flawed one (an arithmetic slip, no final line, or a wrong operation; see _gen_math) is rejected."""
    _check_lang(lang)
    out = []
    for i in range(_check_n(n)):
        rec, steps = math_mod.make_problem(_rng(seed, i, f"math-{lang}"), lang)
        rejected, flaw, wrong = math_mod.flawed_solution(_rng(seed, i, f"math-dpo-{lang}"), steps,
                                                         int(rec["answer"]), rec["lang"])
        out.append({"question": rec["question"], "chosen": rec["solution"], "rejected": rejected,
                    "answer": rec["answer"], "rejected_answer": None if wrong is None else str(wrong),
                    "flaw": flaw, "lang": rec["lang"]})
    return out


# --------------------------------------------------------------------------- sentiment

def sentiment_examples(n: int, seed: int = 0) -> list[dict]:
    """Short Korean reviews; label drawn 50/50 per record; ~25% contrast and ~20% negation/sarcasm cases."""
    from krllm.data.sets._gen_text import make_review

    out = []
    for i in range(_check_n(n)):
        r = _rng(seed, i, "sentiment")
        label = "positive" if r.random() < 0.5 else "negative"
        out.append({"text": make_review(r, label), "label": label})
    return out


# --------------------------------------------------------------------------- built-in specs

GENERATED_SETS: dict[str, tuple[int, str]] = {
    "npc": (2000, "Korean game-NPC dialogues (instruction, input, output)"),
    "math": (2000, "arithmetic word problems; builtin:math:ko (default), builtin:math:en, builtin:math:mixed"),
    "sentiment": (1000, "short Korean reviews labelled negative/positive"),
}
MATH_LANGS = ("ko", "en", "mixed")


def _parse(spec: str) -> tuple[str, str | None]:
    """`builtin:math:en` -> ("math", "en"); the same spelling krllm.data.sets.records uses."""
    name, _, option = str(spec).removeprefix("builtin:").partition(":")
    return name, option or None


def is_generated(spec: str) -> bool:
    if not str(spec).startswith("builtin:"):
        return False
    name, option = _parse(spec)
    return name in GENERATED_SETS and (option is None or (name == "math" and option in MATH_LANGS))


def default_size(spec: str) -> int:
    return GENERATED_SETS[_parse(spec)[0]][0]


def generated_records(spec: str, n: int | None = None, seed: int = 0) -> list[dict]:
    """The records of a `builtin:NAME[:OPTION]` spec (`n` defaults to the set's documented size)."""
    if not is_generated(spec):
        raise ValueError(f"unknown generated set {spec!r}; available: builtin:npc, builtin:math[:ko|en|mixed], "
                         "builtin:sentiment")
    name, option = _parse(spec)
    n = default_size(spec) if n is None else n
    if name == "npc":
        return npc_dialogues(n, seed)
    if name == "math":
        return math_problems(n, seed, option or "ko")
    return sentiment_examples(n, seed)


def generated_documents(spec: str, n: int | None = None, seed: int = 0) -> Iterator[tuple[str, str]]:
    """(id, plain text) per record, e.g. for tokenizer training or pretraining on `builtin:npc`."""
    name, option = _parse(spec)
    tag = f"{name}-{option}" if option else name
    for i, rec in enumerate(generated_records(spec, n, seed)):
        if name == "npc":
            text = f"{rec['instruction']}\n\n{rec['input']}\n\n{rec['output']}"
        elif name == "math":
            text = f"{rec['question']}\n\n{rec['solution']}"
        else:
            text = rec["text"]
        yield f"{tag}/{seed}/{i}", text


def _check_n(n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    return n
