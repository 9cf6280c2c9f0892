"""`krllm grpo` on a tiny random Llama: TRL's GRPOTrainer with rollouts on krllm's engine.

What could break and is checked here: the compact log-probabilities (head on completion tokens only)
against TRL's own method, values and gradients; the run layout, metrics and resume; that the policy
actually moves towards a reward; that configs and reward specs fail early and clearly.
(The rollouts themselves are checked against the policy in tests/test_rollout.py.)
"""

from __future__ import annotations

import sys

import pytest
import torch
from sft_tiny import tiny_base

from krllm.config import ConfigError, validate
from krllm.errors import KrllmError
from krllm.tracking import read_metrics
from krllm.train.grpo_config import GRPORunConfig


def _cfg(tmp_path, **over) -> GRPORunConfig:
    _, model = tiny_base()
    base = {"name": "g", "runs_dir": str(tmp_path), "base_model": str(model),
            "data": {"train": "builtin:math:ko", "n": 16},
            "grpo": {"num_generations": 4, "max_completion_length": 16},
            "train": {"batch_size": 8, "max_steps": 2, "lr": 1e-3, "save_steps": 1, "seed": 0},
            "samples": {"n": 1, "max_new_tokens": 8}, "tracking": {"tensorboard": False}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            base[section] = {**base.get(section, {}), field: value}
        else:
            base[key] = value
    return validate(base, GRPORunConfig)


@pytest.mark.parametrize("batch_size", [2, None])
def test_shared_prompt_logps_equal_trl_values_and_gradients(tmp_path, batch_size):
    """Our path (each prompt once, its cache handed to its completions, which run sorted by length in
    chunks of 2 rows or all in one, the head on completion tokens only) vs TRL's fused head on every
    position of the whole batch: same numbers, same gradients, rows in the batch's order."""
    from trl import GRPOTrainer

    from krllm.train.grpo import make_trainer
    from krllm.train.grpo_loss import prompt_index, shared_prompt_ok
    from krllm.train.hf.model import load_causal_lm, load_tokenizer

    cfg = _cfg(tmp_path, grpo__temperature=0.7)
    tok = load_tokenizer(cfg.base_model)
    model = load_causal_lm(cfg.base_model, tok, cfg.peft, torch.float32)
    trainer = make_trainer(cfg, tmp_path / "g", tok, model, [{"prompt": [{"role": "user", "content": "x"}],
                                                              "ground_truth_answer": "1"}] * 8, [],
                           torch.device("cpu"), torch.float32)
    g = torch.Generator().manual_seed(0)
    keep, P = 6, 6
    ids = torch.randint(4, 500, (6, P + keep), generator=g)
    ids[1:4, :P] = ids[0, :P]  # rows 0-3 share a prompt, rows 4-5 another
    ids[5, :P] = ids[4, :P]
    mask = torch.ones_like(ids)
    mask[:4, :2] = 0  # left-padded prompt
    mask[1, -4:] = 0  # right-padded completions of different lengths
    mask[2, -1:] = 0
    mask[3, P:] = 0  # a truncated completion masked out whole (mask_truncated_completions)
    mask[4:, :1] = mask[4, -5:] = 0
    ids[0, :P] = ids[1, :P].masked_fill(mask[1, :P] == 0, 3)  # a different pad id under the mask: same prompt
    first, which = prompt_index(ids, mask, keep)
    assert sorted(first.tolist()) == [0, 4] and first[which].tolist() == [0, 0, 0, 0, 4, 4]
    assert shared_prompt_ok(trainer, trainer.model, mask, keep, {})
    holes = mask.clone()
    holes[0, 3] = 0  # not left padding: TRL's method takes it
    assert not shared_prompt_ok(trainer, trainer.model, holes, keep, {})
    results = []
    for fn in (trainer._get_per_token_logps_and_entropies,
               lambda *a, **k: GRPOTrainer._get_per_token_logps_and_entropies(trainer, *a, **k)):
        trainer.model.zero_grad()
        logps, ent, _ = fn(trainer.model, ids, mask, keep, batch_size=batch_size, compute_entropy=True)
        (logps * mask[:, -keep:]).sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((logps.detach() * mask[:, -keep:], ent.detach() * mask[:, -keep:], grads))
    (ours, ours_ent, ours_g), (trl, trl_ent, trl_g) = results
    assert ours.shape == trl.shape == (6, keep)
    assert torch.allclose(ours, trl, atol=1e-5)
    assert torch.allclose(ours_ent, trl_ent, atol=1e-5)
    assert ours_g.keys() == trl_g.keys() and ours_g
    for n in ours_g:
        assert torch.allclose(ours_g[n], trl_g[n], atol=1e-5, rtol=1e-4), n


def test_grpo_run_layout_metrics_and_resume(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from krllm.train.grpo import run_grpo

    cfg = _cfg(tmp_path, grpo__beta=0.04)
    s = run_grpo(cfg)
    run = tmp_path / "g"
    assert s["steps"] == 2 and "krllm engine" in s["rollout"]
    for name in ("config.yaml", "lineage.json", "metrics.jsonl", "summary.json", "samples.md", "adapter",
                 "merged"):
        assert (run / name).exists(), name
    rows = [r for r in read_metrics(run) if r["split"] == "train" and "reward" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("kl", "rewards/math_correct/mean", "rewards/format/mean", "completions/mean_length",
                "rollout/generate_s"):
        assert key in rows[-1], key
    assert 0.0 <= rows[-1]["rewards/math_correct/mean"] <= 1.0
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.base_model), run / "adapter")

    resumed = run_grpo(_cfg(tmp_path, grpo__beta=0.04, train__max_steps=3), resume=True)
    assert resumed["steps"] == 3
    assert [r["step"] for r in read_metrics(run) if r["split"] == "train" and "reward" in r][-1] == 3
    with pytest.raises(KrllmError, match="already holds a run"):
        run_grpo(cfg)


def test_grpo_moves_the_policy_towards_the_reward(tmp_path, monkeypatch):
    """A user reward (`module:function`) that pays for short answers: completions get shorter."""
    from krllm.train.grpo import run_grpo

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompts, completions, completion_ids, **kw):\n"
        "    return [1.0 - min(len(c), 16) / 16 for c in completion_ids]\n", encoding="utf-8")
    sys.modules.pop("my_rewards", None)
    cfg = _cfg(tmp_path, rewards=["my_rewards:short"], train__max_steps=24, train__lr=2e-2, train__save_steps=100,
               peft__method="full", samples__n=0)
    s = run_grpo(cfg)
    rows = [r["reward"] for r in read_metrics(tmp_path / "g") if r["split"] == "train" and "reward" in r]
    assert len(rows) == 24
    first, last = sum(rows[:6]) / 6, sum(rows[-6:]) / 6
    assert last > first + 0.2, rows
    assert (tmp_path / "g" / "hf" / "config.json").is_file() and s["method"] == "full"


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="num_generations"):
        _cfg(tmp_path, train__batch_size=6)
    with pytest.raises(ConfigError, match="rewards"):
        _cfg(tmp_path, rewards=[])
    cfg = _cfg(tmp_path, rewards=["math_correct", {"fn": "length_penalty", "weight": 0.5}])
    assert [r.fn for r in cfg.rewards] == ["math_correct", "length_penalty"] and cfg.rewards[1].weight == 0.5


def test_bad_reward_spec_fails_before_training(tmp_path):
    from krllm.train.grpo import run_grpo

    with pytest.raises(KrllmError, match="no_such_module"):
        run_grpo(_cfg(tmp_path, rewards=["no_such_module:fn"]))
    assert not (tmp_path / "g" / "metrics.jsonl").exists()


def test_cli_help_lists_the_grpo_keys():
    import subprocess

    out = subprocess.run([sys.executable, "-m", "krllm", "grpo", "--help"], capture_output=True, text=True, check=True)
    for key in ("grpo.num_generations", "grpo.beta", "grpo.rollout", "train.lr"):
        assert key in out.stdout, key


def test_overwrite_with_bad_inputs_keeps_the_previous_run(tmp_path):
    """--overwrite clears an old run only once the new inputs are known to be good."""
    from krllm.train.grpo import run_grpo

    run_grpo(_cfg(tmp_path, train__max_steps=1, samples__n=0))
    before = (tmp_path / "g" / "metrics.jsonl").read_text(encoding="utf-8")
    with pytest.raises(KrllmError, match="no_such_module"):
        run_grpo(_cfg(tmp_path, rewards=["no_such_module:fn"]), overwrite=True)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n', encoding="utf-8")
    with pytest.raises(KrllmError, match="bad.jsonl:1: prompt: is empty"):
        run_grpo(_cfg(tmp_path, data__train=str(bad)), overwrite=True)
    assert (tmp_path / "g" / "metrics.jsonl").read_text(encoding="utf-8") == before
    assert (tmp_path / "g" / "adapter").is_dir()


@pytest.mark.slow
def test_two_cpu_processes_with_krllm_rollouts(tmp_path):
    """torchrun --nproc_per_node 2 (DDP over gloo): each process decodes its own prompts' completions on
    krllm's engine from the DDP-wrapped policy; rank 0 alone writes the run."""
    import json

    from sft_tiny import torchrun_krllm

    cfg = _cfg(tmp_path, name="ddp", train__max_steps=2, train__batch_size=4, samples__n=0)
    out = torchrun_krllm("grpo", cfg, tmp_path)
    assert out.stdout.count("done:") == 1
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and "krllm engine" in summary["rollout"]
    rows = [r for r in read_metrics(tmp_path / "ddp") if r["split"] == "train" and "reward" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(r["rollout/generate_s"] > 0 for r in rows)
