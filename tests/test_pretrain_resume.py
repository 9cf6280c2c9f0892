"""Interrupted runs, for real: `kill -9` mid-run then `--resume` gives exactly the losses of an
uninterrupted run (CPU, fp32, same seed); Ctrl-C (SIGINT) saves a checkpoint before exiting.

Each run is a separate `python -m krllm pretrain` process with the same thread count, so the
uninterrupted reference and the resumed run do identical arithmetic.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from krllm.tracking import read_metrics
from krllm.train import checkpoint as ckpt
from pretrain_tiny import REPO, krllm_cmd, make_shards, run_krllm, subprocess_env, tiny_config, train_losses

STEPS = 10
pytestmark = pytest.mark.slow  # a few CLI processes each (~1 min in all)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt_resume")
    shards = make_shards(root, synthetic=True)
    cfg = tiny_config(root / "c.yaml", shards, root / "runs", name="ref",
                      train={"max_steps": STEPS}, checkpoint={"save_interval": 3, "keep_last": 2},
                      eval={"eval_interval": 5})
    ref = run_krllm("pretrain", "-c", str(cfg))
    assert ref.returncode == 0, ref.stderr
    return root, cfg, train_losses(root / "runs" / "ref")


def _start(cfg, name: str, sleep: str = "0.4") -> subprocess.Popen:
    return subprocess.Popen(krllm_cmd("pretrain", "-c", str(cfg), "--set", f"run.name={name}"), cwd=REPO,
                            env=subprocess_env(KRLLM_FAULT_STEP_SLEEP=sleep),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"run ended early (code {proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.05)


def _logged_step(run) -> int:
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    return max(steps, default=0)


def test_kill_9_then_resume_gives_exactly_the_uninterrupted_losses(setup):
    root, cfg, ref = setup
    run = root / "runs" / "killed"
    proc = _start(cfg, "killed")
    # kill after the step-3 checkpoint, once step 5 is logged (so stale records must be purged)
    _wait_for(lambda: (run / "checkpoints" / "step_3" / "checksums.json").exists() and _logged_step(run) >= 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert "step_3" in [p.name for p in ckpt.list_step_dirs(run / "checkpoints")]
    assert not (run / "hf").exists()

    res = run_krllm("pretrain", "-c", str(cfg), "--set", "run.name=killed", "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed from step_" in res.stdout
    got = train_losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == ref  # bit-exact: same floats as the uninterrupted run, every step
    steps = [r["step"] for r in read_metrics(run) if r["split"] == "train"]
    assert steps == sorted(set(steps)), "records of the killed run after its checkpoint were not purged"
    val = {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "val"}
    ref_val = {r["step"]: r["loss"] for r in read_metrics(root / "runs" / "ref") if r["split"] == "val"}
    assert val == ref_val
    assert (run / "hf" / "model.safetensors").exists()


def test_ctrl_c_saves_a_checkpoint_then_resume_finishes_identically(setup):
    root, cfg, ref = setup
    run = root / "runs" / "sigint"
    proc = _start(cfg, "sigint")
    _wait_for(lambda: _logged_step(run) >= 4, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out and "--resume" in out
    stopped = int(re.search(r"interrupted at step (\d+)/", out).group(1))
    assert 4 <= stopped < STEPS
    ckpt.verify(run / "checkpoints" / f"step_{stopped}")  # saved on the way out, whatever the schedule

    res = run_krllm("pretrain", "-c", str(cfg), "--set", "run.name=sigint", "--resume")
    assert res.returncode == 0, res.stderr
    assert f"resumed from step_{stopped}" in res.stdout
    assert train_losses(run) == ref
