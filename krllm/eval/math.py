"""Exact-match accuracy on arithmetic word problems: the last number in the answer must equal the truth.

The answer is read the way a grader reads a student's sheet: the number after a final-answer cue
(`정답`, `답`, `answer`, `=`, `####`) if there is one, else the last number in the text. Thousands
separators are dropped ("1,234" -> 1234), so is a trailing ".0"; anything that is not an integer
(e.g. "3.5") never matches an integer truth.
"""

from __future__ import annotations

import re

_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_CUES = re.compile(r"(?:####|정답|답|answer|Answer|ANSWER|=)\s*(?:은|는|:|is)?\s*[:：]?\s*(" + _NUM + ")")
_ANY = re.compile(_NUM)


def normalize_number(text: str) -> str | None:
    """'1,234' -> '1234', '-7' -> '-7', '012.50' -> '12.5', '12.0' -> '12'; None for a non-number."""
    t = text.replace(",", "").strip()
    if not re.fullmatch(r"-?\d+(?:\.\d+)?", t):
        return None
    negative, t = t.startswith("-"), t.lstrip("-")
    whole, _, frac = t.partition(".")
    frac = frac.rstrip("0")
    out = (whole.lstrip("0") or "0") + ("." + frac if frac else "")
    return "-" + out if negative and out != "0" else out


def extract_answer(text: str) -> str | None:
    """The final numeric answer in a model's text (see the module docstring), normalized; or None."""
    cued = _CUES.findall(text)
    if cued:
        return normalize_number(cued[-1])
    found = _ANY.findall(text)
    return normalize_number(found[-1]) if found else None


def is_correct(prediction: str, truth: str) -> bool:
    got = extract_answer(prediction)
    return got is not None and got == normalize_number(str(truth))


def exact_match(predictions: list[str], truths: list[str]) -> dict:
    """{"accuracy", "correct", "n"} over paired predictions and true answers."""
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} answers")
    correct = sum(is_correct(p, t) for p, t in zip(predictions, truths))
    return {"accuracy": correct / len(truths) if truths else 0.0, "correct": correct, "n": len(truths)}
