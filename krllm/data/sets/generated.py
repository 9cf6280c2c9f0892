"""Data sets generated from a seed: offline, license-free and Korean-first.

    npc_dialogues(n, seed=0)            {"instruction", "input", "output"}   game-NPC role play
    math_problems(n, seed=0, lang="ko") {"question", "answer", "solution", "lang"}
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
`Answer: <integer>` (English); `parse_final_answer(text)` reads it back (also from model output).
"""

from __future__ import annotations

import random
import re
from typing import Callable, Iterator

from krllm.data.sets import _gen_npc as npc_mod
from krllm.data.sets._gen_text import josa, pick

__all__ = ["npc_dialogues", "math_problems", "sentiment_examples", "parse_final_answer",
           "generated_documents", "generated_records", "is_generated", "default_size", "GENERATED_SETS", "josa"]


def _rng(seed: int, i: int, salt: str) -> random.Random:
    """One generator per record: record i never depends on how many records came before."""
    return random.Random(f"{salt}:{seed}:{i}")


# --------------------------------------------------------------------------- NPC dialogues

def npc_dialogues(n: int, seed: int = 0) -> list[dict]:
    """Korean game-NPC turns: {"instruction" (persona + facts), "input" (player), "output" (reply)}."""
    return [npc_mod.make_dialogue(_rng(seed, i, "npc")) for i in range(_check_n(n))]


# --------------------------------------------------------------------------- math word problems

_KO_NAMES = ("민수", "지현", "서준", "하은", "도윤", "수빈", "예준", "지우", "현우", "서연", "은지", "태민")
_EN_NAMES = ("Mina", "Jisoo", "Tom", "Sara", "Daniel", "Yuna", "Alex", "Hana", "Leo", "Emma", "Noah", "Ivy")
# (Korean item, counter, English singular, English plural)
_ITEMS = (("사과", "개", "apple", "apples"), ("연필", "자루", "pencil", "pencils"), ("공책", "권", "notebook", "notebooks"),
          ("사탕", "개", "candy", "candies"), ("구슬", "개", "marble", "marbles"), ("책", "권", "book", "books"),
          ("꽃", "송이", "flower", "flowers"), ("우유", "병", "bottle of milk", "bottles of milk"),
          ("스티커", "장", "sticker", "stickers"), ("쿠키", "개", "cookie", "cookies"))


def _math_add(r: random.Random, lang: str):
    a, b = r.randint(5, 90), r.randint(3, 60)
    item, cnt, _, pl = pick(r, _ITEMS)
    if lang == "ko":
        nm = pick(r, _KO_NAMES)
        q = pick(r, (f"{josa(nm, '은/는')} {item} {josa(f'{a}{cnt}', '을/를')} 가지고 있었습니다. 오늘 {josa(f'{b}{cnt}', '을/를')} 더 받았습니다. {josa(nm, '이/가')} 가진 {josa(item, '은/는')} 모두 몇 {cnt}입니까?",
                     f"{item} {josa(f'{a}{cnt}', '이/가')} 있는 상자에 {josa(f'{b}{cnt}', '을/를')} 더 넣었습니다. 상자 안의 {josa(item, '은/는')} 몇 {cnt}일까요?"))
        steps = [f"처음 {item}: {a}{cnt}", f"더해진 {item}: {b}{cnt}", f"{a} + {b} = {a + b}"]
    else:
        nm = pick(r, _EN_NAMES)
        q = pick(r, (f"{nm} had {a} {pl}. Today {nm} got {b} more. How many {pl} does {nm} have now?",
                     f"A box holds {a} {pl}. Someone puts in {b} more {pl}. How many {pl} are in the box?"))
        steps = [f"Start: {a} {pl}", f"Added: {b} {pl}", f"{a} + {b} = {a + b}"]
    return q, steps, a + b


def _math_sub(r: random.Random, lang: str):
    b = r.randint(3, 50)
    a = b + r.randint(1, 60)
    item, cnt, _, pl = pick(r, _ITEMS)
    if lang == "ko":
        nm, fr = r.sample(_KO_NAMES, 2)
        q = pick(r, (f"{josa(nm, '은/는')} {item} {a}{cnt} 중에서 {josa(f'{b}{cnt}', '을/를')} {fr}에게 주었습니다. 남은 {josa(item, '은/는')} 몇 {cnt}입니까?",
                     f"가게에 {item} {josa(f'{a}{cnt}', '이/가')} 있었는데 {josa(f'{b}{cnt}', '이/가')} 팔렸습니다. 남은 {josa(item, '은/는')} 몇 {cnt}인가요?"))
        steps = [f"처음 {item}: {a}{cnt}", f"줄어든 {item}: {b}{cnt}", f"{a} - {b} = {a - b}"]
    else:
        nm, fr = r.sample(_EN_NAMES, 2)
        q = pick(r, (f"{nm} had {a} {pl} and gave {b} of them to {fr}. How many {pl} does {nm} have left?",
                     f"A shop had {a} {pl} and sold {b}. How many {pl} are left?"))
        steps = [f"Start: {a} {pl}", f"Taken away: {b} {pl}", f"{a} - {b} = {a - b}"]
    return q, steps, a - b


def _math_mul(r: random.Random, lang: str):
    a, b = r.randint(2, 12), r.randint(2, 15)
    item, cnt, _, pl = pick(r, _ITEMS)
    if lang == "ko":
        q = pick(r, (f"한 상자에 {item} {a}{cnt}씩 들어 있습니다. {b}상자에는 {item} 모두 몇 {josa(cnt, '이/가')} 들어 있습니까?",
                     f"학생 {b}명이 각자 {item} {a}{cnt}씩 가지고 있습니다. {josa(item, '은/는')} 모두 몇 {cnt}입니까?"))
        steps = [f"한 묶음에 {a}{cnt}, 묶음 수 {b}", f"{a} × {b} = {a * b}"]
    else:
        q = pick(r, (f"Each box holds {a} {pl}. How many {pl} are in {b} boxes?",
                     f"{b} students each have {a} {pl}. How many {pl} do they have in total?"))
        steps = [f"{a} per group, {b} groups", f"{a} × {b} = {a * b}"]
    return q, steps, a * b


def _math_div(r: random.Random, lang: str):
    each, k = r.randint(2, 15), r.randint(2, 9)
    total = each * k
    item, cnt, _, pl = pick(r, _ITEMS)
    if lang == "ko":
        q = pick(r, (f"{item} {josa(f'{total}{cnt}', '을/를')} {k}명에게 똑같이 나누어 주려고 합니다. 한 명이 몇 {cnt}씩 받습니까?",
                     f"{item} {josa(f'{total}{cnt}', '을/를')} 바구니 {k}개에 똑같이 나누어 담으면 한 바구니에 몇 {cnt}씩 담깁니까?"))
        steps = [f"전체 {josa(f'{total}{cnt}', '을/를')} {josa(str(k), '으로/로')} 나눕니다", f"{total} ÷ {k} = {each}"]
    else:
        q = pick(r, (f"{total} {pl} are shared equally among {k} friends. How many does each friend get?",
                     f"You put {total} {pl} equally into {k} baskets. How many {pl} go in each basket?"))
        steps = [f"Divide the {total} {pl} into {k} equal parts", f"{total} ÷ {k} = {each}"]
    return q, steps, each


def _math_change(r: random.Random, lang: str):
    qty, price = r.randint(2, 9), r.choice((300, 500, 700, 800, 1200, 1500, 2000, 2500))
    cost = qty * price
    bill = next(b for b in (5000, 10000, 20000, 50000) if b >= cost)
    item, cnt, sg, pl = pick(r, _ITEMS)
    if lang == "ko":
        nm = pick(r, _KO_NAMES)
        q = f"{josa(nm, '은/는')} 한 {cnt}에 {price}원인 {item} {josa(f'{qty}{cnt}', '을/를')} 사고 {bill}원을 냈습니다. 거스름돈은 얼마입니까?"
        steps = [f"{item} 값: {price} × {qty} = {cost}원", f"거스름돈: {bill} - {cost} = {bill - cost}원"]
    else:
        nm = pick(r, _EN_NAMES)
        q = f"{nm} buys {qty} {pl} at {price} won each and pays with a {bill} won bill. How much change does {nm} get, in won?"
        steps = [f"Cost: {price} × {qty} = {cost} won", f"Change: {bill} - {cost} = {bill - cost} won"]
    return q, steps, bill - cost


def _math_three_step(r: random.Random, lang: str):
    a, b = r.randint(10, 80), r.randint(5, 40)
    c = r.randint(1, a + b - 1)
    item, cnt, _, pl = pick(r, _ITEMS)
    if lang == "ko":
        nm = pick(r, _KO_NAMES)
        q = (f"{josa(nm, '은/는')} {item} {josa(f'{a}{cnt}', '을/를')} 가지고 있었습니다. 선물로 {josa(f'{b}{cnt}', '을/를')} 받았고, "
             f"그중 {josa(f'{c}{cnt}', '을/를')} 동생에게 주었습니다. 지금 {josa(nm, '이/가')} 가진 {josa(item, '은/는')} 몇 {cnt}입니까?")
        steps = [f"받은 뒤: {a} + {b} = {a + b}", f"준 뒤: {a + b} - {c} = {a + b - c}"]
    else:
        nm = pick(r, _EN_NAMES)
        q = f"{nm} had {a} {pl}, received {b} more as a gift, then gave {c} to a sister. How many {pl} does {nm} have now?"
        steps = [f"After the gift: {a} + {b} = {a + b}", f"After giving: {a + b} - {c} = {a + b - c}"]
    return q, steps, a + b - c


def _math_two_items(r: random.Random, lang: str):
    (i1, c1, s1, p1n), (i2, c2, s2, p2n) = r.sample(_ITEMS, 2)
    q1, q2 = r.randint(1, 6), r.randint(1, 6)
    p1, p2 = r.choice((200, 400, 600, 900, 1100)), r.choice((300, 500, 800, 1000, 1300))
    t1, t2 = q1 * p1, q2 * p2
    if lang == "ko":
        q = (f"{i1} 한 {c1}에 {p1}원, {i2} 한 {c2}에 {p2}원입니다. "
             f"{i1} {josa(f'{q1}{c1}', '과/와')} {i2} {josa(f'{q2}{c2}', '을/를')} 사면 모두 얼마입니까?")
        steps = [f"{i1}: {p1} × {q1} = {t1}원", f"{i2}: {p2} × {q2} = {t2}원", f"합계: {t1} + {t2} = {t1 + t2}원"]
    else:
        q = (f"One {s1} costs {p1} won and one {s2} costs {p2} won. "
             f"What do {q1} {s1 if q1 == 1 else p1n} and {q2} {s2 if q2 == 1 else p2n} cost together, in won?")
        steps = [f"{p1n}: {p1} × {q1} = {t1} won", f"{p2n}: {p2} × {q2} = {t2} won", f"Total: {t1} + {t2} = {t1 + t2} won"]
    return q, steps, t1 + t2


def _math_average(r: random.Random, lang: str):
    avg = r.randint(60, 95)
    d1, d2 = r.randint(-10, 10), r.randint(-10, 10)
    scores = (avg + d1, avg + d2, avg - d1 - d2)
    total = sum(scores)
    if lang == "ko":
        nm = pick(r, _KO_NAMES)
        q = f"{nm}의 국어, 수학, 영어 점수는 각각 {scores[0]}점, {scores[1]}점, {scores[2]}점입니다. 세 과목의 평균 점수는 몇 점입니까?"
        steps = [f"합계: {scores[0]} + {scores[1]} + {scores[2]} = {total}", f"평균: {total} ÷ 3 = {avg}"]
    else:
        nm = pick(r, _EN_NAMES)
        q = f"{nm} scored {scores[0]}, {scores[1]} and {scores[2]} on three tests. What is the average score?"
        steps = [f"Sum: {scores[0]} + {scores[1]} + {scores[2]} = {total}", f"Average: {total} ÷ 3 = {avg}"]
    return q, steps, avg


def _math_remainder(r: random.Random, lang: str):
    k = r.randint(3, 9)
    teams, rest = r.randint(2, 12), r.randint(1, k - 1)
    people = k * teams + rest
    if lang == "ko":
        q = f"학생 {people}명이 한 팀에 {k}명씩 팀을 만듭니다. 팀을 최대한 많이 만들면 팀에 들지 못한 학생은 몇 명입니까?"
        steps = [f"{people} ÷ {k} = {teams} 나머지 {rest}", f"{teams}팀을 만들고 {rest}명이 남습니다"]
    else:
        q = f"{people} students form teams of {k}. After making as many full teams as possible, how many students are left over?"
        steps = [f"{people} ÷ {k} = {teams} remainder {rest}", f"{teams} teams, {rest} students left"]
    return q, steps, rest


def _math_distance(r: random.Random, lang: str):
    speed, hours = r.choice((4, 5, 12, 15, 40, 60, 80, 90)), r.randint(2, 6)
    if lang == "ko":
        who = pick(r, ("자전거", "자동차", "버스", "기차")) if speed > 5 else "사람"
        q = f"{josa(who, '이/가')} 한 시간에 {speed}km씩 {hours}시간 동안 같은 빠르기로 이동했습니다. 모두 몇 km를 갔습니까?"
        steps = ["거리 = 빠르기 × 시간", f"{speed} × {hours} = {speed * hours}"]
    else:
        who = pick(r, ("A cyclist", "A car", "A bus", "A train")) if speed > 5 else "A walker"
        q = f"{who} travels at {speed} km per hour for {hours} hours. How many km does it travel?"
        steps = ["distance = speed × time", f"{speed} × {hours} = {speed * hours}"]
    return q, steps, speed * hours


_MATH_KINDS: tuple[Callable, ...] = (_math_add, _math_sub, _math_mul, _math_div, _math_change, _math_three_step,
                                     _math_two_items, _math_average, _math_remainder, _math_distance)


def math_problems(n: int, seed: int = 0, lang: str = "ko") -> list[dict]:
    """Arithmetic word problems with exact non-negative integer answers and step-by-step solutions."""
    if lang not in ("ko", "en", "mixed"):
        raise ValueError(f"lang must be 'ko', 'en' or 'mixed', got {lang!r}")
    out = []
    for i in range(_check_n(n)):
        r = _rng(seed, i, f"math-{lang}")
        rec_lang = lang if lang != "mixed" else r.choice(("ko", "en"))
        q, steps, ans = r.choice(_MATH_KINDS)(r, rec_lang)
        head, tail = ("풀이:", "정답") if rec_lang == "ko" else ("Solution:", "Answer")
        body = "\n".join(f"{j}. {s}" for j, s in enumerate(steps, 1))
        out.append({"question": q, "answer": str(ans), "solution": f"{head}\n{body}\n{tail}: {ans}", "lang": rec_lang})
    return out


_FINAL = re.compile(r"(?:정답|Answer)\s*[:：]\s*(-?\d[\d,]*)")


def parse_final_answer(text: str) -> str | None:
    """The integer after the last `정답:` / `Answer:` in `text` (commas removed), or None."""
    found = _FINAL.findall(text or "")
    return found[-1].replace(",", "") if found else None


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
