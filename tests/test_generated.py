"""Generated data sets: deterministic, grammatical, and every answer re-derived independently."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from krllm.data.sets.generated import (
    generated_documents,
    generated_records,
    is_generated,
    josa,
    math_preference_pairs,
    math_problems,
    npc_dialogues,
    sentiment_examples,
)


def _digest(records) -> str:
    return hashlib.sha256(json.dumps(records, ensure_ascii=False, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("make", [npc_dialogues, sentiment_examples, lambda n, s: math_problems(n, s, "mixed")])
def test_deterministic_and_prefix_stable(make):
    a, b = make(60, 7), make(60, 7)
    assert a == b
    assert make(25, 7) == a[:25]  # record i depends only on (seed, i)
    assert make(60, 8) != a
    assert len({json.dumps(r, ensure_ascii=False) for r in a}) >= 55  # not one template repeated


def test_same_output_on_any_machine():
    """Pinned digests: a change here means every machine's data changed (update docs/data.md too)."""
    got = {"npc": _digest(npc_dialogues(50, 0)), "math": _digest(math_problems(50, 0, "mixed")),
           "sentiment": _digest(sentiment_examples(50, 0))}
    assert got == {"npc": "7cce7a293ff72b0e", "math": "fcded51a5244c230", "sentiment": "86dcf9d1360f6888"}, got


def test_josa_agrees_with_final_sound():
    assert josa("사과", "을/를") == "사과를" and josa("책", "을/를") == "책을"
    assert josa("칼", "으로/로") == "칼로" and josa("집", "으로/로") == "집으로" and josa("바다", "으로/로") == "바다로"
    assert josa("3", "으로/로") == "3으로" and josa("7", "으로/로") == "7로" and josa("2", "으로/로") == "2로"
    assert josa("12권", "이/가") == "12권이" and josa("5개", "이/가") == "5개가" and josa("10", "이다/다") == "10이다"
    assert josa("민수", "은/는") == "민수는" and josa("지현", "은/는") == "지현은"


# counters after a number: 개/자루/송이 end in a vowel (→ 를/가/는/와), 권/병/장 in a consonant (→ 을/이/은/과)
_BAD_PARTICLES = re.compile(r"\d(?:개|자루|송이)(?:을|이|은|과)(?=\s)|\d(?:권|병|장)(?:를|가|는|와)(?=\s)")


def test_generated_korean_is_grammatical_and_korean_first():
    texts = [r["question"] for r in math_problems(300, 1, "ko")]
    texts += [r["instruction"] + r["input"] + r["output"] for r in npc_dialogues(300, 1)]
    texts += [r["text"] for r in sentiment_examples(300, 1)]
    for t in texts:
        assert not _BAD_PARTICLES.search(t), t
        hangul = sum("가" <= c <= "힣" for c in t)
        letters = sum(c.isalpha() for c in t)
        assert hangul / letters > 0.7, t


# --------------------------------------------------------------------------- math

_EQ = re.compile(r"(\d+(?: [-+×÷] \d+)+) = (\d+)")


def test_math_every_step_and_answer_is_exact():
    recs = math_problems(400, 3, "mixed")
    assert {r["lang"] for r in recs} == {"ko", "en"}
    for r in recs:
        assert re.fullmatch(r"\d+", r["answer"]), r
        last = r["solution"].splitlines()[-1]
        assert last == (f"정답: {r['answer']}" if r["lang"] == "ko" else f"Answer: {r['answer']}")
        eqs = _EQ.findall(r["solution"])
        assert eqs, r
        for expr, result in eqs:
            value = eval(expr.replace("×", "*").replace("÷", "//"))  # noqa: S307 - digits and operators only
            assert value == int(result), (expr, result, r)
            if "÷" in expr and "나머지" not in r["solution"] and "remainder" not in r["solution"]:
                a, b = map(int, expr.split(" ÷ "))
                assert a % b == 0, r  # exact division
        # the question states every number the first step starts from
        first_operands = re.findall(r"\d+", eqs[0][0])
        q_numbers = re.findall(r"\d+", r["question"])
        assert all(x in q_numbers for x in first_operands), r


def test_math_answer_matches_question_independently():
    """Re-solve two problem kinds from the question text alone."""
    seen = Counter()
    for r in math_problems(600, 5, "en"):
        q = r["question"]
        if m := re.search(r"buys (\d+) .* at (\d+) won each and pays with a (\d+) won bill", q):
            qty, price, bill = map(int, m.groups())
            assert int(r["answer"]) == bill - qty * price
            seen["change"] += 1
        elif m := re.search(r"^(\d+) students form teams of (\d+)", q):
            assert int(r["answer"]) == int(m[1]) % int(m[2])
            seen["remainder"] += 1
    assert seen["change"] > 20 and seen["remainder"] > 20


def test_math_lang_and_kinds():
    ko = math_problems(200, 0, "ko")
    assert all(r["lang"] == "ko" and r["solution"].startswith("풀이:") for r in ko)
    en = math_problems(200, 0, "en")
    assert all(r["lang"] == "en" and not re.search("[가-힣]", r["question"] + r["solution"]) for r in en)
    assert len({r["question"][:12] for r in ko}) > 40  # many different openings, not one template
    with pytest.raises(ValueError, match="lang"):
        math_problems(3, 0, "fr")


def test_preference_pairs_are_the_same_problems_with_a_flawed_rejected_side():
    probs = math_problems(900, 6, "mixed")
    pairs = math_preference_pairs(900, 6, "mixed")
    assert pairs == math_preference_pairs(900, 6, "mixed") and math_preference_pairs(40, 6, "mixed") == pairs[:40]
    assert _digest(math_preference_pairs(50, 0, "mixed")) == "6941489d47849eb0"  # pinned like the other sets
    flaws = Counter(p["flaw"] for p in pairs)
    assert set(flaws) == {"slip", "no_final", "wrong_op"} and min(flaws.values()) > 200, flaws
    for prob, p in zip(probs, pairs):
        assert (p["question"], p["chosen"], p["answer"], p["lang"]) == \
            (prob["question"], prob["solution"], prob["answer"], prob["lang"])
        rej, tail = p["rejected"].splitlines(), ("정답" if p["lang"] == "ko" else "Answer")
        assert p["rejected"] != p["chosen"] and rej[0] == p["chosen"].splitlines()[0]  # same 풀이:/Solution: head
        if p["flaw"] == "no_final":  # (b) the right steps, no final line
            assert p["rejected_answer"] is None and p["rejected"] + f"\n{tail}: {p['answer']}" == p["chosen"]
            continue
        wrong = int(p["rejected_answer"])
        assert wrong != int(p["answer"]) and wrong >= 0, p  # never the truth
        assert rej[-1] == f"{tail}: {wrong}"  # the final line states the wrong number ...
        eqs = _EQ.findall(p["rejected"])
        last_expr, last_result = eqs[-1] if eqs else (None, None)
        if p["flaw"] == "wrong_op":  # (c) a wrong operation, computed correctly, carried to the end
            value = eval(last_expr.replace("×", "*").replace("÷", "//"))  # noqa: S307 - digits and operators only
            assert value == wrong == int(last_result), p
            assert last_expr not in p["chosen"], p
        elif "나머지" in p["rejected"] or "remainder" in p["rejected"]:  # (a) slip in the remainder
            assert re.search(rf"(?:나머지|remainder) {wrong}\b", p["rejected"]) and str(wrong) in rej[-2], p
        else:  # (a) ... consistent with a slip in the last computation: same expression, another result
            assert int(last_result) == wrong and f"{last_expr} = {p['answer']}" in p["chosen"], p
    with pytest.raises(ValueError, match="lang"):
        math_preference_pairs(3, 0, "fr")


# --------------------------------------------------------------------------- NPC

def _num(s: str) -> int:
    return int(s)


def test_npc_merchant_totals_follow_from_input():
    checked = 0
    for r in npc_dialogues(600, 2):
        if "판매 목록" not in r["instruction"]:
            continue
        price = {g: (int(p), int(st)) for g, p, st in re.findall(r"([가-힣 ]+?) (\d+)골드\(재고 (\d+)", r["instruction"])}
        price = {g.strip(" ,:"): v for g, v in price.items()}
        money = int(re.search(r"(\d+)골드", r["input"])[1])
        asks = re.findall(r"([가-힣]+(?: [가-힣]+)?) (\d+)(?:병|개|묶음|장)", r["input"].replace("그리고 ", ", "))
        if any(g not in price for g, _ in asks):
            assert "않" in r["output"] or "안 팔" in r["output"], r
            continue
        total = sum(price[g][0] * min(int(q), price[g][1]) for g, q in asks)
        assert f"{total}골드" in r["output"], r
        if money >= total:
            assert f"{money - total}골드" in r["output"] and ("거스름돈" in r["output"]), r
        else:
            assert f"{total - money}골드" in r["output"] and re.search("부족|모자라", r["output"]), r
        checked += 1
    assert checked > 40


def test_npc_innkeeper_guard_healer_follow_rules():
    counts = Counter()
    for r in npc_dialogues(900, 4):
        ins, inp, out = r["instruction"], r["input"], r["output"]
        if "1인실은 하룻밤" in ins:
            p1, p2 = map(int, re.search(r"1인실은 하룻밤 (\d+)골드, 2인실은 하룻밤 (\d+)골드", ins).groups())
            b = int(re.search(r"1인당 하루 (\d+)골드", ins)[1])
            people, nights = map(int, re.search(r"(\d+)명.*?(\d+)박", inp).groups())
            meal = "먹을게요" in inp or "부탁해요" in inp
            total = ((people // 2) * p2 + (people % 2) * p1) * nights + (b * people * nights if meal else 0)
            assert re.search(rf"(?<!\d){total}골드(입니다|예요|\.)", out), r
            counts["inn"] += 1
        elif "성문은" in ins:
            open_h, close_h = map(int, re.search(r"성문은 (\d+)시에 열고 (\d+)시에 닫는다", ins).groups())
            hour = int(re.search(r"(\d+)시", inp)[1])
            has_pass = "없" not in inp.split("통행증")[1][:6]
            if not open_h <= hour < close_h:
                assert f"{open_h}시에 다시" in out, r
            elif not has_pass:
                assert "통행증" in out and "못 들어" in out or "없이는" in out, r
            else:
                assert "들어가" in out and "못" not in out, r
            counts["guard"] += 1
        elif "해독은" in ins:
            c, d = int(re.search(r"(\d+)골드를 받는다", ins)[1]), int(re.search(r"해독은 (\d+)골드", ins)[1])
            cur, mx = map(int, re.search(r"(\d+)/(\d+)", inp).groups())
            poisoned = "독에도" in inp
            total = -(-(mx - cur) // 10) * c + (d if poisoned else 0)
            if total == 0:
                assert "치료" in out and "필요 없" in out or "없어" in out or "할 거 없" in out, r
            else:
                assert f"{total}골드" in out, r
            counts["healer"] += 1
    assert min(counts.values()) > 50, counts


def test_npc_variety_roles_personas_levels():
    recs = npc_dialogues(500, 0)
    assert all(set(r) == {"instruction", "input", "output"} and all(r.values()) for r in recs)
    roles = Counter(re.search(r"(잡화상인|대장장이|성문 경비병|여관 주인|신전 치유사|마을 촌장|마을 안내인)", r["instruction"])[1]
                    for r in recs)
    assert len(roles) == 7 and min(roles.values()) > 30, roles
    outs = " ".join(r["output"] for r in recs)
    assert "습니다" in outs and "요." in outs and "야." in outs  # 합쇼체, 해요체, 반말 all present
    assert len({r["output"] for r in recs}) > 450


# --------------------------------------------------------------------------- sentiment

def test_sentiment_labels_balanced_and_consistent():
    recs = sentiment_examples(1000, 0)
    labels = Counter(r["label"] for r in recs)
    assert set(labels) == {"positive", "negative"} and 400 < labels["positive"] < 600
    by_text: dict[str, set] = {}
    for r in recs:
        by_text.setdefault(r["text"], set()).add(r["label"])
    assert all(len(v) == 1 for v in by_text.values())  # the same text never carries both labels
    assert len(by_text) > 950  # near-unique: train/test splits of one seed barely overlap
    # harder cases exist: negated words in positive reviews, contrast connectives in both classes
    assert any("않" in r["text"] for r in recs if r["label"] == "positive")
    for label in ("positive", "negative"):
        assert any(re.search(r"그런데|하지만|그래도|근데", r["text"]) for r in recs if r["label"] == label)


# --------------------------------------------------------------------------- built-in specs

def test_generated_documents_and_specs():
    assert is_generated("builtin:npc") and is_generated("builtin:math:en") and is_generated("builtin:math")
    assert not is_generated("builtin:ko-law") and not is_generated("builtin:math:fr") and not is_generated("npc")
    docs = list(generated_documents("builtin:math:en", n=5, seed=2))
    recs = generated_records("builtin:math:en", n=5, seed=2)
    assert recs == math_problems(5, 2, "en")
    assert generated_records("builtin:math", n=3) == math_problems(3, 0, "ko")  # same default as krllm.data.sets.records
    assert [d[0] for d in docs] == [f"math-en/2/{i}" for i in range(5)]
    assert docs[0][1] == recs[0]["question"] + "\n\n" + recs[0]["solution"]
    assert len(generated_records("builtin:sentiment")) == 1000  # documented default size
    with pytest.raises(ValueError, match="available: builtin:npc"):
        generated_records("builtin:poems")
    with pytest.raises(ValueError, match="non-negative"):
        npc_dialogues(-1)
    assert npc_dialogues(0) == []
