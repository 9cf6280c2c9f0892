"""Every shipped pipeline and eval config parses, wires and validates (each stage against its schema)."""

from __future__ import annotations

from pathlib import Path

import pytest

from krllm.config import ConfigError, load_config
from krllm.eval.run import EvalConfig
from krllm.pipeline.config import load_pipeline
from krllm.pipeline.runner import Pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)  # stage config paths in the pipelines are relative to the repository


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_pipeline_config_wires_and_validates(path, tmp_path):
    cfg = load_pipeline(path, [f"runs_dir={tmp_path}"])
    pipe = Pipeline(cfg, config_path=path)
    kinds = [p.kind.name for p in pipe.plans]
    assert kinds == ["tokenizer", "generate", "data", "pretrain", "sft", "eval", "report"]
    run = tmp_path / cfg.name
    by = {p.name: p for p in pipe.plans}
    assert by["data"].ctx.config["tokenizer"] == str(run / "tokenizer")
    assert by["data"].ctx.config["sources"][-1] == {"path": str(run / "texts"), "format": "jsonl"}
    assert by["pretrain"].ctx.config["data"]["shards"] == str(run / "data")
    assert by["sft"].ctx.config["base_model"] == str(run / "pretrain" / "hf")
    ev = by["eval"].ctx.config
    assert (ev["base"], ev["tuned"]) == (str(run / "pretrain" / "hf"), str(run / "sft" / "merged"))
    assert ev["perplexity"]["shards"] == str(run / "data")
    # eval sets are held out from what SFT and pretraining saw
    sft_data = by["sft"].ctx.config["data"]
    assert {"data": "builtin:npc", "n": sft_data["n"], "seed": 0} in ev["npc"]["holdout_from"]
    texts = by["texts"].ctx.config["sets"]
    assert [h["data"] for h in ev["math"]["holdout_from"]] == [t["data"] for t in texts if "math" in t["data"]]
    plans = pipe.run(dry_run=True)
    assert [p.action for p in plans] == ["run"] * 7


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.name)
def test_eval_config_parses(path):
    cfg = load_config(path, EvalConfig)
    assert cfg.npc.seed != 0 and cfg.math.seed != 0  # never the generators' training seed


def test_a_bad_stage_key_fails_before_anything_runs(tmp_path):
    path = ROOT / "configs" / "pipelines" / "demo_ko_ci.yaml"
    cfg = load_pipeline(path, [f"runs_dir={tmp_path}", "pretrain.train.max_stepz=5", "sft.peft.method=lol"])
    with pytest.raises(ConfigError) as e:
        Pipeline(cfg, config_path=path)
    text = str(e.value)
    assert "stages.pretrain (configs/pretrain/tiny_ko.yaml): train.max_stepz: unknown key" in text
    assert "stages.sft (inline config): peft.method:" in text
    assert not (tmp_path / "demo_ko_ci").exists()
