"""krllm.data.answers: the one final-answer reader (eval exact match, GRPO rewards, generated sets)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from krllm.data.answers import (
    answers_equal,
    cued_answers,
    extract_answer,
    is_final_answer_line,
    normalize_number,
    parse_number,
)
from krllm.data.sets.generated import math_preference_pairs, math_problems


@pytest.mark.parametrize("text,want", [
    # every cue form of the issue
    ("#### 42", "42"),
    ("답: 42", "42"),
    ("정답: 42", "42"),
    ("정답：42", "42"),  # full-width colon
    ("정답은 42입니다", "42"),
    ("답은 42이다", "42"),
    ("정답 42", "42"),
    ("Answer: 42", "42"),
    ("The answer is 42.", "42"),
    ("FINAL ANSWER: 42", "42"),
    ("answer = 42", "42"),
    ("\\boxed{42}", "42"),
    ("**정답:** 42", "42"),
    ("Answer: $42$", "42"),
    # numbers
    ("정답은 1,234입니다.", "1234"),
    ("Answer: 1,234,567", "1234567"),
    ("The total is 1,234, so we stop", "1234"),  # a comma after the number is punctuation
    ("Answer: -5", "-5"),
    ("Answer: +5", "5"),
    ("Answer: −5", "-5"),  # U+2212 minus
    ("Answer: 3.50", "3.5"),
    ("The answer is 12.0", "12"),
    ("답: 007", "7"),
    ("Answer: 3/4", "0.75"),
    ("정답: -1/2", "-0.5"),
    ("정답: 2/6", "1/3"),
    ("Answer: $\\frac{3}{4}$", "0.75"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{1{,}234}", "1234"),
    ("\\boxed{42 \\text{ apples}}", "42"),
    # a cued answer wins over numbers in the reasoning
    ("3 + 4 = 7, so 정답: 8", "8"),
    ("풀이:\n1. 12 + 30 = 42\n2. 42 - 2 = 40\n정답: 40\n(검산: 40 + 2 = 42)", "40"),
    ("Answer: \\boxed{42}", "42"),  # a cue and a box, one answer
    ("정답: 8\n다시 확인하면 Answer: 8.0", "8"),  # the same answer repeated is fine
    # no cue: the last number; `=` is not a cue
    ("3 + 4 = 7. 그리고 7 * 2 = 14", "14"),
    ("x = 3.50", "3.5"),
    ("7-4", "4"),  # a minus between numbers is not a sign
    ("12 ÷ 5 = 2 나머지 2", "2"),
    ("I will answer 3 questions, then 5 more", "5"),  # 'answer' without ':' / 'is' is no cue
    ("대답 5", "5"),  # 답 inside 대답 is no cue
    # ambiguous or none
    ("정답: 12 ... 정답: 15", None),
    ("Answer: 12 ... wait. Answer: 1,234", None),
    ("\\boxed{3} or \\boxed{4}", None),
    ("Answer: 12 or 15", None),
    ("정답: 12 또는 15", None),
    ("\\boxed{x+1}", None),  # a cue with no readable number
    ("모르겠어요", None),
    ("", None),
])
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_cue_beats_the_last_number_and_positions_are_reported():
    text = "정답: 8, 왜냐하면 3 + 5 = 8이고 다른 수 99도 있다"
    assert extract_answer(text) == "8"  # without the cue the last number (99) would win
    assert cued_answers(text) == [(0, "8")]
    assert cued_answers("a\n\\boxed{3} or \\boxed{4}") == [(2, "3"), (15, "4")]


@pytest.mark.parametrize("text,want", [
    ("1,234", Fraction(1234)), ("-3.50", Fraction(-7, 2)), ("+5", Fraction(5)), ("3/4", Fraction(3, 4)),
    ("\\frac{1}{3}", Fraction(1, 3)), (12, Fraction(12)), (0.25, Fraction(1, 4)),
    ("1/0", None), ("12,34", None), ("abc", None), ("", None), (True, None), (float("nan"), None),
])
def test_parse_number(text, want):
    assert parse_number(text) == want


def test_normalize_number_is_canonical():
    assert [normalize_number(x) for x in ("1,234", "-7", "012.50", "12.0", "3/4", "-2/8", "1/3", "-0.0", "0.125")] \
        == ["1234", "-7", "12.5", "12", "0.75", "-0.25", "1/3", "0", "0.125"]
    assert normalize_number("seven") is None


def test_answers_equal_compares_exact_rationals():
    assert answers_equal("3/4", "0.75") and answers_equal("0.750", 0.75) and answers_equal("12", "12.0")
    assert answers_equal(7, "7") and answers_equal("1,234", 1234) and answers_equal("-1/2", "-0.5")
    assert not answers_equal("1/3", "0.33") and not answers_equal("3", "3.5") and not answers_equal("-5", "5")
    assert not answers_equal(None, "3") and not answers_equal("3", None)
    assert answers_equal(" Seoul ", "seoul") and not answers_equal("7", "seven")  # text: trimmed, case-folded


@pytest.mark.parametrize("line,want", [
    ("정답: 42", True), ("정답은 42개입니다.", True), ("Answer: 42 won.", True), ("**Answer:** 42", True),
    ("So the answer is 12.", True), ("따라서 정답은 7입니다.", True), ("#### 1,234", True),
    ("$\\boxed{42}$", True), ("Answer: \\boxed{\\frac{3}{4}}", True),
    ("42", False), ("3 + 4 = 7", False), ("정답: 12 또는 15개", False), ("Answer: 12 or 15", False),
    ("정답을 구하면 다음과 같습니다", False), ("Answer: 42 because 6 × 7 = 42", False),
])
def test_is_final_answer_line(line, want):
    assert is_final_answer_line(line) is want


@pytest.mark.parametrize("lang", ["ko", "en"])
def test_reads_every_generated_solution(lang):
    """The decision that `=` is no cue, checked on the built-in solutions: steps full of `a + b = c`,
    remainders `12 ÷ 5 = 2 나머지 2`, and the final `정답: N` / `Answer: N` line."""
    for r in math_problems(2000, seed=11, lang=lang):
        assert extract_answer(r["solution"]) == r["answer"], r
        assert is_final_answer_line(r["solution"].splitlines()[-1])
        assert len(cued_answers(r["solution"])) == 1


def test_reads_the_rejected_side_of_every_preference_pair():
    for p in math_preference_pairs(600, seed=4, lang="mixed"):
        if p["flaw"] == "no_final":
            assert cued_answers(p["rejected"]) == []
        else:
            assert extract_answer(p["rejected"]) == p["rejected_answer"] != p["answer"], p
