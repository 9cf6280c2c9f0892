"""`krllm eval prompts`: per-template accuracy equals the math exact match of greedy answers to the rendered
prompts (each checked by transformers elsewhere), the bar plot is a real PNG, bad templates are named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from krllm.errors import UsageError
from krllm.eval.prompts import TEMPLATES, parse_templates
from krllm.infer.testing import tiny_model_dir

ROOT = Path(__file__).resolve().parents[1]


def test_templates_parse_and_bad_ones_are_named():
    assert parse_templates(None) == TEMPLATES
    got = parse_templates(["step", "coach=코치입니다.\\n\\n{question}"])
    assert got == {"step": TEMPLATES["step"], "coach": "코치입니다.\n\n{question}"}
    with pytest.raises(UsageError, match="unknown; built in: plain, step, persona"):
        parse_templates(["fancy"])
    with pytest.raises(UsageError, match=r"with \{question\}"):
        parse_templates(["x=no placeholder"])
    with pytest.raises(UsageError, match="given twice"):
        parse_templates(["plain", "plain"])


def test_cli_accuracy_per_template_equals_exact_match_of_greedy_answers(tmp_path):
    from krllm.data.sets.records import load_examples
    from krllm.eval.generate import greedy_answers
    from krllm.eval.math import is_correct
    from krllm.model.load import load

    model = tiny_model_dir(tmp_path / "m", seed=5)
    data = tmp_path / "math.jsonl"
    rows = [{"prompt": "사과 3개와 배 4개는 모두 몇 개?", "ground_truth_answer": "7"},
            {"prompt": "12 나누기 4는?", "ground_truth_answer": "3"}, {"prompt": "5 + 5 = ?", "ground_truth_answer": "10"}]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "krllm", "eval", "prompts", str(model), "--data", str(data), "--n", "3",
                           "--max-new-tokens", "6", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((tmp_path / "out" / "eval.json").read_text(encoding="utf-8"))
    assert list(out["prompts"]) == ["plain", "step", "persona"]
    lm = load(model, device="cpu", dtype="fp32")
    problems = load_examples(str(data), "grpo")
    for name, template in TEMPLATES.items():
        want = greedy_answers(lm, [template.replace("{question}", p["prompt"][-1]["content"]) for p in problems],
                              max_new_tokens=6)
        got = out["prompts"][name]
        assert [e["answer"] for e in got["examples"]] == [w["answer"] for w in want]
        right = sum(is_correct(w["answer"], p["ground_truth_answer"]) for w, p in zip(want, problems))
        assert (got["correct"], got["n"], got["accuracy"]) == (right, 3, right / 3)
        assert f"{name:>12}: exact match {right}/3" in proc.stdout
    assert len({tuple(e["answer"] for e in out["prompts"][k]["examples"]) for k in TEMPLATES}) > 1  # prompts matter
    png = tmp_path / "out" / "accuracy.png"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.size == (770, 440)
    assert "![accuracy by template](accuracy.png)" in (tmp_path / "out" / "samples.md").read_text(encoding="utf-8")
