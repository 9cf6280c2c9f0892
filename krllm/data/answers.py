"""The one final-answer reader for math: the eval's exact match, the GRPO rewards and the generated sets use it.

Why one module: a model trained with a reward that reads answers one way and scored by an eval that
reads them another learns the wrong thing (or looks worse than it is). It lives in `data` so both
`train` and `eval` can import it.

Numbers: `42`, signs `-5` / `+5` / `−5`, thousands commas `1,234` (groups of three only), decimals
`3.50`, simple fractions `3/4`, `-1/2`, LaTeX `\\frac{3}{4}`. Values compare as exact rationals
(`fractions.Fraction`): `3.50 == 3.5`, `12.0 == 12`, `3/4 == 0.75`. `normalize_number` writes the
canonical form: an integer (`12`), else a finite decimal (`0.75`), else a reduced fraction (`1/3`).

Cues (a number right after one is a *cued* answer; markdown `**` and `$` around it are skipped):
    `#### 42`                               GSM8K
    `정답: 42`, `답: 42`, `정답은 42입니다`, `답은 42이다`, `정답 42`
                                            (`답` only as a word of its own, not inside `대답`)
    `Answer: 42`, `answer = 42`, `The answer is 42`, `Final answer: 42`   (any case; `answer`
                                            needs `:`, `=` or `is` after it, so "answer 3 questions" is no cue)
    `\\boxed{42}`, `\\boxed{\\frac{3}{4}}`   (a box whose content is not one number counts as a cue with
                                            no readable answer)
A trailing `= 42` is NOT a cue: worked solutions are full of `a + b = c` steps, and `12 ÷ 5 = 2
나머지 2` states a quotient that is not the answer. It still wins as the last number when no cue
exists.

Rules, in order:
1. Every cued answer is collected. If they all agree (the same value, repeated or written
   differently), that value is the answer, whatever other numbers the reasoning holds
   ("3 + 4 = 7, so 정답: 8" -> 8).
2. Two DIFFERENT cued answers ("정답: 12 ... 정답: 15", "\\boxed{3} or \\boxed{4}"), a cued answer with
   an alternative ("Answer: 12 or 15", "정답: 12 또는 15"), or a cue whose answer cannot be read
   (`\\boxed{x+1}`) -> None: a model must not be rewarded for hedging.
3. No cue at all: the last number in the text ("x = 3.50" -> "3.5").
4. No number at all -> None.
"""

from __future__ import annotations

import re
from fractions import Fraction

__all__ = ["extract_answer", "cued_answers", "is_final_answer_line", "normalize_number", "parse_number",
           "answers_equal"]

# one number: a LaTeX fraction, a plain fraction, a comma-grouped or plain integer with optional decimals
NUMBER = (r"(?<![A-Za-z0-9_.])[-+−]?(?:\\[dt]?frac\{\d+\}\{\d+\}|\d+/\d+(?![\d/])"
          r"|\d{1,3}(?:,\d{3})+(?!\d|,\d)(?:\.\d+)?|\d+(?:\.\d+)?)")
_NUM = re.compile(NUMBER)
_SKIP = r"[\s*$]*"  # markdown bold and math dollars between a cue and its number
_KO_CUE = r"(?:정답|(?<![가-힣])답)" + _SKIP + r"(?:은|는|이)?" + _SKIP + r"[:：=]?"
_EN_CUE = r"(?i:(?:final\s+)?answer)" + _SKIP + r"(?:[:：=]|(?i:is\b))" + _SKIP + r"[:：]?"
CUE = rf"(?:####|{_KO_CUE}|{_EN_CUE})"
_CUED = re.compile(CUE + _SKIP + "(" + NUMBER + r")(\s*(?:\bor\b|또는|혹은|아니면)\s*[-+−]?\d)?")
_BOX = r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}"
_BOXED = re.compile(_BOX)
_LEAD = r"(?:(?i:so|thus|therefore|hence|the)\b,?\s*|(?:따라서|그러므로),?\s*)*"
_FINAL_LINE = re.compile(rf"{_LEAD}(?:{CUE}{_SKIP}(?:{NUMBER}|{_BOX})|{_BOX})[^\d\n]{{0,12}}")


def parse_number(text: str | int | float) -> Fraction | None:
    """'1,234' / '-3.50' / '3/4' / '\\frac{3}{4}' / 12 -> an exact Fraction; None for anything else."""
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        return Fraction(str(text)) if text == text and abs(text) != float("inf") else None
    t = str(text).strip().replace("−", "-").replace("{,}", ",")
    sign = -1 if t.startswith("-") else 1
    t = t[1:] if t[:1] in "+-" else t
    if m := re.fullmatch(r"\\[dt]?frac\{(\d+)\}\{(\d+)\}", t) or re.fullmatch(r"(\d+)/(\d+)", t):
        num, den = int(m[1]), int(m[2])
        return sign * Fraction(num, den) if den else None
    if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", t):
        return sign * Fraction(t.replace(",", ""))
    return None


def _canonical(value: Fraction) -> str:
    """12 -> '12'; 3/4 -> '0.75' (a finite decimal); 1/3 -> '1/3'."""
    if value.denominator == 1:
        return str(value.numerator)
    den, twos, fives = value.denominator, 0, 0
    while den % 2 == 0:
        den, twos = den // 2, twos + 1
    while den % 5 == 0:
        den, fives = den // 5, fives + 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value) * 10 ** places  # an integer
    whole, frac = divmod(int(scaled), 10 ** places)
    return ("-" if value < 0 else "") + f"{whole}." + f"{frac:0{places}d}".rstrip("0")


def normalize_number(text: str | int | float) -> str | None:
    """'1,234' -> '1234', '+5' -> '5', '012.50' -> '12.5', '12.0' -> '12', '3/4' -> '0.75'; None otherwise."""
    value = parse_number(text)
    return None if value is None else _canonical(value)


def _boxed_value(content: str) -> str | None:
    """`42`, `1{,}234`, `\\frac{3}{4}`, `42 \\text{ apples}` -> the number; anything else (`x+1`, `3 or 4`) -> None."""
    inner = re.sub(r"\\text\{[^{}]*\}|\\[,!;: ]|\$", " ", content).strip()
    if (value := normalize_number(inner)) is not None:
        return value
    found = _NUM.findall(inner)
    unit = inner.replace(found[0], "", 1).strip() if len(found) == 1 else ""
    return normalize_number(found[0]) if unit.isalpha() else None  # one number and a unit word


def cued_answers(text: str) -> list[tuple[int, str | None]]:
    """(position, normalized value or None when unreadable) of every cued answer, in text order."""
    text = text or ""
    found = [(m.start(), None if m[2] else normalize_number(m[1])) for m in _CUED.finditer(text)]
    found += [(m.start(), _boxed_value(m[1])) for m in _BOXED.finditer(text)]
    return sorted(found)


def is_final_answer_line(line: str) -> bool:
    """A line that states only the final answer: `<cue> <number>` or `[<cue>] \\boxed{...}`, optionally led by
    so/thus/therefore/the/따라서/그러므로 and followed by at most 12 characters without a digit (a unit or an
    ending: `개`, ` won.`, `입니다.`); markdown `*` and `$` around the line are ignored."""
    return _FINAL_LINE.fullmatch(line.strip().strip("*$ ").strip()) is not None


def extract_answer(text: str) -> str | None:
    """The final numeric answer of `text`, normalized (rules in the module docstring); None if none or ambiguous."""
    cued = cued_answers(text)
    if cued:
        values = {v for _, v in cued}
        return values.pop() if len(values) == 1 else None  # a lone None stays None
    found = _NUM.findall(text or "")
    return normalize_number(found[-1]) if found else None


def reference_answer(truth: str | int | float) -> str | int | float:
    """The answer a reference states: itself when it is a number or plain text, else its cued final answer,
    so a worked solution such as GSM8K's `... #### 72` works as a ground truth as it is."""
    if parse_number(truth) is not None or not isinstance(truth, str) or not cued_answers(truth):
        return truth
    stated = extract_answer(truth)  # with a cue present: the one cued value, or None when they disagree
    return stated if stated is not None else truth


def is_correct(prediction: str, truth: str | int | float) -> bool:
    """Whether a model's text states the reference's answer: the one rule of the math reward and the eval."""
    return answers_equal(extract_answer(prediction), reference_answer(truth))


def answers_equal(a: str | int | float | None, b: str | int | float | None) -> bool:
    """Equal as exact numbers when both are numbers (3/4 == 0.75 == '0.750'), else as trimmed, case-folded text."""
    if a is None or b is None:
        return False
    x, y = parse_number(a), parse_number(b)
    if x is not None and y is not None:
        return x == y
    if x is not None or y is not None:
        return False
    return str(a).strip().casefold() == str(b).strip().casefold()
