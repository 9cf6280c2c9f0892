"""torchrun with 2 processes on gloo/CPU: the same global batch gives the same loss curve as one
process — with DDP and with FSDP2 (`fully_shard`) — and an FSDP checkpoint resumes in one process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from krllm.tracking import read_metrics
from pretrain_tiny import REPO, make_shards, run_krllm, subprocess_env, tiny_config, train_losses

pytestmark = pytest.mark.slow  # each torchrun start costs ~10 s on 2 cores
STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt_dist")
    shards = make_shards(root, synthetic=True)
    # global batch 4 = 1 process x 4 = 2 processes x 2
    one = tiny_config(root / "one.yaml", shards, root / "runs", name="one",
                      train={"max_steps": STEPS, "batch_size": 4}, eval={"eval_interval": 3},
                      checkpoint={"save_interval": 3})
    two = tiny_config(root / "two.yaml", shards, root / "runs", name="two",
                      train={"max_steps": STEPS, "batch_size": 2}, eval={"eval_interval": 3},
                      checkpoint={"save_interval": 3})
    res = run_krllm("pretrain", "-c", str(one))
    assert res.returncode == 0, res.stderr
    return root, two, read_metrics(root / "runs" / "one")


def _torchrun(cfg, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "krllm", "pretrain", "-c", str(cfg), *extra]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def _split(records, split):
    return {r["step"]: r["loss"] for r in records if r["split"] == split and "loss" in r}


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(setup, strategy):
    root, two, ref = setup
    res = _torchrun(two, "--set", f"run.name={strategy}", "--set", f"run.distributed={strategy}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"2 processes, {strategy.upper()} over gloo" in res.stdout
    assert res.stdout.count("step 1/6 |") == 1  # console lines from rank 0 only
    got = read_metrics(root / "runs" / strategy)
    a, b = _split(ref, "train"), _split(got, "train")
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=2e-5), f"step {s}"
    assert a[STEPS] < a[1] - 0.1  # and it is learning
    va, vb = _split(ref, "val"), _split(got, "val")
    assert sorted(va) == sorted(vb) == [0, 3, 6]
    for s in va:
        assert vb[s] == pytest.approx(va[s], abs=2e-5)
    assert (root / "runs" / strategy / "hf" / "model.safetensors").exists()


def test_fsdp_checkpoint_resumes_in_one_process(setup):
    """Checkpoints hold full state dicts: step 3 of the 2-process FSDP run continues in 1 process."""
    root, two, ref = setup
    run = root / "runs" / "fsdp"
    if not (run / "checkpoints" / "step_6").exists():
        pytest.skip("needs the fsdp run of test_two_processes_match_one_process")
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_6")
    res = run_krllm("pretrain", "-c", str(two), "--set", "run.name=fsdp", "--set", "train.batch_size=4", "--resume")
    assert res.returncode == 0, res.stderr
    assert "resumed from step_3" in res.stdout
    a, b = _split(ref, "train"), train_losses(run)
    for s in range(4, STEPS + 1):
        assert b[s] == pytest.approx(a[s], abs=2e-5)
