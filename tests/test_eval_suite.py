"""The eval stage's translation and pass@k sections: the same numbers as the stand-alone pieces they are built
from (krllm eval translate, the pass@k estimator over independently drawn samples), and the report card rows."""

from __future__ import annotations

import json

import pytest

from krllm.config import validate
from krllm.eval.run import EvalConfig, run_eval
from krllm.eval.translate import run_translation
from krllm.infer.testing import tiny_model_dir
from tests.test_eval_translate import PAIRS, write_jsonl


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return tiny_model_dir(root / "a", seed=1), tiny_model_dir(root / "b", seed=2)


@pytest.fixture(scope="module")
def evaluated(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    pairs = write_jsonl(tmp / "pairs.jsonl", PAIRS)
    cfg = validate({"out_dir": str(tmp / "out"), "base": str(models[0]), "tuned": str(models[1]), "decode_batch": 4,
                    "npc": {"enabled": False}, "samples": {"enabled": False},
                    "math": {"n": 3, "max_new_tokens": 8, "samples": 4, "k": [1, 2, 4], "temperature": 1.0},
                    "translate": {"enabled": True, "data": str(pairs), "max_new_tokens": 8, "examples": 2}},
                   EvalConfig, "test")
    return cfg, run_eval(cfg), pairs, tmp


def test_translation_section_equals_krllm_eval_translate(evaluated, models):
    cfg, out, pairs, tmp = evaluated
    saved = json.loads((tmp / "out" / "eval.json").read_text(encoding="utf-8"))
    for role, model in zip(("base", "tuned"), models):
        alone = run_translation(str(model), str(pairs), "ko", "en", tmp / f"alone_{role}", max_new_tokens=8)
        ours, ref = saved["translate"][role], alone["translate"]["model"]
        assert [e["hypothesis"] for e in ours["examples"]] == [e["hypothesis"] for e in ref["examples"]]
        assert any(e["hypothesis"] for e in ours["examples"])
        for key in ("bleu", "chrf", "ter", "signatures"):
            assert ours[key] == ref[key], key
    assert saved["data"]["translate"]["n"] == 5
    assert "| base | " in (tmp / "out" / "translations.md").read_text(encoding="utf-8")


def test_pass_at_k_equals_the_estimator_over_the_same_samples(evaluated, models):
    from krllm.data.sets.records import load_examples
    from krllm.eval.generate import sampled_answers
    from krllm.eval.passk import math_pass_at_k
    from krllm.model.load import load

    cfg, out, _, _ = evaluated
    problems = load_examples(cfg.math.data, "grpo", n=3, seed=cfg.math.seed)
    lm = load(models[1], device="cpu", dtype="fp32")
    sampled = sampled_answers(lm, [p["prompt"][-1]["content"] for p in problems], 4, temperature=1.0, top_p=0.95,
                              seed=cfg.math.seed, max_new_tokens=8)
    assert len({a["answer"] for s in sampled for a in s}) > 3  # real sampling: the answers differ
    want = math_pass_at_k([[a["answer"] for a in s] for s in sampled], [p["ground_truth_answer"] for p in problems],
                          [1, 2, 4])
    got = out["math"]["tuned"]["pass_at_k"]
    assert {k: got[k] for k in want} == want and got["temperature"] == 1.0


def test_pass_at_k_config_checks_k_against_samples():
    from krllm.config import ConfigError

    with pytest.raises((ConfigError, ValueError), match="between 1 and samples"):
        validate({"math": {"samples": 2, "k": [1, 4]}}, EvalConfig, "test")


def test_report_rows_and_sample_translations(evaluated):
    from krllm.pipeline.report import _metrics_table, _translations

    _, out, _, _ = evaluated
    labels = {"base": "base (pretrained)", "tuned": "fine-tuned"}
    table = "\n".join(_metrics_table(out, labels))
    bleu = next(ln for ln in table.splitlines() if ln.startswith("| translation BLEU"))
    assert f"{out['translate']['base']['bleu']:.2f}".rstrip("0").rstrip(".") in bleu
    ter = next(ln for ln in table.splitlines() if ln.startswith("| translation TER"))
    delta = out["translate"]["tuned"]["ter"] - out["translate"]["base"]["ter"]
    assert ("(better)" if delta < 0 else "(worse)" if delta > 0 else "(same)") in ter
    assert "| math pass@4 (sampled) |" in table and "| math pass@1 (sampled) |" in table
    pairs = "\n".join(_translations(out, labels))
    assert pairs.count("**Pair ") == 2 and PAIRS[0]["en"] in pairs
    assert out["translate"]["tuned"]["signatures"]["bleu"] in pairs
