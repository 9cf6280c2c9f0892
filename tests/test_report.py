"""The report card from a pipeline run directory: what ran, metrics, curves (valid PNGs with the
lines drawn), samples, commands — built by the real `report` stage and by `krllm report`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from krllm.pipeline.config import load_pipeline
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.runner import Pipeline
from krllm.pipeline.state import read_state
from krllm.tracking import MetricsLogger

TESTS = Path(__file__).parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BLUE, ORANGE, GREEN = (31, 119, 180), (255, 127, 14), (44, 160, 44)  # matplotlib tab: colors


def _train_run(ctx: StageContext) -> dict:
    """Writes metrics.jsonl like a trainer (falling loss, warmup + decay lr) and a model dir."""
    d = Path(ctx.stage_dir)
    n = int(ctx.config["steps"])
    with MetricsLogger(d, tensorboard=False) as log:
        for step in range(1, n + 1):
            lr = 1e-3 * min(1.0, step / 5) * (1 - step / (n + 1))
            log.log(step, "train", loss=5.0 - 3.0 * step / n, lr=lr)
            if step % 10 == 0:
                log.log(step, ctx.config.get("val_split", "val"), loss=5.2 - 3.0 * step / n)
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text("{}")
    return {"tokens": 1000 * n, "tokens_per_s": 2500.0, "params": 4_950_272}


def _eval_run(ctx: StageContext) -> dict:
    d = Path(ctx.stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    ev = {"models": {"base": {"path": "b", "params": 10}, "tuned": {"path": "t", "params": 10}},
          "perplexity": {"base": {"loss": 3.0, "ppl": 20.09}, "tuned": {"loss": 3.25, "ppl": 25.79}},
          "npc": {"base": {"loss": 4.0, "ppl": 54.6}, "tuned": {"loss": 1.5, "ppl": 4.48}},
          "math": {"base": {"accuracy": 0.0, "correct": 0, "n": 20, "examples": []},
                   "tuned": {"accuracy": 0.25, "correct": 5, "n": 20,
                             "examples": [{"question": "2+2?", "truth": "4", "answer": "정답: 4", "correct": True}]}},
          "samples": [{"prompt": "안녕하세요?", "base": "국회는", "tuned": "어서 오세요, 여행자님!"}],
          "data": {"npc": {"data": "builtin:npc", "n": 16, "dropped_in_training": 2}},
          "tokens_scored": 5000, "tokens_per_s": 1000.0, "wall_s": 5.0}
    (d / "eval.json").write_text(json.dumps(ev, ensure_ascii=False))
    return {"tokens": 5000, "tokens_per_s": 1000.0}


TRAIN = StageKind(name="pretrain", run=_train_run, outputs={"model": "hf"})
TUNE = StageKind(name="sft", run=_train_run, needs={"base": ("pretrain",)}, outputs={"model": "hf"})
EVAL = StageKind(name="eval", run=_eval_run, outputs={"eval": "eval.json"})
MOD = "test_report"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), old or ""])
    try:
        tmp = tmp_path_factory.mktemp("rep")
        path = tmp / "pipe.yaml"
        path.write_text(yaml.safe_dump({
            "name": "demo", "runs_dir": str(tmp / "runs"), "description": "A test pipeline.",
            "stages": {"pretrain": {"kind": f"{MOD}:TRAIN", "set": {"steps": 60}},
                       "sft": {"kind": f"{MOD}:TUNE", "set": {"steps": 30, "val_split": "eval"}},
                       "eval": {"kind": f"{MOD}:EVAL"},
                       "report": {}}}, sort_keys=False), encoding="utf-8")
        pipe = Pipeline(load_pipeline(path), config_path=path, command=f"krllm pipeline run {path}")
        pipe.run()
        yield pipe.run_dir
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _rows(md: str, first_cell: str) -> list[str]:
    return [ln for ln in md.splitlines() if ln.startswith(f"| {first_cell} |")]


def test_report_tables_hold_the_run(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert md.startswith("# Report card: demo\n\nA test pipeline.")
    for stage in ("pretrain", "sft", "eval"):
        st = read_state(run_dir, stage)
        row = _rows(md, stage)[0].split(" | ")
        assert row[2] == "done"
        assert row[5] == f"{st['peak_rss_mb']:,.0f} MB"
        assert 0 < st["cpu_s"] < 60
    assert "| pretrain | pretrain | done |" in md and "| 60,000 | 2,500 |" in _rows(md, "pretrain")[0]
    assert not _rows(md, "report")  # the stage writing the report is not a row of it
    assert "| pretrain | params | 4,950,272 |" in md
    assert "| NPC chat loss (held-out, assistant tokens) | 4 | 1.5 | -2.5 (better) |" in md
    assert "| validation loss (pretraining text, nats/token) | 3 | 3.25 | +0.25 (worse) |" in md
    assert "| math exact match (held-out) | 0.0% (0/20) | 25.0% (5/20) | +25.0 pts (better) |" in md
    assert "16 held-out examples from `builtin:npc` (2 dropped for appearing in training)" in md
    # first/last logged losses from metrics.jsonl ("eval" split of Trainer stages counts as validation)
    assert "| sft | 4.9 | 2 | 4.2 | 2.2 | 33 |" in md
    assert "어서 오세요, 여행자님!" in md
    assert "**Problem 1** (truth **4**)\n\n```text\n2+2?\n```\n\n- *fine-tuned* ✓ right: `정답: 4`\n" in md
    assert "## Math track" not in md  # two models: the metrics table's change column says it all


def test_report_commands(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    assert f"krllm pipeline run {run_dir.parent.parent / 'pipe.yaml'}" in md
    assert f"krllm chat {run_dir / 'sft' / 'hf'}" in md  # the last stage with a model
    assert f"krllm serve {run_dir / 'sft' / 'hf'} --port 8000" in md
    assert f"krllm report {run_dir}" in md


def _pixels(png: Path) -> set[tuple[int, int, int]]:
    with Image.open(png) as im:
        return {color for _, color in im.convert("RGB").getcolors(maxcolors=1 << 20)}


def _near(pixels, color, tol=12) -> bool:
    return any(all(abs(a - b) <= tol for a, b in zip(p, color)) for p in pixels)


def test_plots_are_valid_pngs_with_the_curves_drawn(run_dir):
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    for stage in ("pretrain", "sft"):
        for kind in ("loss", "lr"):
            png = run_dir / "plots" / f"{stage}_{kind}.png"
            assert f"](plots/{png.name})" in md
            assert png.read_bytes()[:8] == PNG_SIGNATURE
            with Image.open(png) as im:
                assert im.format == "PNG" and im.size == (770, 440)  # 7 x 4 inches at 110 dpi
            px = _pixels(png)
            if kind == "loss":
                assert _near(px, BLUE) and _near(px, ORANGE)  # train and val lines
            else:
                assert _near(px, GREEN) and not _near(px, ORANGE, tol=4)
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == [
        "pretrain_loss.png", "pretrain_lr.png", "sft_loss.png", "sft_lr.png"]


def test_html_report(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and '<meta charset="utf-8">' in html
    assert '<img src="plots/pretrain_loss.png" alt="pretrain loss"' in html
    assert "<table>" in html and "<td>4,950,272</td>" in html


def test_krllm_report_rebuilds_the_same_card(run_dir, capsys):
    from krllm.cli import main

    before = (run_dir / "report.md").read_text(encoding="utf-8")
    (run_dir / "report.md").unlink()
    with pytest.raises(SystemExit) as e:
        main(["report", str(run_dir)])
    assert e.value.code == 0
    after = (run_dir / "report.md").read_text(encoding="utf-8")
    strip = lambda t: [ln for ln in t.splitlines() if not ln.startswith("Generated ")]  # noqa: E731
    # the rebuilt card also lists the report stage's own finished run; otherwise identical
    assert [ln for ln in strip(after) if not ln.startswith("| report |")] == strip(before)
    assert f"chat with it:  krllm chat {run_dir / 'sft' / 'hf'}" in capsys.readouterr().out


def test_report_of_a_directory_without_a_pipeline_is_an_error(tmp_path):
    from krllm.errors import KrllmError
    from krllm.pipeline.report import build_report

    with pytest.raises(KrllmError, match="no pipeline state found"):
        build_report(tmp_path)


def test_plot_functions_skip_missing_series(tmp_path):
    from krllm.pipeline.plots import plot_loss, plot_lr

    assert plot_loss([{"step": 1, "split": "train", "lr": 1e-3}], tmp_path / "a.png", "t") is None
    assert plot_lr([{"step": 1, "split": "train", "loss": 2.0}], tmp_path / "b.png", "t") is None
    assert not list(tmp_path.iterdir())
