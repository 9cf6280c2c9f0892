"""Korean text helpers for the generated sets: particles that agree with the word, and reviews.

Korean particles depend on whether the word ends in a consonant (받침): 사과+를, 책+을, 칼+로,
집+으로. `josa` decides from the last Hangul syllable, or from how a final digit is read
(3 삼 → 을, 2 이 → 를), so generated text is grammatical, not "사과을".
"""

from __future__ import annotations

import random
from typing import Sequence, TypeVar

T = TypeVar("T")

# Sino-Korean reading of a final digit: does it end in a consonant, and is that consonant ㄹ?
_DIGIT_BATCHIM = {"0": (True, False), "1": (True, True), "2": (False, False), "3": (True, False),
                  "4": (False, False), "5": (False, False), "6": (True, False), "7": (True, True),
                  "8": (True, True), "9": (False, False)}
_PAIRS = {"은/는": ("은", "는"), "이/가": ("이", "가"), "을/를": ("을", "를"), "과/와": ("과", "와"),
          "으로/로": ("으로", "로"), "이에요/예요": ("이에요", "예요"), "이야/야": ("이야", "야"),
          "이다/다": ("이다", "다"), "이니/니": ("이니", "니"), "이라서/라서": ("이라서", "라서"), "아/야": ("아", "야"), "이랑/랑": ("이랑", "랑")}


def pick(r: random.Random, options: Sequence[T]) -> T:
    return options[r.randrange(len(options))]


def _final_sound(word: str) -> tuple[bool, bool]:
    """(ends in a consonant, that consonant is ㄹ) for the last Hangul syllable or digit."""
    for ch in reversed(word.strip()):
        if "가" <= ch <= "힣":
            jong = (ord(ch) - 0xAC00) % 28
            return jong != 0, jong == 8
        if ch in _DIGIT_BATCHIM:
            return _DIGIT_BATCHIM[ch]
        if ch.isalpha():
            return False, False
    return False, False


def josa(word: str, pair: str) -> str:
    """`word` + the particle form that agrees with it: josa("책", "을/를") == "책을"."""
    with_c, without_c = _PAIRS[pair]
    has, is_rieul = _final_sound(word)
    if pair == "으로/로":
        return word + ("으로" if has and not is_rieul else "로")
    return word + (with_c if has else without_c)


# --------------------------------------------------------------------------- reviews

# Per domain: (subject words, positive sentences, negative sentences). Sentences are complete and
# end in 해요체 or 음슴체, so they combine freely.
_DOMAINS = {
    "식당": (("이 집", "여기", "이 식당"),
           ("음식이 정말 맛있어요.", "고기가 부드럽고 양도 넉넉했어요.", "직원분들이 친절하셨어요.", "국물이 진하고 깔끔함.",
            "가격 대비 훌륭해요.", "반찬 하나하나 정성이 느껴졌어요."),
           ("음식이 너무 짰어요.", "한 시간을 기다렸는데 음식이 식어서 나왔어요.", "직원이 불친절했어요.",
            "양이 너무 적음.", "테이블이 끈적거리고 지저분했어요.", "가격에 비해 맛이 평범 이하예요.")),
    "영화": (("이 영화", "이번 작품", "이 작품"),
           ("배우들 연기가 정말 좋았어요.", "결말에서 소름이 돋았어요.", "두 시간이 순식간에 지나갔어요.",
            "음악이 장면이랑 잘 어울림.", "각본이 탄탄해서 몰입감이 대단했어요."),
           ("중간에 졸았어요.", "스토리가 뻔하고 지루했어요.", "결말이 너무 허무했어요.", "연기가 어색해서 몰입이 안 됨.",
            "러닝타임이 쓸데없이 길어요.")),
    "숙소": (("이 숙소", "이 호텔", "여기"),
           ("방이 깨끗하고 침구가 포근했어요.", "바다 전망이 끝내줘요.", "사장님이 친절하게 안내해 주셨어요.",
            "조식이 맛있고 종류도 많았어요.", "역에서 가까워서 편했음."),
           ("방에서 곰팡이 냄새가 났어요.", "밤새 옆방 소리가 다 들렸어요.", "사진이랑 실제가 너무 달라요.",
            "온수가 잘 안 나왔어요.", "체크인하는 데 40분 걸림.")),
    "제품": (("이 제품", "이거", "이 이어폰"),
           ("배터리가 오래가요.", "마감이 꼼꼼하고 튼튼해요.", "음질이 가격 이상이에요.", "설정이 간단해서 부모님도 쉽게 쓰세요.",
            "디자인이 예쁘고 가벼움."),
           ("일주일 만에 고장 났어요.", "배터리가 반나절도 못 가요.", "충전 단자가 헐거워요.", "설명서와 기능이 달라요.",
            "소음이 심해서 못 쓰겠음.")),
    "게임": (("이 게임", "이번 업데이트", "이 RPG"),
           ("그래픽이 정말 예뻐요.", "퀘스트가 다양해서 할 게 많아요.", "타격감이 최고예요.", "과금 없이도 충분히 재밌음.",
            "NPC 대사가 재치 있어요."),
           ("버그가 너무 많아요.", "로딩이 길어서 답답해요.", "과금 유도가 심함.", "서버가 자꾸 끊겨요.",
            "밸런스가 엉망이에요.")),
    "배송": (("이번 주문", "배송", "이 쇼핑몰"),
           ("주문한 다음 날 바로 왔어요.", "포장이 꼼꼼해서 파손이 없었어요.", "문의에 빠르게 답해 주셨어요."),
           ("일주일이 넘게 걸렸어요.", "상자가 찌그러져서 왔어요.", "다른 상품이 왔는데 교환도 안 해 줘요.")),
}
# Label-neutral context that opens some reviews (what happened, not how it was).
_CONTEXT = {
    "식당": ("점심시간에 동료들이랑 갔어요.", "주말 저녁에 가족 외식으로 방문했어요.", "친구 추천으로 처음 가 봤어요.", "두 번째 방문이에요.",
           "배달로 시켜 먹었어요."),
    "영화": ("어제 심야로 봤어요.", "친구랑 개봉 첫날 봤어요.", "원작 소설을 읽고 봤어요.", "아이들이랑 같이 봤어요.", "OTT로 봤어요."),
    "숙소": ("2박 3일 가족 여행으로 묵었어요.", "출장 때문에 하루 묵었어요.", "연휴에 급하게 예약했어요.", "부모님 모시고 갔어요."),
    "제품": ("한 달째 쓰는 중이에요.", "선물용으로 샀어요.", "할인할 때 구매했어요.", "쓰던 게 고장 나서 바꿨어요.", "리뷰 보고 샀어요."),
    "게임": ("출시 첫 주부터 하고 있어요.", "50시간 정도 플레이했어요.", "친구들이랑 같이 시작했어요.", "이번 시즌 패스 샀어요."),
    "배송": ("평일 오전에 주문했어요.", "명절 전에 주문했어요.", "처음 이용하는 쇼핑몰이에요.", "선물 보내려고 주문했어요."),
}
_POS_MARK = ("", "", "", " ㅎㅎ", "!!", " 👍", " ^^")
_NEG_MARK = ("", "", "", " ㅠㅠ", " …", " 😡", " 하...")
_POS_END = ("강력 추천해요!", "또 이용할게요.", "재구매 의사 있어요.", "별 다섯 개도 아깝지 않아요.", "만족합니다.", "최고예요 ㅎㅎ")
_NEG_END = ("다시는 이용 안 할 듯.", "비추천합니다.", "돈이 아까워요.", "별 하나도 아까움.", "실망이에요.", "환불하고 싶어요 ㅠㅠ")
# Harder cases, label by construction: negation that flips the surface word, and sarcasm.
_HARD_POS = ("기대 안 했는데 생각보다 괜찮았어요.", "솔직히 나쁘지 않았어요. 오히려 좋았음.", "처음엔 별로일 줄 알았는데 완전 반전이에요.",
             "단점을 찾기가 어렵네요.", "불만 하나 없이 잘 썼어요.", "걱정했던 게 무색할 만큼 좋았어요.")
_HARD_NEG = ("와, 정말 대단하네요. 이렇게 빨리 실망시키다니.", "참 빨리도 고장 나네요.", "기대가 컸던 만큼 실망도 커요.",
             "좋은 점을 찾으려고 했는데 못 찾았어요.", "이 가격이면 차라리 안 사는 게 나아요.", "친구한테는 절대 권하지 않을 거예요.")


def make_review(r: random.Random, label: str) -> str:
    """One short review whose label follows from its content."""
    domain = pick(r, tuple(_DOMAINS))
    subjects, pos, neg = _DOMAINS[domain]
    good, bad, end_good, end_bad = (pos, neg, _POS_END, _NEG_END) if label == "positive" else (neg, pos, _NEG_END, _POS_END)
    kind = r.random()
    if kind < 0.35:  # plain: one or two same-polarity sentences + an overall verdict
        parts = r.sample(good, r.randint(1, 2)) + [pick(r, end_good)]
    elif kind < 0.6:  # contrast: the other polarity first, the verdict after "그런데/하지만"
        parts = [pick(r, bad), pick(r, ("그런데", "하지만", "그래도", "근데")), pick(r, good), pick(r, end_good)]
    elif kind < 0.8:  # negation / sarcasm / understatement
        parts = [pick(r, _HARD_POS if label == "positive" else _HARD_NEG)]
        if r.random() < 0.5:
            parts.append(pick(r, good))
    else:  # subject-led: "이 식당은 ..."
        subj = josa(pick(r, subjects), "은/는")
        parts = [f"{subj} {pick(r, good)}", pick(r, end_good)]
    if r.random() < 0.5:
        parts.insert(0, pick(r, _CONTEXT[domain]))
    return " ".join(parts) + pick(r, _POS_MARK if label == "positive" else _NEG_MARK)
