"""Eval of N models (base, tuned and a math track's models) on tiny random models, the hold-out of math
problems across record kinds, and the eval stage's wiring of the optional math-track roles."""

from __future__ import annotations

import json
import sys
import types

import pytest
import yaml
from pydantic import Field

from krllm.config import ConfigError, StrictModel
from krllm.eval.math import is_correct
from krllm.infer.testing import tiny_model_dir
from krllm.pipeline.kinds import StageKind


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {role: str(tiny_model_dir(root / role, seed=i)) for i, role in enumerate(("base", "tuned", "sft2", "rl"))}


def test_every_model_is_evaluated_in_order_with_its_math_examples(four, tmp_path):
    from krllm.cli import main

    out_dir = tmp_path / "ev"
    with pytest.raises(SystemExit) as e:
        main(["eval", "--base", four["base"], "--tuned", four["tuned"], "--model", f"math_sft={four['sft2']}",
              "--model", f"grpo={four['rl']}", "--out", str(out_dir), "--set", "npc.n=3", "--set", "math.n=5",
              "--set", "math.max_new_tokens=6", "--set", "samples.max_new_tokens=4",
              "--set", 'samples.prompts=["안녕?", "어디 가?"]'])
    assert e.value.code == 0
    ev = json.loads((out_dir / "eval.json").read_text(encoding="utf-8"))
    roles = ["base", "tuned", "math_sft", "grpo"]
    assert list(ev["models"]) == roles and ev["models"]["grpo"]["path"] == four["rl"]
    for sec in ("npc", "math"):
        assert list(ev[sec]) == roles
    assert len({ev["npc"][r]["loss"] for r in roles}) == 4  # four different models, four different losses
    questions = [x["question"] for x in ev["math"]["base"]["examples"]]
    assert len(questions) == 5 == ev["math"]["base"]["n"]
    for r in roles:
        m = ev["math"][r]
        assert [x["question"] for x in m["examples"]] == questions  # every problem, same order for every model
        assert [x["correct"] for x in m["examples"]] == [is_correct(x["answer"], x["truth"]) for x in m["examples"]]
        assert m["correct"] == sum(x["correct"] for x in m["examples"])
    assert [sorted(s) for s in ev["samples"]] == [sorted(["prompt", *roles])] * 2
    assert (out_dir / "samples.md").read_text(encoding="utf-8").count("**grpo**:") == 2


def test_one_batched_decode_pass_gives_the_answers_of_one_at_a_time(four):
    from krllm.data.sets.records import load_examples
    from krllm.eval.generate import greedy_answers
    from krllm.model.load import load

    lm = load(four["tuned"], dtype="fp32")
    qs = [r["prompt"][-1]["content"] for r in load_examples("builtin:math:ko", "grpo", n=6, seed=9002)]
    wide = greedy_answers(lm, qs, max_new_tokens=8, batch_size=64)
    one = greedy_answers(lm, qs, max_new_tokens=8, batch_size=1)
    assert wide == one and len({w["answer"] for w in wide}) > 1


def test_model_roles_are_checked():
    from krllm.eval.run import EvalConfig

    cfg = EvalConfig(base="b", models={"math_sft": "s", "grpo": "g"}, tuned="t")
    assert list(cfg.roles().items()) == [("base", "b"), ("tuned", "t"), ("math_sft", "s"), ("grpo", "g")]
    for bad in ({"tuned": "x"}, {"prompt": "x"}, {"Math SFT": "x"}, {"dpo": " "}):
        with pytest.raises(ConfigError, match="models"):
            from krllm.config import validate

            validate({"models": bad}, EvalConfig, "eval.yaml")


def test_math_hold_out_matches_problems_whatever_the_record_kind(tmp_path):
    from krllm.data.sets.generated import math_problems
    from krllm.data.sets.records import load_examples
    from krllm.eval.run import TrainingSet, _held_out

    recs = load_examples("builtin:math:ko", "grpo", n=60, seed=9002)
    # SFT on generated problems: read as chat records ({"messages": [user, assistant]})
    sft = TrainingSet(data="builtin:math:ko", n=400, seed=0, kind="sft")
    seen = {p["question"] for p in math_problems(400, seed=0, lang="ko")}
    kept, dropped = _held_out(recs, "grpo", [sft], None)
    assert dropped == sum(r["prompt"][-1]["content"] in seen for r in recs) > 0
    assert all(r["prompt"][-1]["content"] not in seen for r in kept)
    # DPO pairs on three of the eval problems (a JSONL file, conversational prompt form)
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": [{"role": "user", "content": r["prompt"][-1]["content"]}], "chosen": "정답: 1",
             "rejected": "모르겠어요"} for r in recs[:3]]
    pairs.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows), encoding="utf-8")
    kept, dropped = _held_out(recs, "grpo", [TrainingSet(data=str(pairs), kind="dpo")], None)
    assert dropped == 3 and kept == recs[3:]
    # the kind is left out of the config mapping when unset (configs of existing pipelines do not change)
    assert TrainingSet(data="x", n=3).as_config() == {"data": "x", "n": 3, "seed": 0}
    assert sft.as_config() == {"data": "builtin:math:ko", "n": 400, "seed": 0, "kind": "sft"}


# ---- the eval stage's wiring, with the real sft kind and stand-in dpo / grpo kinds ------------------------------

class _Data(StrictModel):
    train: str = "builtin:math:ko"
    n: int | None = None
    seed: int = 0


class _AlignConfig(StrictModel):
    data: _Data = Field(default_factory=_Data)


@pytest.fixture
def align_kinds(monkeypatch):
    """dpo and grpo as registered kinds of the same names (their real modules live on other branches)."""
    from krllm.pipeline.stages import BUILTIN_KINDS

    for name in ("dpo", "grpo"):
        mod = types.ModuleType(f"fake_{name}_kind")
        mod.KIND = StageKind(name=name, run=lambda ctx: {}, needs={"base": ("sft", "dpo", "pretrain")},
                             outputs={"model": "merged"}, schema=_AlignConfig)
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
        monkeypatch.setitem(BUILTIN_KINDS, name, mod.__name__)


def _plan(tmp_path, stages: dict):
    from krllm.pipeline.config import load_pipeline
    from krllm.pipeline.runner import Pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "runs_dir": str(tmp_path), "stages": stages}, sort_keys=False),
                    encoding="utf-8")
    return {p.name: p for p in Pipeline(load_pipeline(path), config_path=path).plans}


BASE = {"tokenizer": {}, "data": {"set": {"sources": "builtin:ko-law"}}, "pretrain": {"set": {"train": {"max_steps": 5}}},
        "sft": {"set": {"data": {"train": "builtin:npc", "n": 200}}}}


def test_math_track_models_are_wired_and_their_problems_held_out(tmp_path, align_kinds):
    run = tmp_path / "p"
    by = _plan(tmp_path, {**BASE,
                          "math_sft": {"kind": "sft", "set": {"data": {"train": "builtin:math:ko", "n": 300, "seed": 0}}},
                          "math_dpo": {"kind": "dpo", "set": {"data": {"n": 200, "seed": 3}}},
                          "math_grpo": {"kind": "grpo", "set": {"data": {"n": 100, "seed": 1}}},
                          "eval": {"inputs": {"tuned": "sft", "math_sft": "math_sft"}}})
    ev = by["eval"].ctx
    assert ev.upstream == {"base": "pretrain", "tuned": "sft", "math_sft": "math_sft", "dpo": "math_dpo",
                           "grpo": "math_grpo", "data": "data"}
    assert ev.config["tuned"] == str(run / "sft" / "merged")
    assert list(ev.config["models"].items()) == [("math_sft", str(run / "math_sft" / "merged")),
                                                 ("dpo", str(run / "math_dpo" / "merged")),
                                                 ("grpo", str(run / "math_grpo" / "merged"))]
    assert ev.config["npc"]["holdout_from"] == [{"data": "builtin:npc", "n": 200, "seed": 0}]
    assert ev.config["math"]["holdout_from"] == [
        {"data": "builtin:math:ko", "n": 300, "seed": 0, "kind": "sft"},
        {"data": "builtin:math:ko", "n": 200, "seed": 3, "kind": "dpo"},
        {"data": "builtin:math:ko", "n": 100, "seed": 1}]  # grpo prompts: the math set's own record kind
    assert by["eval"].cfg.roles() == {"base": str(run / "pretrain" / "hf"), "tuned": str(run / "sft" / "merged"),
                                      **ev.config["models"]}


def test_math_sft_is_wired_only_by_name_and_absent_roles_stay_unwired(tmp_path, align_kinds):
    # two sft stages, no inputs named: tuned takes the latest; math_sft (explicit-only), dpo, grpo stay unwired
    by = _plan(tmp_path, {**BASE, "math_sft": {"kind": "sft", "set": {"data": {"train": "builtin:math:ko"}}},
                          "eval": {}})
    ev = by["eval"].ctx
    assert ev.upstream == {"base": "pretrain", "tuned": "math_sft", "data": "data"}
    assert "models" not in ev.config
    # the tuned model trained on math: its problems are held out of the math set, read as SFT records
    assert ev.config["math"]["holdout_from"] == [{"data": "builtin:math:ko", "n": None, "seed": 0, "kind": "sft"}]
    with pytest.raises(ConfigError, match="math_sft: 'pretrain' is a pretrain stage"):
        _plan(tmp_path, {**BASE, "eval": {"inputs": {"math_sft": "pretrain"}}})


def test_eval_dtype_int8_measures_the_quantized_model(four, tmp_path):
    """`krllm eval --dtype int8`: the model is quantized at load (a loss close to, but not the same as, fp32's)."""
    from krllm.cli import main

    losses = {}
    for dtype in ("fp32", "int8"):
        with pytest.raises(SystemExit) as e:
            main(["eval", "--base", four["base"], "--out", str(tmp_path / dtype), "--dtype", dtype,
                  "--set", "npc.n=3", "--set", "math.enabled=false", "--set", "samples.enabled=false"])
        assert e.value.code == 0
        ev = json.loads((tmp_path / dtype / "eval.json").read_text(encoding="utf-8"))
        assert ev["models"]["base"]["dtype"] == dtype
        losses[dtype] = ev["npc"]["base"]["loss"]
    assert losses["int8"] != losses["fp32"] and abs(losses["int8"] - losses["fp32"]) < 0.05 * losses["fp32"]
