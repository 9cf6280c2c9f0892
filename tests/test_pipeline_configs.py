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


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipelines").glob("demo_ko*.yaml")), ids=lambda p: p.name)
def test_pipeline_config_wires_and_validates(path, tmp_path):
    cfg = load_pipeline(path, [f"runs_dir={tmp_path}"])
    pipe = Pipeline(cfg, config_path=path)
    kinds = [p.kind.name for p in pipe.plans]
    assert kinds == ["tokenizer", "generate", "data", "pretrain", "sft", "dpo", "grpo", "sft", "eval", "report"]
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
    math_texts = [{"data": t["data"], "n": t["n"], "seed": t["seed"]} for t in texts if "math" in t["data"]]
    assert all(t in ev["math"]["holdout_from"] for t in math_texts)
    # the math track: pretrain -> math_sft (full: hf/) -> math_dpo (LoRA: merged/) -> math_grpo, all evaluated
    assert by["math_sft"].ctx.config["base_model"] == str(run / "pretrain" / "hf")
    assert by["math_dpo"].ctx.config["base_model"] == str(run / "math_sft" / "hf")
    assert by["math_grpo"].ctx.config["base_model"] == str(run / "math_dpo" / "merged")
    assert ev["models"] == {"math_sft": str(run / "math_sft" / "hf"), "dpo": str(run / "math_dpo" / "merged"),
                            "grpo": str(run / "math_grpo" / "merged")}
    held = {(h["data"], h["seed"]) for h in ev["math"]["holdout_from"]}
    assert {("builtin:math:ko", 0), ("builtin:math:ko", 2), ("builtin:math:ko", 1)} <= held
    plans = pipe.run(dry_run=True)
    assert [p.action for p in plans] == ["run"] * 10


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "pipelines").glob("translate_ko_en*.yaml")),
                         ids=lambda p: p.name)
def test_translation_pipeline_wires_and_validates(path, tmp_path):
    cfg = load_pipeline(path, [f"runs_dir={tmp_path}"])
    pipe = Pipeline(cfg, config_path=path)
    assert [p.kind.name for p in pipe.plans] == ["tokenizer", "data", "pretrain", "sft", "eval", "report"]
    run, by = tmp_path / cfg.name, {p.name: p for p in pipe.plans}
    tok = by["tokenizer"].ctx.config
    assert (tok["pre_tokenizer"], tok["merge_unit"]) == ("llama3", "char")
    assert [s["path"] if isinstance(s, dict) else s for s in tok["sources"]] == ["builtin:ko-help", "builtin:en-help"]
    assert by["data"].ctx.config["filters"]["min_hangul_ratio"] == 0.0  # English pages kept
    sft = by["sft"].ctx.config
    assert sft["base_model"] == str(run / "pretrain" / "hf") and sft["data"]["train"] == "builtin:ko-en-help:train"
    ev = by["eval"].ctx.config
    assert ev["base"] == str(run / "pretrain" / "hf") and ev["tuned"] == str(run / "sft" / "hf")  # full tuning: hf/
    assert ev["translate"]["enabled"] and ev["translate"]["data"] == "builtin:ko-en-help:heldout"
    assert not ev["npc"]["enabled"] and not ev["math"]["enabled"]
    assert [p.action for p in pipe.run(dry_run=True)] == ["run"] * 6


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


def test_every_builtin_kind_is_registered_under_its_own_name_with_a_schema_class():
    from pydantic import BaseModel

    from krllm.pipeline.stages import BUILTIN_KINDS, get_kind

    for name in BUILTIN_KINDS:
        kind = get_kind(name)
        assert kind.name == name
        assert kind.schema is None or issubclass(kind.schema, BaseModel), name
    assert get_kind("report").schema is None  # the report reads files, it has no config


def _pipe(tmp_path, stages: dict) -> Pipeline:
    import yaml

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "runs_dir": str(tmp_path), "stages": stages}, sort_keys=False), encoding="utf-8")
    return Pipeline(load_pipeline(path), config_path=path)


def test_adapters_read_the_validated_config_not_restated_defaults(tmp_path):
    """Outputs, ETA and progress come from the schema objects: defaults are the schema's own."""
    from krllm.data.prepare.config import PrepareConfig
    from krllm.train.pretrain_config import PretrainConfig
    from krllm.train.sft_config import SFTRunConfig

    pipe = _pipe(tmp_path, {
        "tokenizer": {}, "texts": {"kind": "generate", "set": {"sets": [{"data": "builtin:npc", "n": 5}]}},
        "data": {"set": {"sources": "builtin:ko-law"}},  # one string: the schema's shorthand for a list
        "pretrain": {"set": {"train": {"max_tokens": 10_000}}},
        "sft": {}, "full": {"kind": "sft", "set": {"peft": {"method": "full"}}, "inputs": {"base": "pretrain"}},
        "eval": {"inputs": {"tuned": "full"}}})
    by = {p.name: p for p in pipe.plans}
    assert isinstance(by["data"].cfg, PrepareConfig) and isinstance(by["pretrain"].cfg, PretrainConfig)
    assert isinstance(by["sft"].cfg, SFTRunConfig)
    assert by["data"].ctx.config["sources"] == [{"path": "builtin:ko-law"},
                                                {"path": str(tmp_path / "p" / "texts"), "format": "jsonl"}]
    # sft with the schema's default method (lora) and merge (true) writes adapter/ and merged/; full writes hf/
    assert by["sft"].kind.output_map(by["sft"].cfg) == {"adapter": "adapter", "model": "merged"}
    assert by["eval"].ctx.config["tuned"] == str(tmp_path / "p" / "full" / "hf")
    # holdouts: the tuned model's SFT data (schema defaults: builtin:npc, n unset, seed 0) and the generated set
    assert by["eval"].ctx.config["npc"]["holdout_from"] == [{"data": "builtin:npc", "n": None, "seed": 0},
                                                          {"data": "builtin:npc", "n": 5, "seed": 0}]
    # pretrain ETA from max_tokens and the schema's batch_size x grad_accum x seq_len
    t, d = by["pretrain"].cfg.train, by["pretrain"].cfg.data
    steps = -(-10_000 // (t.batch_size * t.grad_accum * d.seq_len))
    assert by["pretrain"].estimate_s == pytest.approx(15.0 + steps * t.batch_size * t.grad_accum * d.seq_len / 5000.0)
    (tmp_path / "p" / "sft").mkdir(parents=True)
    (tmp_path / "p" / "sft" / "metrics.jsonl").write_text('{"split": "train", "step": 3}\n{"split": "train", "step": 4}\n')
    sft = by["sft"].cfg.data
    total = -(-1000 * (1 - sft.eval_fraction) // by["sft"].cfg.train.batch_size)  # builtin: 1000 examples
    assert by["sft"].kind.progress(by["sft"].ctx, by["sft"].cfg) == (4, int(total))


def test_a_stage_after_a_broken_one_reports_only_its_own_problems(tmp_path):
    with pytest.raises(ConfigError) as e:
        _pipe(tmp_path, {"tokenizer": {}, "data": {}, "pretrain": {"set": {"train": {"max_steps": 5}}},
                         "sft": {"set": {"peft": {"method": "lol"}}}, "eval": {"set": {"math": {"n": 0}}}})
    probs = e.value.problems
    assert any(p.startswith("stages.sft (inline config): peft.method:") for p in probs), probs
    assert any(p.startswith("stages.eval (inline config): math.n:") for p in probs), probs
    assert len(probs) == 2, probs  # eval's unknown tuned outputs are not a second problem


@pytest.mark.parametrize("tie", [True, False])
def test_count_params_of_a_saved_model_equals_the_model(tmp_path, tie):
    """The pretrain stage's `params` comes from the safetensors headers: a tied lm_head counts once."""
    from krllm.model.config import ModelConfig
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama
    from krllm.pipeline.stages.common import count_params

    model = Llama.build(ModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, tie_word_embeddings=tie))
    save_hf(model, tmp_path / "hf")
    assert count_params(tmp_path / "hf") == model.num_parameters()
    assert count_params(tmp_path / "nothing_here") is None
