"""`krllm eval harness` against lm-eval's own command line: a multiple-choice and a generation task over local
JSONL on a tiny model, fully offline, the same numbers; the shipped task YAMLs load and run; bad input named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from krllm.errors import UsageError  # noqa: E402
from krllm.eval.harness import harness_model_args, run_harness  # noqa: E402
from krllm.infer.testing import tiny_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

MC = """task: t_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}} 답:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list: [{{metric: acc}}, {{metric: acc_norm}}]
metadata: {{version: 1.0}}
"""
GEN = """task: t_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{a}}}}"
generation_kwargs: {{until: ["\\n"], do_sample: false, max_gen_toks: 6}}
metric_list: [{{metric: exact_match, aggregation: mean, higher_is_better: true}}]
metadata: {{version: 1.0}}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("harness")
    model = tiny_model_dir(tmp / "m", seed=4)
    tasks = tmp / "tasks"
    tasks.mkdir()
    mc = tmp / "mc.jsonl"
    mc.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"q": "하늘은 무슨 색인가요?", "choices": ["파랑", "초록", "빨강"], "label": 0},
        {"q": "2 더하기 2는?", "choices": ["3", "4"], "label": 1},
        {"q": "한국의 수도는?", "choices": ["부산", "서울", "대구", "광주"], "label": 1},
        {"q": "물은 몇 도에서 끓나요?", "choices": ["100도", "50도"], "label": 0}]), encoding="utf-8")
    gen = tmp / "gen.jsonl"
    gen.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"q": "안녕", "a": "하세요"}, {"q": "1 2 3", "a": "4"}, {"q": "가나다", "a": "라"}]), encoding="utf-8")
    (tasks / "t_mc.yaml").write_text(MC.format(data=mc), encoding="utf-8")
    (tasks / "t_gen.yaml").write_text(GEN.format(data=gen), encoding="utf-8")
    return model, tasks, tmp


def lm_eval_cli(model, tasks_dir, tasks, out, cwd=ROOT, limit=None):
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={model},dtype=float32", "--tasks", tasks, "--include_path", str(tasks_dir), "--device", "cpu",
           "--batch_size", "1", "--output_path", str(out)] + (["--limit", str(limit)] if limit else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(next(Path(out).rglob("results_*.json")).read_text(encoding="utf-8"))["results"]


@pytest.mark.slow
def test_numbers_equal_lm_eval_cli(setup, tmp_path):
    model, tasks, _ = setup
    proc = subprocess.run([sys.executable, "-m", "krllm", "eval", "harness", str(model), "--tasks", "t_mc,t_gen",
                           "--include-path", str(tasks), "--out", str(tmp_path / "ours")],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads((tmp_path / "ours" / "results.json").read_text(encoding="utf-8"))["results"]
    ref = lm_eval_cli(model, tasks, "t_mc,t_gen", tmp_path / "ref")
    for task, key in (("t_mc", "acc,none"), ("t_mc", "acc_norm,none"), ("t_gen", "exact_match,none")):
        assert ours[task][key] == ref[task][key], (task, key)
    assert ours["t_mc"]["acc,none"] in (0, 0.25, 0.5, 0.75, 1.0)
    samples = [json.loads(x) for x in (tmp_path / "ours" / "samples_t_mc.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and "t_mc" in proc.stdout and "acc" in proc.stdout


@pytest.mark.slow
def test_shipped_task_yamls_run_offline(setup, tmp_path, monkeypatch):
    model, _, _ = setup
    monkeypatch.chdir(ROOT)  # their data_files are relative to the repository root
    got = run_harness(model, ["krllm_ko_sentiment", "krllm_ko_math"], tmp_path / "o", include_path="benchmarks/harness",
                      limit=3)
    assert got["n-samples"]["krllm_ko_sentiment"]["effective"] == 3
    assert 0 <= got["results"]["krllm_ko_sentiment"]["acc,none"] <= 1
    assert 0 <= got["results"]["krllm_ko_math"]["exact_match,last_number"] <= 1


@pytest.mark.slow  # lm-eval indexes its ~10,000 task configs
def test_unknown_task_is_named(setup, tmp_path):
    model, tasks, _ = setup
    with pytest.raises(UsageError, match="unknown harness task.*nope.*--include-path"):
        run_harness(model, ["nope"])
    with pytest.raises(UsageError, match="not a directory of task YAML"):
        run_harness(model, ["t_mc"], include_path=str(tmp_path / "missing"))


def test_model_and_adapter_arguments(tmp_path):
    model = tiny_model_dir(tmp_path / "m", seed=4)
    assert harness_model_args(model) == {"dtype": "float32", "pretrained": str(model)}
    with pytest.raises(UsageError, match="not a model directory"):
        harness_model_args(tmp_path / "empty")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    assert harness_model_args(adapter) == {"dtype": "float32", "pretrained": str(model), "peft": str(adapter),
                                           "tokenizer": str(model)}
