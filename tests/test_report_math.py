"""The report card of a pipeline with a math track (sft -> dpo -> grpo after the NPC sft): the metrics table
with one column per model, the stage-by-stage accuracy table, GRPO reward / KL and DPO margin / accuracy
curves, and every model's answers to the first held-out problems — from fake stages' metrics.jsonl files
and a fake eval.json (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from krllm.pipeline.config import load_pipeline
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.runner import Pipeline
from krllm.tracking import MetricsLogger

BLUE, ORANGE, GREEN, PURPLE = (31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189)
MOD = "test_report_math"
N_STEPS = 20


def _model_dir(d: Path) -> None:
    (d / "merged").mkdir(parents=True)
    (d / "merged" / "config.json").write_text("{}")


def _sft_run(ctx: StageContext) -> dict:
    d = Path(ctx.stage_dir)
    with MetricsLogger(d, tensorboard=False) as log:
        for step in range(1, N_STEPS + 1):
            log.log(step, "train", loss=3.0 - step / N_STEPS, lr=1e-3)
    _model_dir(d)
    return {}


def _dpo_run(ctx: StageContext) -> dict:
    d = Path(ctx.stage_dir)
    with MetricsLogger(d, tensorboard=False) as log:
        for step in range(1, N_STEPS + 1):
            log.log(step, "train", loss=0.69 - 0.01 * step, **{"rewards/margins": 0.05 * step,
                                                                "rewards/accuracies": min(1.0, 0.5 + 0.03 * step)})
            if step % 5 == 0:
                log.log(step, "eval", loss=0.7 - 0.01 * step, **{"rewards/margins": 0.04 * step,
                                                                  "rewards/accuracies": 0.5 + 0.02 * step})
    _model_dir(d)
    return {}


def _grpo_run(ctx: StageContext) -> dict:
    d = Path(ctx.stage_dir)
    with MetricsLogger(d, tensorboard=False) as log:
        for step in range(1, N_STEPS + 1):
            right = 0.2 + 0.02 * step
            row = {"loss": 0.01, "reward": right + 0.1, "reward_std": 0.3, "rewards/math_correct/mean": right,
                   "rewards/math_correct/std": 0.4, "rewards/format/mean": 1.0}
            if ctx.config.get("kl"):
                row["kl"] = 0.001 * step
            log.log(step, "train", **row)
    _model_dir(d)
    return {}


def _ex(q: int, answer: str, correct: bool) -> dict:
    return {"question": f"사과 {q}개와 {q}개를 더하면?", "truth": str(2 * q), "answer": answer, "correct": correct}


def _math(right: int, n: int = 20) -> dict:
    ex = [_ex(q, f"풀이: {q} + {q}\n정답: {2 * q if q <= right else 0}", q <= right) for q in range(1, 5)]
    return {"accuracy": right / n, "correct": right, "n": n, "examples": ex}


ROLES = ("base", "tuned", "math_sft", "dpo", "grpo")
RIGHT = {"base": 0, "tuned": 1, "math_sft": 6, "dpo": 7, "grpo": 9}


def _eval_run(ctx: StageContext) -> dict:
    d = Path(ctx.stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    ev = {"models": {r: {"path": f"{r}/merged", "params": 10} for r in ROLES},
          "npc": {r: {"loss": 4.0 - i * 0.5, "ppl": 1.0} for i, r in enumerate(ROLES)},
          "math": {r: _math(RIGHT[r]) for r in ROLES},
          "samples": [{"prompt": "안녕?", **{r: f"{r}의 대답" for r in ROLES}}],
          "data": {"math": {"data": "builtin:math:ko", "n": 20, "dropped_in_training": 3}}}
    (d / "eval.json").write_text(json.dumps(ev, ensure_ascii=False))
    return {}


PRETRAIN = StageKind(name="pretrain", run=_sft_run, outputs={"model": "merged"})
SFT = StageKind(name="sft", run=_sft_run, needs={"base": ("pretrain",)}, outputs={"model": "merged"})
DPO = StageKind(name="dpo", run=_dpo_run, needs={"base": ("sft",)}, outputs={"model": "merged"})
GRPO = StageKind(name="grpo", run=_grpo_run, needs={"base": ("dpo", "sft")}, outputs={"model": "merged"})
EVAL = StageKind(name="eval", run=_eval_run, outputs={"eval": "eval.json"},
                 needs={"base": ("pretrain",), "tuned": ("sft",), "math_sft": ("sft",), "dpo": ("dpo",),
                        "grpo": ("grpo",)},
                 optional=("tuned", "math_sft", "dpo", "grpo"), explicit=("math_sft",))


def _run(tmp_path: Path, kl: bool = True) -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mt", "runs_dir": str(tmp_path / "runs"), "isolation": "inline",
        "stages": {"pretrain": {"kind": f"{MOD}:PRETRAIN"}, "sft": {"kind": f"{MOD}:SFT"},
                   "math_sft": {"kind": f"{MOD}:SFT"}, "math_dpo": {"kind": f"{MOD}:DPO"},
                   "math_grpo": {"kind": f"{MOD}:GRPO", "set": {"kl": kl}},
                   "eval": {"kind": f"{MOD}:EVAL", "inputs": {"tuned": "sft", "math_sft": "math_sft"}},
                   "report": {}}}, sort_keys=False), encoding="utf-8")
    pipe = Pipeline(load_pipeline(path), config_path=path)
    pipe.run()
    return pipe.run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("mt"))


def test_metrics_table_has_a_column_per_model(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert "| metric | pretrain | sft | math_sft | math_dpo | math_grpo |\n|---|---|---|---|---|---|\n" in md
    assert ("| math exact match (held-out) | 0.0% (0/20) | 5.0% (1/20) | 30.0% (6/20) | 35.0% (7/20) "
            "| 45.0% (9/20) |") in md
    assert "| NPC chat loss (held-out, assistant tokens) | 4 | 3.5 | 3 | 2.5 | 2 |" in md


def test_math_track_table_in_pipeline_order_with_deltas(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    table = md.split("## Math track", 1)[1].split("\n\n")[2]
    assert table.splitlines() == [
        "| stage | kind | exact match | change vs previous |", "|---|---|---|---|",
        "| pretrain | pretrain | 0.0% (0/20) | — |",
        "| sft | sft | 5.0% (1/20) | +5.0 pts |",
        "| math_sft | sft | 30.0% (6/20) | +25.0 pts |",
        "| math_dpo | dpo | 35.0% (7/20) | +5.0 pts |",
        "| math_grpo | grpo | 45.0% (9/20) | +10.0 pts |"]
    assert "From pretrain to math_grpo: +45.0 pts." in md
    assert md.index("## Math track") < md.index("## Curves")


def test_math_answers_of_every_model(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    part = md.split("## Math answers (greedy, first 3 held-out problems)", 1)[1].split("\n## ", 1)[0]
    assert part.count("**Problem ") == 3 and "**Problem 1** (truth **2**)" in part
    assert "```text\n사과 2개와 2개를 더하면?\n```" in part
    assert "- *pretrain* ✗ wrong: `풀이: 1 + 1 ⏎ 정답: 0`" in part
    assert "- *math_grpo* ✓ right: `풀이: 3 + 3 ⏎ 정답: 6`" in part
    assert part.count("✓ right") == 1 + 3 + 3 + 3 and part.count("✗ wrong") == 3 + 2
    assert "*math_dpo*:\n\n```text\ndpo의 대답\n```" in md  # the NPC samples have every model too


def _colors(png: Path) -> set[tuple[int, int, int]]:
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (770, 440)
        return {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}


def _near(pixels, color, tol=12) -> bool:
    return any(all(abs(a - b) <= tol for a, b in zip(p, color)) for p in pixels)


def test_grpo_and_dpo_curves_are_drawn_and_embedded(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    plots = run_dir / "plots"
    want = {"math_grpo_reward.png", "math_grpo_kl.png", "math_dpo_margin.png", "math_dpo_reward_accuracy.png"}
    assert want <= {p.name for p in plots.iterdir()}
    assert not any(p.name.startswith(("math_sft_", "sft_", "pretrain_")) and "reward" in p.name for p in plots.iterdir())
    for name in want:
        assert f"](plots/{name})" in md and f'<img src="plots/{name}"' in html
    reward = _colors(plots / "math_grpo_reward.png")
    assert _near(reward, BLUE) and _near(reward, GREEN) and _near(reward, PURPLE)  # total + 2 reward functions
    assert not _near(reward, ORANGE, tol=4)  # no eval split logged
    for name in ("math_dpo_margin.png", "math_dpo_reward_accuracy.png"):
        px = _colors(plots / name)
        assert _near(px, BLUE) and _near(px, ORANGE)  # train and eval
    assert "![math_grpo KL to the reference model](plots/math_grpo_kl.png)" in md


def test_no_kl_plot_without_kl_and_no_math_track_for_two_models(tmp_path):
    run = _run(tmp_path, kl=False)
    assert not (run / "plots" / "math_grpo_kl.png").exists()
    assert (run / "plots" / "math_grpo_reward.png").exists()
    # the same run with an eval of two models: the metrics table keeps its change column, no math track
    ev_path = run / "eval" / "eval.json"
    ev = json.loads(ev_path.read_text(encoding="utf-8"))
    for sec in ("models", "npc", "math"):
        ev[sec] = {r: ev[sec][r] for r in ("base", "tuned")}
    ev_path.write_text(json.dumps(ev, ensure_ascii=False), encoding="utf-8")
    from krllm.pipeline.report import build_report

    md = build_report(run).read_text(encoding="utf-8")
    assert "## Math track" not in md
    assert "| math exact match (held-out) | 0.0% (0/20) | 5.0% (1/20) | +5.0 pts (better) |" in md
    assert "| metric | base (pretrained) | fine-tuned | change |" in md
