"""Golden-loss tests (torchtune's pattern): each training method's real entry point runs 2 optimizer steps
on the tiny random Llama of tests/sft_tiny.py, fp32 on CPU, one thread, fixed seeds, and the losses it
logs for steps 1 and 2 must equal values recorded once. A refactor of the shared plumbing (krllm/train/hf/)
that changes what is trained, on what, or how the loss is computed moves these numbers.

Guards against a broken loss that happens to be stable: step 1 must also equal a loss computed here,
independently, with transformers' own forward (`labels=` / cross-entropy) on the same batch; step 2 must
be lower than step 1 (the optimizer moved the right way).

Regenerate the golden values (only when a change is *meant* to alter training, say so in the commit):
    KRLLM_PRINT_GOLDEN=1 PYTHONPATH=$PWD python -m pytest tests/test_train_golden.py -q -s -p no:cacheprovider
prints `GOLDEN <method> [loss1, loss2]`; paste the numbers into GOLDEN below.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from sft_tiny import one_thread, tiny_base

from krllm.config import validate
from krllm.tracking import read_metrics

GOLDEN = {  # recorded on the code before krllm/train/hf/ existed (sft_* modules), torch 2.13 CPU
    "sft": [8.181136131286621, 8.039856910705566],
    "classify": [0.8535965085029602, 0.5048006176948547],
    "dpo": [0.6931471824645996, 0.5816029906272888],  # recorded with the DPO trainer's first version (krllm.train.dpo)
    "grpo": [-2.3345153010723152e-07, 8.176701521733776e-05],  # re-recorded for inverse-CDF sampling
    "grpo_reward": [0.4791666567325592, 0.3958333134651184],  # inverse-CDF sampling (krllm.infer.sampling)
}
RTOL = 1e-4


def _logged_losses(run_dir) -> list[float]:
    """Training losses of steps 1 and 2 as the run logged them (metrics.jsonl)."""
    rows = [r for r in read_metrics(run_dir) if r["split"] == "train" and "loss" in r]
    by_step = {r["step"]: r["loss"] for r in rows}
    assert sorted(by_step) == [1, 2], rows
    return [by_step[1], by_step[2]]


def _check(method: str, losses: list[float]) -> None:
    if os.environ.get("KRLLM_PRINT_GOLDEN"):
        print(f"\nGOLDEN {method} {losses!r}")
    assert losses == pytest.approx(GOLDEN[method], rel=RTOL), (method, losses)


def _padded(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs])  # (B, T)


def test_sft_two_steps_golden(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.data.tokens.chat_tokens import tokenize_chat
    from krllm.data.sets.records import load_examples
    from krllm.train.sft import run_sft
    from krllm.train.sft_config import SFTRunConfig

    _, model_dir = tiny_base()
    n = 8  # one batch holds the whole set: both steps see every example, whatever the sampler's order
    cfg = validate({
        "name": "golden", "runs_dir": str(tmp_path), "base_model": str(model_dir), "merge": False,
        "data": {"train": "builtin:npc", "n": n, "eval_fraction": 0, "max_length": 320},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": n, "lr": 5e-3, "warmup": 0, "logging_steps": 1, "seed": 7,
                  "device": "cpu", "dtype": "fp32"},
        "samples": {"n": 0}, "tracking": {"tensorboard": False}}, SFTRunConfig)
    with one_thread():
        torch.manual_seed(0)
        run_sft(cfg)
        losses = _logged_losses(tmp_path / "golden")

        # step 1 trains a fresh adapter (B = 0): its loss is the base model's, computed here by transformers
        tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        pairs = [tokenize_chat(tok, r["messages"], "assistant") for r in load_examples("builtin:npc", "sft", n=n)]
        ids = _padded([p[0] for p in pairs], tok.pad_token_id)
        labels = _padded([p[1] for p in pairs], -100)
        mask = _padded([[1] * len(p[0]) for p in pairs], 0)
        with torch.no_grad():
            ref = base(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert losses[0] == pytest.approx(ref, rel=1e-5)
    assert math.log(len(tok)) - 1 < losses[0] < math.log(len(tok)) + 3  # a random model: about ln(vocab)
    assert losses[1] < losses[0]
    _check("sft", losses)


def test_classify_two_steps_golden(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from krllm.train.classify import ClassifyRunConfig, encode, label_names, run_classify, split

    _, model_dir = tiny_base()
    cfg = validate({
        "name": "golden", "runs_dir": str(tmp_path), "base_model": str(model_dir),
        "data": {"train": "builtin:sentiment", "n": 40, "eval_fraction": 0.2},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 32, "lr": 5e-3, "warmup": 0, "logging_steps": 1, "seed": 7,
                  "eval_steps": 100, "device": "cpu", "dtype": "fp32"},
        "tracking": {"tensorboard": False}}, ClassifyRunConfig)
    with one_thread():
        torch.manual_seed(0)  # the new score head is initialised from the global generator
        rep = run_classify(cfg)
        losses = _logged_losses(tmp_path / "golden")

        # step 1: the same head (same seed, drawn first) on the frozen base, cross-entropy by transformers
        tok = AutoTokenizer.from_pretrained(model_dir)
        train, _ = split(cfg)
        names = label_names(cfg, train, [])
        rows = encode(train, tok, names, cfg.data.max_length)
        assert len(rows) == cfg.train.batch_size  # one batch holds the whole train split
        torch.manual_seed(0)
        ref_model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=len(names), pad_token_id=tok.pad_token_id, dtype=torch.float32).eval()
        ids = _padded([r["input_ids"] for r in rows], tok.pad_token_id)
        mask = _padded([[1] * len(r["input_ids"]) for r in rows], 0)
        with torch.no_grad():
            ref = ref_model(input_ids=ids, attention_mask=mask,
                            labels=torch.tensor([r["label"] for r in rows])).loss.item()
    assert rep["steps"] == 2
    assert losses[0] == pytest.approx(ref, rel=1e-5)
    assert 0.1 < losses[0] < math.log(2) + 3  # two classes, a random head: about ln 2, a few nats at most
    assert losses[1] < losses[0]
    _check("classify", losses)


def test_dpo_two_steps_golden(tmp_path):
    """Step 1: policy == reference (fresh adapter), so the sigmoid loss is exactly ln 2 and the margin 0, and the
    logged sequence log-probabilities equal transformers' own on the same pairs. Step 2: the loss equals the DPO
    loss computed here from the checkpoint-1 adapter (policy) and the base (reference), and is below ln 2."""
    import torch.nn.functional as F
    from dpo_tiny import arithmetic_pairs, sequence_logps
    from peft import PeftModel
    from sft_tiny import write_jsonl
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from krllm.train.dpo import run_dpo
    from krllm.train.dpo_config import DPORunConfig

    _, model_dir = tiny_base()
    n, beta = 8, 0.1  # one batch holds every pair: both steps see the whole set
    pairs = arithmetic_pairs(n)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = validate({
        "name": "golden", "runs_dir": str(tmp_path), "base_model": str(model_dir), "merge": False,
        "data": {"train": str(data), "eval_fraction": 0, "max_length": 128},
        "dpo": {"beta": beta},
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": n, "lr": 5e-3, "warmup": 0, "logging_steps": 1, "seed": 7,
                  "save_steps": 1, "device": "cpu", "dtype": "fp32"},
        "samples": {"n": 0}, "tracking": {"tensorboard": False}}, DPORunConfig)
    run = tmp_path / "golden"
    with one_thread():
        torch.manual_seed(0)
        run_dpo(cfg)
        losses = _logged_losses(run)
        logged = {r["step"]: r for r in read_metrics(run) if r["split"] == "train" and "loss" in r}

        tok = AutoTokenizer.from_pretrained(model_dir)
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        ref_c, ref_r = sequence_logps(base, tok, pairs)
        policy = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), run / "checkpoints" / "checkpoint-1"
        ).eval()
        pol_c, pol_r = sequence_logps(policy, tok, pairs)
    # step 1: the base is both policy and reference
    assert losses[0] == pytest.approx(math.log(2), rel=1e-6)
    assert logged[1]["rewards/margins"] == 0.0 and logged[1]["rewards/accuracies"] == 0.0
    assert logged[1]["logps/chosen"] == pytest.approx(ref_c.mean().item(), rel=1e-5)
    assert logged[1]["logps/rejected"] == pytest.approx(ref_r.mean().item(), rel=1e-5)
    # step 2: DPO's loss of the policy after one update, against the unchanged reference
    margin = beta * ((pol_c - ref_c) - (pol_r - ref_r))  # (n,)
    ref_loss = -F.logsigmoid(margin).mean().item()
    assert losses[1] == pytest.approx(ref_loss, rel=1e-4)
    assert logged[2]["rewards/margins"] == pytest.approx(margin.mean().item(), rel=1e-3, abs=1e-6)
    assert losses[1] < losses[0] and logged[2]["rewards/margins"] > 0
    _check("dpo", losses)


def even_tokens(prompts, completions, completion_ids, **kwargs):
    """A reward with spread on a random model (GRPO needs unequal rewards in a group): the share of even ids."""
    return [sum(t % 2 == 0 for t in ids) / len(ids) for ids in completion_ids]


def test_grpo_two_steps_golden(tmp_path):
    """GRPO on krllm's rollouts. At step 1 the policy is the sampler (ratio 1, fresh adapter: KL 0), so TRL's
    "dapo" loss is -sum_i A_i * len_i / sum_i len_i with A the group-normalized rewards: computed here from the
    completions the rollout returned and our reward function, it must equal the logged loss. Rewards and losses
    of both steps are golden (sampling is seeded through torch's generator)."""
    from krllm.infer.rollout import EngineRollout
    from krllm.train.grpo import run_grpo
    from krllm.train.grpo_config import GRPORunConfig

    _, model_dir = tiny_base()
    G = 4
    cfg = validate({
        "name": "golden", "runs_dir": str(tmp_path), "base_model": str(model_dir), "merge": False,
        "data": {"train": "builtin:math:ko", "n": 8, "seed": 3},
        "grpo": {"num_generations": G, "max_completion_length": 12, "beta": 0.04},
        "rewards": ["test_train_golden:even_tokens"],
        "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {"max_steps": 2, "batch_size": 2 * G, "lr": 5e-3, "logging_steps": 1, "seed": 7,
                  "save_steps": 10, "device": "cpu", "dtype": "fp32"},
        "samples": {"n": 0}, "tracking": {"tensorboard": False}}, GRPORunConfig)
    seen = []
    real = EngineRollout.__call__

    def spy(self, prompts, trainer):
        out = real(self, prompts, trainer)
        seen.append(out["completion_ids"])
        return out

    EngineRollout.__call__ = spy
    try:
        with one_thread():
            torch.manual_seed(0)
            run_grpo(cfg)
    finally:
        EngineRollout.__call__ = real
    logged = {r["step"]: r for r in read_metrics(tmp_path / "golden") if r["split"] == "train" and "loss" in r}
    assert sorted(logged) == [1, 2] and len(seen) == 2
    lengths = torch.tensor([len(c) for c in seen[0]], dtype=torch.float32)  # (2G,)
    rewards = torch.tensor(even_tokens(None, None, seen[0]))
    grouped = rewards.view(-1, G)
    adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).view(-1)
    assert logged[1]["reward"] == pytest.approx(rewards.mean().item(), rel=1e-5)
    assert logged[1]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert logged[1]["loss"] == pytest.approx(-(adv * lengths).sum().item() / lengths.sum().item(), abs=1e-5)
    assert logged[2]["kl"] > 0  # the adapter moved
    _check("grpo_reward", [logged[1]["reward"], logged[2]["reward"]])
    losses = [logged[1]["loss"], logged[2]["loss"]]  # near 0 (on-policy): compared absolutely
    if os.environ.get("KRLLM_PRINT_GOLDEN"):
        print(f"\nGOLDEN grpo {losses!r}")
    assert losses == pytest.approx(GOLDEN["grpo"], abs=1e-7), losses
