"""Game-NPC dialogues for `krllm.data.sets.generated.npc_dialogues`.

Each record is one turn: the instruction gives the NPC's persona and the facts it knows (price
list, opening hours, quest details, map), the input is what the player says (quantities, money,
time, questions), and the output is the NPC's reply, *computed* from both: totals, change,
shortfalls, refusals by rule, the one fact the player asked for. The persona sets the speech
level (합쇼체 / 해요체 / 반말) and the opening and closing lines, so a fine-tuned model has to
learn both the arithmetic/lookup and the voice.
"""

from __future__ import annotations

import math
import random

from krllm.data.sets._gen_text import josa, pick

# (description, speech level, openers, closers)
PERSONAS = (
    ("친절하고 상냥하다", "polite", ("어서 오세요!", "반가워요, 여행자님!", "오, 어서 와요."),
     ("또 들러 주세요.", "좋은 하루 보내세요!", "조심히 다니세요.")),
    ("무뚝뚝하지만 정직하다", "casual", ("흠.", "왔나.", "..."), ("볼일 끝났으면 가 봐.", "잘 챙겨 가.", "다음.")),
    ("수다스럽고 호기심이 많다", "polite", ("어머, 손님! 마침 심심했는데 잘 오셨어요.", "어서 와요, 어서! 오늘 처음 보는 손님이네요."),
     ("아 참, 요즘 북쪽 숲에 늑대가 자주 나온대요. 조심하세요!", "그런데 어디서 오셨어요? 나중에 여행 얘기 좀 들려줘요.")),
    ("격식을 차리고 예의 바르다", "formal", ("어서 오십시오.", "환영합니다, 손님."),
     ("평안한 여정 되십시오.", "언제든 다시 찾아 주십시오.")),
    ("의심이 많고 까칠하다", "casual", ("뭐야, 처음 보는 얼굴인데.", "흥, 또 외지인이군."),
     ("허튼짓하면 가만 안 둬.", "딴생각 말고 볼일만 보고 가.")),
    ("유쾌하고 농담을 좋아한다", "polite", ("하하, 반가워요!", "오늘 운이 좋으시네요, 제가 기분이 좋거든요!"),
     ("웃으면 복이 와요, 하하!", "다음엔 재밌는 얘기 하나 들고 와요!")),
)
VILLAGES = ("은빛강 마을", "바람언덕", "서리봉 요새", "갈대숲 항구", "붉은돌 광산촌", "달무리 마을")
NAMES = ("두만", "오월", "길순", "바우", "덕배", "여울", "한솔", "마루", "보라", "강쇠", "꽃님", "무쇠")


def say(level: str, formal: str, polite: str, casual: str) -> str:
    return {"formal": formal, "polite": polite, "casual": casual}[level]


def _instruction(r: random.Random, role: str, name: str, village: str, persona: str, facts: list[str]) -> str:
    style = r.randrange(3)
    if style == 0:
        return (f"당신은 {village}의 {role} {name}입니다. 성격: {persona}. "
                + " ".join(facts) + f" 플레이어의 말에 {name}답게 한국어로 대답하세요.")
    if style == 1:
        return (f"역할극: 너는 {village}에 사는 {role} '{name}'이다. 성격은 {persona}. " + " ".join(facts) + " 캐릭터를 유지하며 플레이어에게 답하라.")
    lines = "\n".join(f"- {f}" for f in facts)
    return f"[NPC 설정]\n이름: {name}\n직업: {role}\n장소: {village}\n성격: {persona}\n알고 있는 것:\n{lines}\n\n플레이어의 말에 답하세요."


# --------------------------------------------------------------------------- roles
# Each returns (role name, facts, player input, core reply sentences) for a speech level.

_GOODS = (("회복 물약", "병", 30), ("해독제", "병", 45), ("횃불", "개", 5), ("밧줄", "묶음", 12), ("빵", "개", 3),
          ("화살", "묶음", 8), ("지도", "장", 25), ("랜턴", "개", 40))


def _merchant(r: random.Random, lv: str):
    stock = r.sample(_GOODS, 4)
    qty_in_stock = {g[0]: r.randint(2, 20) for g in stock}
    facts = ["판매 목록(개당 가격, 재고): " + ", ".join(f"{g} {p}골드(재고 {qty_in_stock[g]}{c})" for g, c, p in stock) + "."]
    wanted = r.sample(stock, r.randint(1, 2))
    if r.random() < 0.15:  # asks for something not sold here
        missing = pick(r, [g for g in _GOODS if g not in stock])
        wanted = [missing]
    asks = [(g, c, p, r.randint(1, 8)) for g, c, p in wanted]
    money = r.choice((20, 50, 80, 100, 150, 200, 300))
    ask_text = " 그리고 ".join(f"{g} {q}{c}" for g, c, p, q in asks)
    inp = pick(r, (f"{josa(ask_text, '을/를')} 사고 싶어요. 가진 돈은 {money}골드예요.",
                   f"{ask_text} 주세요. {money}골드 있어요.",
                   f"안녕하세요. {ask_text}, 얼마예요? 지금 {money}골드밖에 없어요."))
    out, total = [], 0
    for g, c, p, q in asks:
        if g not in qty_in_stock:
            others = ", ".join(x for x, _, _ in stock)
            out.append(say(lv, f"{josa(g, '은/는')} 저희 가게에서 취급하지 않습니다. 대신 {others} 등이 있습니다.",
                           f"{josa(g, '은/는')} 저희 가게에서 안 팔아요. 대신 {josa(others, '은/는')} 있어요.",
                           f"{josa(g, '은/는')} 안 팔아. 있는 건 {others}뿐이야."))
            continue
        have = qty_in_stock[g]
        if q > have:
            out.append(say(lv, f"{g} 재고가 {have}{c}뿐이라 {have}{c}만 드릴 수 있습니다.",
                           f"{g} 재고가 {have}{c}밖에 없어서 {have}{c}만 드릴 수 있어요.",
                           f"{josa(g, '은/는')} {have}{c}밖에 없어. {have}{c}만 줄게."))
            q = have
        total += q * p
        out.append(say(lv, f"{g} {q}{c}에 {q * p}골드입니다.", f"{g} {q}{c}면 {q * p}골드예요.", f"{g} {q}{c}, {q * p}골드."))
    if total:
        if money >= total:
            out.append(say(lv, f"모두 {total}골드입니다. {money}골드를 주셨으니 거스름돈은 {money - total}골드입니다.",
                           f"합쳐서 {total}골드예요. {money}골드 받았으니 거스름돈은 {money - total}골드예요.",
                           f"전부 {total}골드야. {money}골드 받았으니 거스름돈 {money - total}골드."))
        else:
            out.append(say(lv, f"모두 {total}골드인데, {money}골드로는 {total - money}골드가 부족합니다.",
                           f"합쳐서 {total}골드인데 {money}골드로는 {total - money}골드가 모자라요.",
                           f"전부 {total}골드야. {money}골드로는 {total - money}골드 모자라."))
    return "잡화상인", facts, inp, out


_WEAPONS = (("검", 20), ("도끼", 15), ("창", 18), ("방패", 25), ("활", 12), ("갑옷", 40), ("단검", 10))


def _blacksmith(r: random.Random, lv: str):
    prices = r.sample(_WEAPONS, 4)
    cap = r.randint(2, 5)
    facts = ["수리비: " + ", ".join(f"{w} {p}골드" for w, p in prices) + ".", "손상이 심하면 수리비는 두 배다.",
             f"하루에 {cap}개까지 수리할 수 있다."]
    w, p = pick(r, prices) if r.random() < 0.85 else pick(r, [x for x in _WEAPONS if x not in prices])
    known = (w, p) in prices
    if r.random() < 0.5:
        severe = r.random() < 0.5
        inp = pick(r, (f"제 {josa(w, '이/가')} {'심하게' if severe else '조금'} 상했어요. 수리비가 얼마예요?",
                       f"{w} 좀 고쳐 줄 수 있어요? {'거의 부서졌어요' if severe else '살짝 금이 갔어요'}."))
        if not known:
            return "대장장이", facts, inp, [say(lv, f"죄송하지만 {josa(w, '은/는')} 제가 다루지 않습니다.",
                                                 f"미안해요, {josa(w, '은/는')} 제가 못 고쳐요.", f"{josa(w, '은/는')} 내 전문이 아니야.")]
        cost = p * (2 if severe else 1)
        why = say(lv, "손상이 심해서 두 배를 받습니다. ", "많이 상해서 두 배예요. ", "많이 상했으니 두 배다. ") if severe else ""
        return "대장장이", facts, inp, [why + say(lv, f"{w} 수리비는 {cost}골드입니다.", f"{w} 수리비는 {cost}골드예요.", f"{w} 수리비 {cost}골드.")]
    k = r.randint(1, 12)
    inp = pick(r, (f"{w} {k}개를 수리 맡기면 며칠 걸려요? 비용은요?", f"우리 부대 {w} {k}개 수리 부탁해요. 언제 찾으러 오면 돼요?"))
    if not known:
        return "대장장이", facts, inp, [say(lv, f"{josa(w, '은/는')} 수리하지 않습니다.", f"{josa(w, '은/는')} 수리 안 해요.", f"{josa(w, '은/는')} 안 고쳐.")]
    days = math.ceil(k / cap)
    return "대장장이", facts, inp, [
        say(lv, f"하루에 {cap}개씩이니 {k}개는 {days}일 걸립니다.", f"하루에 {cap}개씩 하니까 {k}개면 {days}일 걸려요.", f"하루 {cap}개씩, {k}개면 {days}일 걸려."),
        say(lv, f"비용은 {p} × {k} = {p * k}골드입니다.", f"비용은 {p} × {k} = {p * k}골드예요.", f"값은 {p} × {k} = {p * k}골드.")]


def _guard(r: random.Random, lv: str):
    open_h, close_h = r.randint(5, 8), r.randint(19, 23)
    fee = r.choice((5, 10, 15, 20))
    weapon_rule = r.random() < 0.5
    facts = [f"성문은 {open_h}시에 열고 {close_h}시에 닫는다.", "통행증이 있어야 들어갈 수 있다.",
             f"통행증은 관청에서 {fee}골드에 발급한다."] + (["성 안에는 무기를 가지고 들어갈 수 없고 초소에 맡겨야 한다."] if weapon_rule else [])
    hour, has_pass, armed = r.randint(0, 23), r.random() < 0.6, r.random() < 0.4
    inp = pick(r, (f"지금 {hour}시인데 들어가도 되나요? 통행증은 {'있어요' if has_pass else '없어요'}.",
                   f"{'통행증 여기 있습니다' if has_pass else '통행증은 없는데요'}. 지금 {hour}시, 들어갈 수 있죠?")) + \
        (" 허리에 검을 차고 있어요." if armed else "")
    if not open_h <= hour < close_h:
        out = [say(lv, f"지금은 {hour}시라 성문이 닫혀 있습니다. {open_h}시에 다시 오십시오.",
                   f"지금은 {hour}시라 문이 닫혀 있어요. {open_h}시에 다시 오세요.", f"{hour}시면 문 닫았어. {open_h}시에 다시 와.")]
    elif not has_pass:
        out = [say(lv, f"통행증 없이는 들어갈 수 없습니다. 관청에서 {fee}골드에 발급받으십시오.",
                   f"통행증이 없으면 못 들어가요. 관청에서 {fee}골드에 발급받으세요.", f"통행증 없으면 못 들어가. 관청 가서 {fee}골드 내고 받아 와.")]
    else:
        out = [say(lv, "확인했습니다. 들어가셔도 됩니다.", "확인했어요. 들어가셔도 돼요.", "확인했다. 들어가.")]
        if armed and weapon_rule:
            out.append(say(lv, "다만 검은 초소에 맡기고 가셔야 합니다.", "단, 검은 초소에 맡기고 가세요.", "검은 초소에 맡기고 가."))
    return "성문 경비병", facts, inp, out


def _innkeeper(r: random.Random, lv: str):
    p1, p2, b = r.choice((10, 12, 15, 20)), r.choice((18, 20, 25, 30)), r.choice((2, 3, 4, 5))
    facts = [f"1인실은 하룻밤 {p1}골드, 2인실은 하룻밤 {p2}골드다.", f"아침 식사는 1인당 하루 {b}골드다.",
             "여럿이 오면 2인실부터 채우고 남는 한 명은 1인실을 쓴다."]
    people, nights, meal = r.randint(1, 6), r.randint(1, 5), r.random() < 0.5
    inp = pick(r, (f"{people}명인데 {nights}박 묵을 수 있을까요? 아침은 {'먹을게요' if meal else '괜찮아요'}.",
                   f"일행 {people}명, {nights}박이요. 아침 식사{'도 부탁해요' if meal else '는 빼 주세요'}. 얼마예요?"))
    r2, r1 = divmod(people, 2)
    night = r2 * p2 + r1 * p1
    rooms = " 그리고 ".join(x for x in (f"2인실 {r2}개" if r2 else "", f"1인실 {r1}개" if r1 else "") if x)
    out = [say(lv, f"{rooms}로 하룻밤 {night}골드, {nights}박이면 {night * nights}골드입니다.",
               f"{rooms}로 하룻밤 {night}골드, {nights}박이면 {night * nights}골드예요.",
               f"{rooms}, 하룻밤 {night}골드. {nights}박이면 {night * nights}골드.")]
    total = night * nights
    if meal:
        m = b * people * nights
        total += m
        out.append(say(lv, f"아침은 {b} × {people}명 × {nights}일 = {m}골드입니다.", f"아침은 {b} × {people}명 × {nights}일 = {m}골드예요.",
                       f"아침은 {b} × {people}명 × {nights}일 = {m}골드."))
        out.append(say(lv, f"모두 {total}골드입니다.", f"모두 {total}골드예요.", f"합계 {total}골드."))
    return "여관 주인", facts, inp, out


def _healer(r: random.Random, lv: str):
    c, d = r.choice((3, 4, 5, 6)), r.choice((10, 15, 20))
    facts = [f"체력 10을 회복시키는 데 {c}골드를 받는다(10 미만도 10으로 친다).", f"해독은 {d}골드다."]
    mx = r.choice((50, 80, 100, 120, 150))
    cur = mx if r.random() < 0.1 else r.randint(1, mx - 1)
    poisoned = r.random() < 0.4
    inp = pick(r, (f"체력이 {cur}/{mx}이에요.", f"몬스터한테 당했어요... 체력 {cur}/{mx}.")) + (" 독에도 걸린 것 같아요." if poisoned else "")
    lost = mx - cur
    if lost == 0 and not poisoned:
        return "신전 치유사", facts, inp, [say(lv, "다친 곳이 없으니 치료가 필요 없습니다.", "다친 데가 없어서 치료할 게 없어요.", "멀쩡하네. 치료할 거 없어.")]
    out, total = [], 0
    if lost:
        units = math.ceil(lost / 10)
        total += units * c
        out.append(say(lv, f"잃은 체력이 {josa(str(lost), '이니/니')} {units}번 치료해서 {units * c}골드입니다.",
                       f"잃은 체력이 {josa(str(lost), '이라서/라서')} {units}번 치료하면 {units * c}골드예요.", f"{lost} 깎였으니 {units}번, {units * c}골드."))
    if poisoned:
        total += d
        out.append(say(lv, f"해독에 {d}골드가 더 듭니다.", f"해독은 {d}골드 추가예요.", f"해독 {d}골드 추가."))
    out.append(say(lv, f"모두 {total}골드입니다.", f"모두 {total}골드예요.", f"합쳐서 {total}골드."))
    return "신전 치유사", facts, inp, out


_MONSTERS = ("늑대", "고블린", "멧돼지", "거대 거미", "산적", "해골 병사")
_PLACES = ("동쪽 숲", "버려진 광산", "북쪽 동굴", "강 건너 폐허", "남쪽 늪지")


def _quest_giver(r: random.Random, lv: str):
    mon, place = pick(r, _MONSTERS), pick(r, _PLACES)
    count, reward, days = r.randint(3, 15), r.choice((50, 80, 100, 150, 200)), r.randint(2, 7)
    facts = [f"{josa(place, '으로/로')}부터 {mon} {count}마리가 마을을 위협한다.", f"모두 물리치면 보상으로 {reward}골드를 준다.",
             f"기한은 {days}일이다."]
    ask = r.randrange(4)
    inp = (("무슨 일이 있나요? 도울 일이 있으면 말씀하세요.", "마을에 무슨 문제 있어?"),
           (f"{josa(mon, '은/는')} 어디에 있어요?", "어디로 가면 되죠?"),
           ("보상은 얼마나 주시나요?", "그거 하면 뭐 줘?"),
           ("언제까지 해결하면 되나요?", "기한이 있어요?"))[ask]
    inp = pick(r, inp)
    out = [(say(lv, f"{place}에서 온 {mon} {count}마리가 마을을 위협하고 있습니다. 물리쳐 주시면 {reward}골드를 드리겠습니다.",
                f"{place}에서 온 {mon} {count}마리 때문에 큰일이에요. 물리쳐 주시면 {reward}골드 드릴게요.",
                f"{place}에서 {mon} {count}마리가 내려와. 잡아 주면 {reward}골드 줄게.")),
           say(lv, f"{josa(mon, '은/는')} {place}에 있습니다. {count}마리입니다.", f"{josa(mon, '은/는')} {place}에 있어요. 모두 {count}마리예요.",
               f"{place}. {count}마리야."),
           say(lv, f"{count}마리를 모두 물리치면 {reward}골드를 드립니다.", f"{count}마리 다 물리치면 {reward}골드 드려요.", f"다 잡으면 {reward}골드."),
           say(lv, f"{days}일 안에 해결해 주셔야 합니다.", f"{days}일 안에 부탁해요.", f"{days}일 안에 끝내.")][ask]
    return "마을 촌장", facts, inp, [out]


_SPOTS = ("여관", "대장간", "신전", "시장", "관청", "항구", "마구간", "도서관")
_WHERE = ("광장 동쪽", "북문 옆", "언덕 위", "강가", "성벽 아래", "우물 뒤편", "남문 앞")


def _guide(r: random.Random, lv: str):
    spots = r.sample(_SPOTS, 4)
    where = dict(zip(spots, r.sample(_WHERE, 4)))
    facts = ["마을 지리: " + ", ".join(f"{s}({w})" for s, w in where.items()) + "."]
    target = pick(r, spots) if r.random() < 0.8 else pick(r, [s for s in _SPOTS if s not in spots])
    inp = pick(r, (f"{josa(target, '은/는')} 어디에 있어요?", f"{target}에 가려면 어디로 가야 해요?", f"혹시 {target} 어딘지 알아?"))
    if target in where:
        w = where[target]
        out = [say(lv, f"{josa(target, '은/는')} {w}에 있습니다.", f"{josa(target, '은/는')} {w}에 있어요.", f"{target}? {w}에 있어.")]
    else:
        out = [say(lv, f"이 마을에는 {josa(target, '이/가')} 없습니다.", f"우리 마을엔 {josa(target, '이/가')} 없어요.", f"여긴 {target} 없어.")]
    return "마을 안내인", facts, inp, out


ROLES = (_merchant, _blacksmith, _guard, _innkeeper, _healer, _quest_giver, _guide)


def make_dialogue(r: random.Random) -> dict:
    """One NPC turn; the reply = persona opener + computed core + persona closer."""
    persona, level, openers, closers = pick(r, PERSONAS)
    name, village = pick(r, NAMES), pick(r, VILLAGES)
    role, facts, inp, core = pick(r, ROLES)(r, level)
    parts = ([pick(r, openers)] if r.random() < 0.7 else []) + core + ([pick(r, closers)] if r.random() < 0.5 else [])
    return {"instruction": _instruction(r, role, name, village, persona, facts), "input": inp, "output": " ".join(parts)}
