"""Arithmetic word problems for `krllm.data.sets.generated`: the ten problem kinds, solutions, flawed solutions.

Each kind draws its numbers from the record's own `random.Random` and returns (question, steps,
answer); `make_problem` renders the numbered solution with its final line (`정답: N` / `Answer: N`).
`flawed_solution` turns a right solution into the rejected side of a DPO pair, with a second
generator so the problem itself is the very one SFT and GRPO see for the same (seed, i):

    slip      an arithmetic slip in the last computation, carried to the final line (wrong answer)
    no_final  the right steps, but no final-answer line
    wrong_op  the last computation with the wrong operation (adds instead of subtracting, ...) and its answer

The rejected final answer never equals the truth (a test checks every kind).
"""

from __future__ import annotations

import random
import re
from typing import Callable

from krllm.data.sets._gen_text import josa, pick

FLAWS = ("slip", "no_final", "wrong_op")

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


def render_solution(steps: list[str], answer: int | None, lang: str) -> str:
    """Numbered steps under `풀이:` / `Solution:`, then `정답: N` / `Answer: N` (no final line when answer is None)."""
    head, tail = ("풀이:", "정답") if lang == "ko" else ("Solution:", "Answer")
    body = "\n".join(f"{j}. {s}" for j, s in enumerate(steps, 1))
    return f"{head}\n{body}" + (f"\n{tail}: {answer}" if answer is not None else "")


def make_problem(r: random.Random, lang: str) -> tuple[dict, list[str]]:
    """One problem: ({"question", "answer", "solution", "lang"}, its steps); lang "mixed" draws ko or en."""
    rec_lang = lang if lang != "mixed" else r.choice(("ko", "en"))
    q, steps, ans = r.choice(_MATH_KINDS)(r, rec_lang)
    return {"question": q, "answer": str(ans), "solution": render_solution(steps, ans, rec_lang), "lang": rec_lang}, steps


# ---------------------------------------------------------------- flawed solutions (DPO rejected side)

_EQ = re.compile(r"(\d+) ([-+×÷]) (\d+) = (\d+)")
_REM = re.compile(r"(\d+) ÷ (\d+) = (\d+) (나머지|remainder) (\d+)")
_WRONG_OPS = {"+": "-×", "-": "+×", "×": "+-", "÷": "×-"}  # tried in order: the first non-negative wrong result


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "÷":
        return a // b if b and a % b == 0 else None
    return {"+": a + b, "-": a - b, "×": a * b}[op]


def _slip(r: random.Random, value: int) -> int:
    """A plausible miscalculation: off by 1, 2 or 10, never negative, never the value itself."""
    d = r.choice((1, 2, 10)) * r.choice((1, -1))
    return value + d if value + d >= 0 else value + abs(d)


def _flawed_remainder(r: random.Random, steps: list[str], m: re.Match, flaw: str, lang: str) -> tuple[list[str], int]:
    people, k, rest = int(m[1]), int(m[2]), int(m[5])
    if flaw == "wrong_op":  # takes one team away instead of dividing
        wrong = people - k
        last = f"{wrong}명이 남습니다" if lang == "ko" else f"{wrong} students left"
        return [f"{people} - {k} = {wrong}", last], wrong
    wrong = r.choice([x for x in (rest - 1, rest + 1) if x >= 0])
    first = steps[0][:m.start(5)] + str(wrong) + steps[0][m.end(5):]
    last = re.sub(rf"(?<!\d){rest}(?=명| students)", str(wrong), steps[1])
    return [first, last], wrong


def flawed_solution(r: random.Random, steps: list[str], answer: int, lang: str) -> tuple[str, str, int | None]:
    """(rejected solution text, flaw name, its stated final answer or None) for a right solution's steps."""
    flaw = FLAWS[r.randrange(len(FLAWS))]
    if flaw == "no_final":
        return render_solution(steps, None, lang), flaw, None
    if rem := _REM.search(steps[0]):
        new_steps, wrong = _flawed_remainder(r, steps, rem, flaw, lang)
        return render_solution(new_steps, wrong, lang), flaw, wrong
    idx, m = next((i, eqs[-1]) for i in reversed(range(len(steps)))
                  if (eqs := list(_EQ.finditer(steps[i]))) and int(eqs[-1][4]) == answer)
    step = steps[idx]
    a, op, b = int(m[1]), m[2], int(m[3])
    if flaw == "wrong_op":
        for op2 in _WRONG_OPS[op]:
            wrong = _apply(a, op2, b)
            if wrong is not None and wrong >= 0 and wrong != answer:
                new = step[:m.start(2)] + op2 + step[m.end(2):m.start(4)] + str(wrong) + step[m.end(4):]
                return render_solution(steps[:idx] + [new], wrong, lang), flaw, wrong
        flaw = "slip"  # no wrong operation gives a different non-negative number (e.g. 2 × 2 vs 2 + 2)
    wrong = _slip(r, answer)
    new = step[:m.start(4)] + str(wrong) + step[m.end(4):]
    return render_solution(steps[:idx] + [new], wrong, lang), flaw, wrong
