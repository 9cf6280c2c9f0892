"""Text metrics against their references: BLEU / chrF / TER equal to the `sacrebleu` command line on the same
files (scores and signatures), ROUGE against an n-gram / LCS count written out here, pass@k against a
brute-force enumeration of k-subsets, and the COMET / tokenizer messages."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from krllm.errors import KrllmError, UsageError
from krllm.eval.passk import math_pass_at_k, pass_at_k
from krllm.eval.text_metrics import comet_score, corpus_scores, one_line, rouge_scores

REFS = ["The cat sat on the mat.", "Choose Format - Character to open the dialog.",
        "Click OK to apply the changes and close the dialog.", "Hello world", "",
        "Select the cells, then choose Data - Sort."]
HYPS = ["the cat sat on a mat", "Choose Format – Character, the dialog opens.",
        "Click OK to apply changes.", "Hello there world!", "nothing", "Select cells and choose Data - Sort"]


def sacrebleu_cli(tmp_path: Path, hyps: list[str], refs: list[str], *extra: str) -> dict:
    ref, hyp = tmp_path / "ref.txt", tmp_path / "hyp.txt"
    ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
    hyp.write_text("\n".join(hyps) + "\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu", "chrf", "ter",
                           "-w", "6", "--format", "json", *extra], capture_output=True, text=True, check=True)
    return {r["name"]: r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("extra,kwargs", [((), {}), (("-l", "ko-en"), {"tgt_lang": "en"}),
                                          (("-lc",), {"lowercase": True}),
                                          (("--tokenize", "char"), {"tokenize": "char"})])
def test_scores_equal_sacrebleu_cli(tmp_path, extra, kwargs):
    ours = corpus_scores(HYPS, REFS, **kwargs)
    cli = sacrebleu_cli(tmp_path, HYPS, REFS, *extra)
    for name, key in (("bleu", "BLEU"), ("chrf", "chrF2"), ("ter", "TER")):
        assert round(ours[name]["score"], 6) == pytest.approx(cli[key]["score"], abs=1e-6), name
        assert ours[name]["signature"] == cli[key]["signature"], name
    assert 0 < ours["bleu"]["score"] < 100 and ours["ter"]["score"] > 0


def test_korean_targets_with_char_tokens_equal_cli(tmp_path):
    refs = ["파일을 저장하려면 확인을 누르세요.", "서식 - 문자를 선택합니다.", "셀을 선택하십시오."]
    hyps = ["파일을 저장하려면 확인 누르세요", "서식 - 문자 선택", "셀 선택"]
    ours = corpus_scores(hyps, refs, tgt_lang="ko", tokenize="char")
    cli = sacrebleu_cli(tmp_path, hyps, refs, "-l", "en-ko", "--tokenize", "char")
    assert round(ours["bleu"]["score"], 6) == pytest.approx(cli["BLEU"]["score"], abs=1e-6)
    assert ours["chrf"]["signature"] == cli["chrF2"]["signature"]


def test_identical_text_scores_perfectly_and_multiline_is_one_segment():
    s = corpus_scores(["a b c d e\nf g"], ["a b c d e f g"])
    assert s["bleu"]["score"] == pytest.approx(100) and s["chrf"]["score"] == pytest.approx(100)
    assert s["ter"]["score"] == 0
    assert one_line("  x \n\n y ") == "x y"


def test_bad_inputs_are_named():
    with pytest.raises(KrllmError, match="2 hypotheses for 1 references"):
        corpus_scores(["a", "b"], ["a"])
    with pytest.raises(KrllmError, match="no segments"):
        corpus_scores([], [])
    with pytest.raises(UsageError, match="--tokenize 'nope'.*13a"):
        corpus_scores(["a"], ["a"], tokenize="nope")


def test_korean_bleu_without_mecab_names_the_install():
    pytest.importorskip("sacrebleu")
    try:
        import mecab_ko  # noqa: F401

        pytest.skip("mecab-ko is installed here")
    except ImportError:
        pass
    with pytest.raises(KrllmError, match=r'sacrebleu\[ko\]'):
        corpus_scores(["안녕"], ["안녕"], tgt_lang="ko")


def _ngrams(tokens, n):
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _lcs(a, b):
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def _f1(overlap, n_hyp, n_ref):
    if not overlap:
        return 0.0
    p, r = overlap / n_hyp, overlap / n_ref
    return 2 * p * r / (p + r)


def test_rouge_equals_ngram_and_lcs_counts():
    pytest.importorskip("rouge_score")
    hyps = ["파일을 저장하려면 확인을 누르세요", "서식 메뉴 에서 문자를 고릅니다", "셀을 선택"]
    refs = ["파일을 저장하려면 확인을 클릭하세요", "서식 - 문자를 선택합니다", "셀을 먼저 선택"]
    got = rouge_scores(hyps, refs, korean=True)
    want = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for h, r in zip(hyps, refs):
        ht, rt = h.split(), r.split()
        for n in (1, 2):
            a, b = _ngrams(ht, n), _ngrams(rt, n)
            want[f"rouge{n}"] += _f1(sum((a & b).values()), sum(a.values()), sum(b.values()))
        want["rougeL"] += _f1(_lcs(ht, rt), len(ht), len(rt))
    for k in want:
        assert got[k] == pytest.approx(100 * want[k] / len(hyps)), k
    assert got["rouge1"] > 0
    # the package's default tokenizer keeps only [a-z0-9]: Korean scores 0 without korean=True
    assert rouge_scores(hyps, refs)["rouge1"] == 0.0


def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 9):
        for c in range(0, n + 1):
            outcomes = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_math_pass_at_k_reads_answers_like_the_reward():
    rng = random.Random(0)
    truths = ["12", "0.75", "#### 7"]  # the last one is a worked-solution style truth
    samples = [["정답: 12", "답은 13", "12.0", "정답: 12 또는 13"],  # 2 right (hedging counts as no answer)
               ["3/4", "0.7", "\\boxed{\\frac{3}{4}}", "x"],  # 2 right
               ["Answer: 8", "8", "9", "10"]]  # 0 right
    got = math_pass_at_k(samples, truths, [1, 2, 4])
    assert got["correct"] == [2, 2, 0] and got["samples"] == 4 and got["n"] == 3
    for k in (1, 2, 4):  # against the mean over problems of the brute-force share of k-subsets with a right answer
        want = 0.0
        for answers, c in zip(samples, got["correct"]):
            subsets = list(itertools.combinations(range(4), k))
            want += sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert got[f"pass@{k}"] == pytest.approx(want / 3)
    assert got["pass@1"] == pytest.approx((0.5 + 0.5 + 0) / 3)
    rng.shuffle(samples[0])
    with pytest.raises(UsageError, match="between 1 and"):
        math_pass_at_k(samples, truths, [5])


def test_comet_message_names_what_to_install(tmp_path):
    try:
        import comet  # noqa: F401
    except ImportError:
        with pytest.raises(KrllmError, match="pip install unbabel-comet.*wmt22-comet-da"):
            comet_score(["a"], ["b"], ["c"], model_path=str(tmp_path / "model.ckpt"))
    else:
        with pytest.raises(KrllmError, match="COMET model not found"):
            comet_score(["a"], ["b"], ["c"], model_path=str(tmp_path / "model.ckpt"))
