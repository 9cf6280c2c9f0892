"""The pipeline runner on small fake stages: skip by lineage, re-run on change, --from, resume after a
crash, peak RSS per stage, errors that name the stage and its log.

The fake kinds below are ordinary StageKinds defined in this module and named in the pipeline YAML
as `test_pipeline_runner:KIND`; the child processes import this module (PYTHONPATH = tests/).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from krllm.config import ConfigError
from krllm.errors import KrllmError
from krllm.pipeline.config import load_pipeline
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.runner import Pipeline
from krllm.pipeline.state import read_state

TESTS = Path(__file__).parent


def _log_call(ctx: StageContext, what: str) -> None:
    with open(Path(ctx.run_dir) / "calls.log", "a", encoding="utf-8") as f:
        f.write(f"{ctx.stage}:{what}\n")


def _text_run(ctx: StageContext) -> dict:
    _log_call(ctx, "run")
    Path(ctx.stage_dir).mkdir(parents=True, exist_ok=True)
    text = ctx.config["text"]
    if "from_file" in ctx.config:
        text += Path(ctx.config["from_file"]).read_text(encoding="utf-8")
    (Path(ctx.stage_dir) / "out.txt").write_text(text, encoding="utf-8")
    if ctx.config.get("alloc_mb"):
        block = bytearray(int(ctx.config["alloc_mb"]) << 20)
        for i in range(0, len(block), 4096):  # touch every page so it is resident
            block[i] = 1
    return {"tokens": len(text), "note": "fake"}


def _upper_run(ctx: StageContext) -> dict:
    _log_call(ctx, "run")
    src = ctx.input("src", "text").read_text(encoding="utf-8")
    Path(ctx.stage_dir).mkdir(parents=True, exist_ok=True)
    (Path(ctx.stage_dir) / "out.txt").write_text(src.upper() + ctx.config.get("suffix", ""), encoding="utf-8")
    return {}


def _steps_run(ctx: StageContext) -> dict:
    """A resumable stage: one checkpoint file per step; dies abruptly at `crash_at` on a fresh attempt."""
    _log_call(ctx, "resume" if ctx.resume else "run")
    d = Path(ctx.stage_dir)
    d.mkdir(parents=True, exist_ok=True)
    ck = d / "ckpt"
    start = int(ck.read_text()) if ctx.resume and ck.exists() else 0
    done = []
    for step in range(start, int(ctx.config["n"])):
        if step == ctx.config.get("crash_at") and not ctx.resume:
            os._exit(3)  # like a kill -9 / OOM: no cleanup, no result file
        time.sleep(float(ctx.config.get("sleep", 0)))
        done.append(step)
        ck.write_text(str(step + 1))
    (d / "out.txt").write_text(",".join(map(str, done)), encoding="utf-8")
    return {"steps": len(done)}


def _fail_run(ctx: StageContext) -> dict:
    raise KrllmError(f"{ctx.config.get('file', 'x.jsonl')}:7: bad record (fake)")


TEXT = StageKind(name="text", run=_text_run, outputs={"text": "out.txt"}, estimate_s=1.0)
UPPER = StageKind(name="upper", run=_upper_run, needs={"src": ("text",)}, outputs={"text": "out.txt"})
STEPS = StageKind(name="steps", run=_steps_run, needs={"src": ("text",)}, outputs={"text": "out.txt"},
                  resumable=True, progress=lambda ctx, cfg: None)
FAIL = StageKind(name="fail", run=_fail_run)
MOD = "test_pipeline_runner"


@pytest.fixture(autouse=True)
def _child_path(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))


def write_pipeline(tmp_path: Path, stages: dict, name: str = "p", isolation: str = "process") -> Path:
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"name": name, "runs_dir": str(tmp_path / "runs"), "isolation": isolation,
                                    "stages": stages}, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def run(path: Path, overrides=(), **kw) -> Pipeline:
    pipe = Pipeline(load_pipeline(path, overrides), config_path=path)
    pipe.run(**kw)
    return pipe


def calls(tmp_path: Path, name: str = "p") -> list[str]:
    f = tmp_path / "runs" / name / "calls.log"
    return f.read_text().split() if f.exists() else []


def two_stages(tmp_path: Path, text: str = "hello", **extra) -> Path:
    return write_pipeline(tmp_path, {"src": {"kind": f"{MOD}:TEXT", "set": {"text": text, **extra}},
                                     "up": {"kind": f"{MOD}:UPPER"}})


def test_runs_then_skips_when_nothing_changed(tmp_path):
    path = two_stages(tmp_path)
    pipe = run(path)
    out = tmp_path / "runs/p/up/out.txt"
    assert out.read_text() == "HELLO"
    assert calls(tmp_path) == ["src:run", "up:run"]
    st = read_state(pipe.run_dir, "up")
    assert st["status"] == "done" and st["upstream"] == {"src": "src"}
    assert st["wall_s"] > 0 and st["peak_rss_mb"] > 10  # a Python process is at least ~10 MB
    assert 0 < st["cpu_s"] < st["wall_s"] * 2 + 1  # child's own user + sys time (2 cores at most)
    assert st["summary"] == {}
    assert read_state(pipe.run_dir, "src")["summary"] == {"tokens": 5, "note": "fake"}
    pipe2 = run(path)
    assert [p.action for p in pipe2.plans] == ["skip", "skip"]
    assert calls(tmp_path) == ["src:run", "up:run"]  # nothing ran again
    inv = (pipe.run_dir / "_pipeline/invocations.jsonl").read_text().splitlines()
    assert len(inv) == 4 and json.loads(inv[2])["command"] == f"krllm pipeline run {path}"
    assert json.loads(inv[3])["stages"]["up"]["action"] == "skip"


def test_change_reruns_exactly_what_it_affects(tmp_path):
    path = two_stages(tmp_path)
    run(path)
    # downstream-only change: upstream skipped
    pipe = run(path, ["up.suffix=-x"])
    assert [p.action for p in pipe.plans] == ["skip", "run"]
    assert pipe.plans[1].reason == "config changed: suffix"
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "HELLO-x"
    # upstream change that alters its output: both re-run, downstream because its input changed
    pipe = run(path, ["up.suffix=-x", "src.text=bye"])
    assert [p.action for p in pipe.plans] == ["run", "run"]
    assert pipe.plans[1].reason == "input changed: src"
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "BYE-x"
    # upstream config change with identical output: downstream is skipped (lineage is by content)
    pipe = run(path, ["up.suffix=-x", "src.text=bye", "src.unused=1"])
    assert [p.action for p in pipe.plans] == ["run", "skip"]
    assert calls(tmp_path) == ["src:run", "up:run", "up:run", "src:run", "up:run", "src:run"]


def test_from_forces_that_stage_and_the_rest(tmp_path):
    path = two_stages(tmp_path)
    run(path)
    pipe = run(path, from_stage="up")
    assert [(p.action, p.reason) for p in pipe.plans] == [("skip", "inputs and config unchanged"),
                                                         ("run", "forced by --from up")]
    pipe = run(path, from_stage="src")
    assert [p.action for p in pipe.plans] == ["run", "run"]
    with pytest.raises(KrllmError, match="--from nope: no such stage; stages: src, up"):
        run(path, from_stage="nope")


def test_until_stops_early_and_dry_run_runs_nothing(tmp_path):
    path = two_stages(tmp_path)
    plans = Pipeline(load_pipeline(path), config_path=path).run(dry_run=True)
    assert [(p.action, p.reason) for p in plans] == [("run", "no previous run"),
                                                    ("run", "after its upstream stages run")]
    assert calls(tmp_path) == []
    run(path, until="src")
    assert calls(tmp_path) == ["src:run"]
    assert not (tmp_path / "runs/p/up").exists()


def test_modified_output_is_detected_and_rebuilt(tmp_path):
    path = two_stages(tmp_path)
    run(path)
    out = tmp_path / "runs/p/src/out.txt"
    out.write_text("tampered")
    pipe = run(path)
    assert pipe.plans[0].action == "run" and pipe.plans[0].reason == "output text missing or modified"
    assert out.read_text() == "hello"
    assert pipe.plans[1].action == "skip"  # rebuilt output has the recorded content again


def test_outside_file_named_in_a_config_is_part_of_the_lineage(tmp_path):
    extra = tmp_path / "extra.txt"
    extra.write_text(" world")
    path = two_stages(tmp_path, from_file=str(extra))
    run(path)
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "HELLO WORLD"
    assert [p.action for p in run(path).plans] == ["skip", "skip"]
    extra.write_text(" there")
    pipe = run(path)
    assert pipe.plans[0].action == "run" and pipe.plans[0].reason == f"file changed: {extra}"
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "HELLO THERE"


def test_crashed_resumable_stage_resumes_from_its_checkpoint(tmp_path):
    path = write_pipeline(tmp_path, {"src": {"kind": f"{MOD}:TEXT", "set": {"text": "x"}},
                                     "train": {"kind": f"{MOD}:STEPS", "set": {"n": 6, "crash_at": 3}}})
    with pytest.raises(KrllmError) as e:
        run(path)
    msg = str(e.value)
    assert "stage train failed: exited with code 3 without a result" in msg and "train.log" in msg
    st = read_state(tmp_path / "runs/p", "train")
    assert st["status"] == "failed" and len(st["attempts"]) == 1
    assert (tmp_path / "runs/p/train/ckpt").read_text() == "3"
    pipe = run(path)
    assert [p.action for p in pipe.plans] == ["skip", "resume"]
    assert (tmp_path / "runs/p/train/out.txt").read_text() == "3,4,5"  # only the missing steps ran
    st = read_state(tmp_path / "runs/p", "train")
    assert st["status"] == "done"
    assert [(a["mode"], a["outcome"]) for a in st["attempts"]] == [("fresh", "failed"), ("resume", "done")]
    assert st["wall_s"] == pytest.approx(sum(a["wall_s"] for a in st["attempts"]), abs=0.02)
    # a config change is a new run, not a resume
    pipe = run(path, ["train.crash_at=99"])
    assert pipe.plans[1].action == "run"
    assert (tmp_path / "runs/p/train/out.txt").read_text() == "0,1,2,3,4,5"


def test_peak_rss_is_measured_per_stage(tmp_path):
    path = write_pipeline(tmp_path, {"big": {"kind": f"{MOD}:TEXT", "set": {"text": "a", "alloc_mb": 300}},
                                     "small": {"kind": f"{MOD}:TEXT", "set": {"text": "b"}}})
    run(path)
    big = read_state(tmp_path / "runs/p", "big")["peak_rss_mb"]
    small = read_state(tmp_path / "runs/p", "small")["peak_rss_mb"]
    assert big - small > 250, (big, small)  # each stage has its own process: the 300 MB shows in one only


def test_stage_error_names_the_stage_its_message_and_log(tmp_path):
    path = write_pipeline(tmp_path, {"bad": {"kind": f"{MOD}:FAIL", "set": {"file": "data/x.jsonl"}}})
    with pytest.raises(KrllmError, match=r"stage bad failed: data/x.jsonl:7: bad record \(fake\)"):
        run(path)
    log = (tmp_path / "runs/p/_pipeline/logs/bad.log").read_text()
    assert "data/x.jsonl:7: bad record" in log


def test_wiring_problems_are_reported_together(tmp_path):
    path = write_pipeline(tmp_path, {"up": {"kind": f"{MOD}:UPPER"},
                                     "x": {"kind": "no_such_kind"},
                                     "y": {"kind": f"{MOD}:UPPER", "inputs": {"src": "later", "other": "up"}},
                                     "later": {"kind": f"{MOD}:TEXT", "set": {"text": "t"}}})
    with pytest.raises(ConfigError) as e:
        Pipeline(load_pipeline(path), config_path=path)
    probs = e.value.problems
    assert any(p.startswith("stages.up: a upper stage needs an earlier stage of kind text") for p in probs)
    assert any(p.startswith("stages.x.kind: unknown stage kind 'no_such_kind'") for p in probs)
    assert "stages.y.inputs.src: 'later' is not a stage defined before y" in probs
    assert any(p.startswith("stages.y.inputs.other: a upper stage has no input 'other'") for p in probs)


def test_explicit_inputs_pick_a_stage(tmp_path):
    path = write_pipeline(tmp_path, {"a": {"kind": f"{MOD}:TEXT", "set": {"text": "aa"}},
                                     "b": {"kind": f"{MOD}:TEXT", "set": {"text": "bb"}},
                                     "up": {"kind": f"{MOD}:UPPER", "inputs": {"src": "a"}},
                                     "up2": {"kind": f"{MOD}:UPPER"}})
    run(path)
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "AA"
    assert (tmp_path / "runs/p/up2/out.txt").read_text() == "BB"  # default: the latest earlier stage


def test_stage_set_shorthand_and_bad_keys(tmp_path):
    path = two_stages(tmp_path)
    cfg = load_pipeline(path, ["up.suffix=_y", "src.deep.key=3", "name=other"])
    assert cfg.name == "other"
    assert cfg.stages["up"].set == {"suffix": "_y"}
    assert cfg.stages["src"].set["deep"] == {"key": 3}
    with pytest.raises(ConfigError, match="stages.src.bogus: unknown key"):
        load_pipeline(path, ["stages.src.bogus=1"])
    with pytest.raises(ConfigError, match="name: use lowercase"):
        load_pipeline(path, ["name=Bad Name"])


def test_inline_isolation_gives_same_results(tmp_path):
    path = write_pipeline(tmp_path, {"src": {"kind": f"{MOD}:TEXT", "set": {"text": "in"}},
                                     "up": {"kind": f"{MOD}:UPPER"}}, isolation="inline")
    pipe = run(path)
    assert (tmp_path / "runs/p/up/out.txt").read_text() == "IN"
    st = read_state(pipe.run_dir, "up")
    assert st["peak_rss_scope"].startswith("runner process") and st["peak_rss_mb"] > 10


def test_ctrl_c_stops_the_stage_and_the_next_run_resumes(tmp_path):
    path = write_pipeline(tmp_path, {"src": {"kind": f"{MOD}:TEXT", "set": {"text": "x"}},
                                     "train": {"kind": f"{MOD}:STEPS", "set": {"n": 60, "sleep": 0.05}}})
    proc = subprocess.Popen([sys.executable, "-m", "krllm", "pipeline", "run", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ck = tmp_path / "runs/p/train/ckpt"
    deadline = time.time() + 60
    def steps_done() -> int:  # the stage rewrites the file each step: it may be caught empty
        text = ck.read_text() if ck.exists() else ""
        return int(text) if text.strip().isdigit() else 0

    while steps_done() < 3:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal sends to the runner
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    st = read_state(tmp_path / "runs/p", "train")
    assert st["status"] == "interrupted" and "re-run the same command to resume" in st["error"]
    stopped_at = int(ck.read_text())
    assert 3 <= stopped_at < 60
    pipe = run(path)
    assert [p.action for p in pipe.plans] == ["skip", "resume"]
    done = [int(x) for x in (tmp_path / "runs/p/train/out.txt").read_text().split(",")]
    assert done == list(range(stopped_at, 60))
