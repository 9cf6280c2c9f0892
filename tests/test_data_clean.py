"""Korean cleaning, filters, dedupe keys, split assignment and the MinHash wiring (no pipeline runs)."""

import unicodedata

import numpy as np
import pytest
from datatrove.data import Document
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature

from krllm.data.prepare.steps import (HangulRatioFilter, KoreanCleaner, KoreanMinhashSignature, LengthFilter, exact_dedupe_content,
                              minhash_config, xxhash64_utf8)
from krllm.data.prepare.textclean import clean_text, dedupe_key, hangul_ratio, split_of, strip_html


def test_strip_html_removes_markup_keeps_text_and_comparisons():
    html = ("<html><head><style>p {color: red}</style><script>alert('x')</script></head><body>"
            "<p>대한민국은 <b>민주공화국</b>이다.</p><!-- 주석 --><div>주권은 국민에게 &amp; 있다&#46;</div>"
            "<br/>끝</body></html>")
    assert strip_html(html).split() == ["대한민국은", "민주공화국이다.", "주권은", "국민에게", "&", "있다.", "끝"]
    assert clean_text(html) == "대한민국은 민주공화국이다.\n\n주권은 국민에게 & 있다.\n\n끝"
    # not markup: a comparison and a heart, no entity
    assert clean_text("a < b 이고 x<3 & y > 2") == "a < b 이고 x<3 & y > 2"


def test_control_characters_and_invisible_marks_removed():
    text = "\ufeff안녕\u200b하세요\x00\x07 세계\u00ad\x1b[0m\t끝\u2060"
    assert clean_text(text) == "안녕하세요 세계[0m 끝"
    assert clean_text(text, remove_control=False) != "안녕하세요 세계[0m 끝"


def test_unicode_normalization_nfc_and_nfkc():
    decomposed = unicodedata.normalize("NFD", "한국어")  # 7 conjoining jamo
    assert len(decomposed) == 8 and clean_text(decomposed) == "한국어"
    assert clean_text("제1조 ① ＡＢＣ") == "제1조 ① ＡＢＣ"  # NFC keeps compatibility characters
    assert clean_text("제1조 ① ＡＢＣ", normalization="NFKC") == "제1조 1 ABC"
    assert clean_text(decomposed, normalization="none") == decomposed


# characters where normalization does something: conjoining jamo, combining marks of several classes,
# compatibility forms, singletons, spaces the cleaner rewrites, plus plain Hangul and ASCII
_TRICKY = ("한국어가abc ." + unicodedata.normalize("NFD", "한글각") + "\u1100\u1161\u11a8\u0301\u0323\u0308\u0345"
           "\u05b0\u0e38\u302a\u3099\u309a\u2126\u212b\u00c5\u0041\u030a\u1e0b\u0307\uac00\u11a8"
           "\u2460\uff21\ufb01\u3000\u00a0\u00ad\u200b\n\t\u0f73\u0344\U0001d15e\U0001109a\U000114bb\u0b4c")


@pytest.mark.parametrize("normalization", ["NFC", "NFKC"])
def test_cleaned_text_is_already_what_the_tokenizer_s_nfc_would_make(normalization):
    """Why the tokenize step may drop a tokenizer's NFC normalizer: cleaned text is a fixed point of
    the tokenizer's (Rust) NFC, not only of Python's unicodedata."""
    import random

    from tokenizers import normalizers

    nfc = normalizers.NFC()
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(_TRICKY) for _ in range(rng.randint(1, 12)))
        cleaned = clean_text(text, normalization=normalization)
        assert nfc.normalize_str(cleaned) == cleaned, ascii(text)
    for cp in range(0x110000):  # every character on its own
        if not 0xD800 <= cp < 0xE000:
            cleaned = unicodedata.normalize(normalization, chr(cp))
            assert nfc.normalize_str(cleaned) == cleaned, hex(cp)


def test_whitespace_collapsed_paragraphs_kept():
    text = "  첫\u00a0줄\t\t끝  \r\n\r\n\r\n\r\n둘째\u3000문단   \n 셋째 줄 \n\n\n"
    assert clean_text(text) == "첫 줄 끝\n\n둘째 문단\n셋째 줄"
    assert clean_text(text, collapse_whitespace=False).startswith("  첫")


def test_hangul_ratio_counts_letters_only():
    assert hangul_ratio("한국어 text") == pytest.approx(3 / 7)
    assert hangul_ratio("제1조 (국민) 123,456! ...") == 1.0  # digits and punctuation don't count
    assert hangul_ratio("1234 - 5 -") == 0.0  # no letters at all
    assert hangul_ratio("大韓民國 헌법") == pytest.approx(2 / 6)  # Hanja are letters, not Hangul
    assert hangul_ratio(unicodedata.normalize("NFD", "한")) == 1.0  # conjoining jamo are Hangul


def test_dedupe_key_ignores_case_and_spacing_only():
    assert dedupe_key("Korea  헌법\n제1조") == dedupe_key("korea 헌법 제1조") == "korea 헌법 제1조".encode()
    assert dedupe_key("헌법 제1조") != dedupe_key("헌법 제2조")
    assert exact_dedupe_content(Document(text="A  b", id="x")) == b"a b"


def test_split_is_stable_seeded_and_proportional():
    texts = [f"문서 {i} 번째 내용" for i in range(20000)]
    splits = [split_of(t, 0.05, 0.02) for t in texts]
    assert splits == [split_of(t, 0.05, 0.02) for t in texts]  # same text, same split
    counts = {s: splits.count(s) / len(texts) for s in ("train", "val", "test")}
    assert counts["val"] == pytest.approx(0.05, abs=0.006) and counts["test"] == pytest.approx(0.02, abs=0.004)
    other_seed = [split_of(t, 0.05, 0.02, seed=7) for t in texts]
    assert sum(a != b for a, b in zip(splits, other_seed)) > 500  # the seed reshuffles
    assert {split_of(t, 0.0, 0.0) for t in texts[:100]} == {"train"}


def test_filters_return_reasons_like_datatrove_expects():
    lf = LengthFilter(min_chars=5, max_chars=10)
    assert lf.filter(Document(text="", id="a")) == (False, "empty")
    assert lf.filter(Document(text="짧다", id="b")) == (False, "too_short")
    assert lf.filter(Document(text="가" * 11, id="c")) == (False, "too_long")
    assert lf.filter(Document(text="가나다라마바", id="d")) is True
    assert LengthFilter(min_chars=1, max_chars=0).filter(Document(text="가" * 10**6, id="e")) is True
    hf = HangulRatioFilter(0.5)
    assert hf.filter(Document(text="This is English only.", id="f")) == (False, "low_hangul_ratio")
    assert hf.filter(Document(text="한국어로 쓴 문장입니다, OK", id="g")) is True
    # run() counts each reason in datatrove's stats
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(["", "짧다", "가나다라마바", "가" * 20])]
    kept = list(lf.run(iter(docs)))
    assert [d.text for d in kept] == ["가나다라마바"]
    assert {k: v.total for k, v in lf.stats.stats.items() if k.startswith("dropped_")} == {
        "dropped_empty": 1, "dropped_too_short": 1, "dropped_too_long": 1}


def test_cleaner_step_rewrites_documents():
    step = KoreanCleaner(normalization="NFKC")
    out = list(step.run(iter([Document(text="<p>①  번</p>", id="1")])))
    assert out[0].text == "1 번"


def test_minhash_signature_uses_eojeol_shingles_and_xxhash(tmp_path):
    import xxhash

    assert xxhash64_utf8("헌법 제1조") == xxhash.xxh64_intdigest("헌법 제1조".encode("utf-8"))
    cfg = minhash_config(ngrams=3, buckets=14, hashes_per_bucket=8, seed=1)
    step = KoreanMinhashSignature(str(tmp_path), cfg)
    assert isinstance(step, MinhashDedupSignature)
    base = ("대한민국은 민주공화국이다 대한민국의 주권은 국민에게 있고 모든 권력은 국민으로부터 나온다 "
            "대한민국의 국민이 되는 요건은 법률로 정한다 국가는 법률이 정하는 바에 의하여 재외국민을 보호할 의무를 진다")
    words = base.split()
    near = " ".join(words[:-1] + ["지닌다"])
    other = "정당의 설립은 자유이며 복수정당제는 보장된다 정당은 그 목적 조직과 활동이 민주적이어야 한다"
    # shingles: (number of eojeol - n + 1) word 3-grams, punctuation-insensitive
    assert step.get_shingles(base).shape == (len(words) - 2, 1)
    assert np.array_equal(step.get_shingles(base), step.get_shingles(base.replace(" ", " , ")))

    def sig(t):
        return np.array(step.get_signature(step.get_shingles(t)))

    same_near = np.mean(sig(base) == sig(near))
    same_other = np.mean(sig(base) == sig(other))
    assert same_near > 0.7 and same_other < 0.05  # estimated Jaccard similarity


def test_signature_formula_is_datatrove_s_and_shingles_are_normalized(tmp_path):
    from krllm.data.prepare.steps import KoreanWordTokenizer

    cfg = minhash_config(ngrams=5, buckets=14, hashes_per_bucket=8, seed=1)
    ours = KoreanMinhashSignature(str(tmp_path / "a"), cfg)
    theirs = MinhashDedupSignature(str(tmp_path / "b"), cfg, language=KoreanWordTokenizer())
    shingles = np.random.default_rng(0).integers(0, 2**64 - 1, size=(10_000, 1), dtype=np.uint64)
    assert ours.get_signature(shingles) == theirs.get_signature(shingles)  # blocks of 4096 rows, same minima
    # a shingle whose a*x+b wraps to 2^64-1 in some column: the Mersenne shortcut's rare correction path
    j = next(k for k in range(ours.parameters[0].shape[1]) if int(ours.parameters[0][0, k]) % 2)
    a, b = int(ours.parameters[0][0, j]), int(ours.parameters[1][0, j])
    special = ((2**64 - 1 - b) * pow(a, -1, 2**64)) % 2**64
    tricky = np.vstack([shingles[:50], np.array([[special]], dtype=np.uint64)])
    assert ours.get_signature(tricky) == theirs.get_signature(tricky)
    a = ours.get_shingles("제1조 KOREA 헌법은 (국민의) 권리를 보장한다 — 2020년 개정.")
    b = ours.get_shingles("제2조 korea 헌법은 국민의 권리를, 보장한다 1987년 개정")
    np.testing.assert_array_equal(a, b)  # numbers -> 0, case, edge punctuation and dashes don't matter
    assert not np.array_equal(a, ours.get_shingles("제1조 KOREA 헌법은 국민의 의무를 보장한다 2020년 개정"))


def test_minhash_signature_files_are_byte_identical_to_datatrove_s(tmp_path):
    """Our block writer produces exactly the sorted bucket files of datatrove's per-document run()."""
    import random

    from datatrove.data import Document

    from krllm.data.prepare.steps import KoreanWordTokenizer

    cfg = minhash_config(ngrams=3, buckets=14, hashes_per_bucket=8, seed=1)
    ours = KoreanMinhashSignature(str(tmp_path / "ours"), cfg)

    class Theirs(MinhashDedupSignature):  # datatrove's run() over our shingles and signature formula
        get_shingles = staticmethod(ours.get_shingles)
        get_signature = staticmethod(ours.get_signature)

    theirs = Theirs(str(tmp_path / "theirs"), cfg, language=KoreanWordTokenizer())
    rng = random.Random(0)
    words = "헌법 국민 권리 의무 법률 대통령 국회 정부 법원 선거 자유 평등 재산 교육 근로".split()
    # > 2 blocks of documents; some too short for a 3-gram (no record, index skipped); some repeated
    docs = [" ".join(rng.choice(words) for _ in range(rng.choice([1, 2, 5, 12, 40]))) for _ in range(2300)]
    docs += docs[:50]
    for step in (ours, theirs):
        step.run((Document(text=t, id=str(i)) for i, t in enumerate(docs)), rank=3, world_size=4)
    files = sorted(p.relative_to(tmp_path / "ours") for p in (tmp_path / "ours").rglob("*.sig"))
    assert len(files) == 14
    for rel in files:
        data = (tmp_path / "ours" / rel).read_bytes()
        assert data == (tmp_path / "theirs" / rel).read_bytes(), rel
        assert len(data) // 68 == sum(len(t.split()) >= 3 for t in docs)


def test_clean_fast_path_equals_the_full_regex_passes():
    """Already-clean text skips the regexes; on random messy strings both paths must agree."""
    import random

    from krllm.data.prepare import textclean as T

    def full(text, norm):
        text = T._CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
        text = unicodedata.normalize(norm, text)
        text = T._HSPACE_RUN.sub(" ", text)
        text = T._MANY_NEWLINES.sub("\n\n", T._SPACE_AROUND_NEWLINE.sub("\n", text))
        return text.strip()

    pieces = ["가", "나", " ", "  ", "\n", "\r\n", "\t", "\u00a0", "\u3000", "\x00", "\u200b", "a", "\n\n\n",
              "\ufeff", "\u00ad", ".", "¨", "\u2003"]
    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        for norm in ("NFC", "NFKC"):
            assert clean_text(text, normalization=norm, strip_html_tags=False) == full(text, norm), (text, norm)
