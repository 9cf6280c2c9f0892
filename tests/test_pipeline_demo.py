"""End to end: the shortened demo pipeline (configs/pipelines/demo_ko_ci.yaml) through the real CLI,
every real stage (tokenizer, data prepare, pretrain, LoRA sft, eval, report), then the report card's
content, then a second run that skips every finished stage by lineage."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from krllm.pipeline.state import read_all_states
from krllm.tracking import read_metrics

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["tokenizer", "texts", "data", "pretrain", "math_sft", "math_dpo", "math_grpo", "sft", "eval", "report"]

pytestmark = pytest.mark.slow


def krllm(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "krllm", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    proc = krllm("pipeline", "run", "configs/pipelines/demo_ko_ci.yaml", "--set", f"runs_dir={runs}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return runs / "demo_ko_ci", proc.stdout


def test_every_stage_ran_and_was_measured(demo):
    run_dir, out = demo
    states = read_all_states(run_dir)
    assert sorted(states) == sorted(STAGES)
    for name in STAGES:
        st = states[name]
        assert st["status"] == "done", (name, st.get("error"))
        assert st["wall_s"] > 0 and st["peak_rss_mb"] > 30, (name, st)
    assert states["sft"]["peak_rss_mb"] > states["tokenizer"]["peak_rss_mb"]  # torch + TRL vs tokenizers
    assert states["pretrain"]["summary"]["params"] > 0 and states["sft"]["summary"]["trainable_params"] > 0
    assert states["data"]["summary"]["tokens"] > 10_000
    assert f"report card: {run_dir / 'report.md'}" in out
    assert f"krllm chat {run_dir / 'sft' / 'merged'}" in out
    assert (run_dir / "sft" / "merged" / "model.safetensors").exists()
    assert (run_dir / "sft" / "adapter" / "adapter_config.json").exists()


def test_metrics_are_present_and_sensible(demo):
    run_dir, _ = demo
    ev = json.loads((run_dir / "eval" / "eval.json").read_text(encoding="utf-8"))
    assert set(ev["models"]) == {"base", "tuned", "math_sft", "dpo", "grpo"}
    assert ev["models"]["grpo"]["path"] == str(run_dir / "math_grpo" / "merged")
    assert all(0 <= ev["math"][role]["accuracy"] <= 1 for role in ev["models"])
    assert ev["models"]["base"]["path"] == str(run_dir / "pretrain" / "hf")
    vocab_log = math.log(1024)
    for role in ("base", "tuned"):
        ppl = ev["perplexity"][role]
        assert ppl["tokens"] > 100 and 0 < ppl["loss"] < vocab_log + 1 and ppl["ppl"] == pytest.approx(
            math.exp(ppl["loss"]), rel=1e-9)
        assert 0 <= ev["math"][role]["accuracy"] <= 1 and ev["math"][role]["n"] == 6
    # the point of fine-tuning: held-out NPC replies are more likely under the tuned model
    assert ev["npc"]["tuned"]["loss"] < ev["npc"]["base"]["loss"] - 0.1
    assert ev["npc"]["tuned"]["tokens"] == ev["npc"]["base"]["tokens"] > 100
    assert len(ev["samples"]) == 5 and all(set(s) == {"prompt", *ev["models"]} for s in ev["samples"])
    # pretraining validation loss fell
    val = [r["loss"] for r in read_metrics(run_dir / "pretrain") if r.get("split") == "val"]
    assert len(val) >= 3 and val[-1] < val[0] - 0.5


def test_report_card_content(demo):
    run_dir, _ = demo
    md = (run_dir / "report.md").read_text(encoding="utf-8")
    ev = json.loads((run_dir / "eval" / "eval.json").read_text(encoding="utf-8"))
    for stage in STAGES[:-1]:
        kind = {"texts": "generate", "math_sft": "sft", "math_dpo": "dpo", "math_grpo": "grpo"}.get(stage, stage)
        assert f"| {stage} | {kind} | done |" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| NPC chat loss"))
    assert f"{ev['npc']['base']['loss']:.4f}" in row and row.count("|") == len(ev["models"]) + 2  # a column a model
    assert "| validation loss (pretraining text, nats/token) |" in md
    assert "| math exact match (held-out) |" in md
    assert "krllm pipeline run configs/pipelines/demo_ko_ci.yaml" in md
    assert f"krllm serve {run_dir / 'sft' / 'merged'}" in md
    assert "## Math track" in md and "| math_grpo | grpo |" in md
    for png in ("pretrain_loss.png", "pretrain_lr.png", "sft_loss.png", "sft_lr.png", "math_grpo_reward.png",
                "math_dpo_margin.png"):
        path = run_dir / "plots" / png
        assert f"](plots/{png})" in md
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size == (770, 440)
    assert (run_dir / "report.html").read_text(encoding="utf-8").count("<img ") == md.count("](plots/")


def test_second_run_skips_finished_stages(demo):
    run_dir, _ = demo
    proc = krllm("pipeline", "run", "configs/pipelines/demo_ko_ci.yaml", "--set", f"runs_dir={run_dir.parent}",
                 timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = [json.loads(ln) for ln in (run_dir / "_pipeline" / "invocations.jsonl").read_text().splitlines()][-1]
    actions = {k: v["action"] for k, v in last["stages"].items()}
    assert actions == {**{s: "skip" for s in STAGES[:-1]}, "report": "run"}
