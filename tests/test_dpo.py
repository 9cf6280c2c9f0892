"""`krllm dpo` on a tiny random Llama: DPO widens the chosen - rejected log-probability margin on held-out
pairs (measured here with transformers, not with the trainer's numbers); completions end with <|im_end|>;
bad pairs fail with file:line; the run directory, resume, full fine-tuning with a frozen reference; config
checks against the installed TRL; the pipeline stage. The 2-step golden loss is in tests/test_train_golden.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from dpo_tiny import arithmetic_pairs, completion_ids, sequence_logps
from sft_tiny import one_thread, tiny_base, torchrun_krllm, write_jsonl

from krllm.config import ConfigError, load_config, validate
from krllm.errors import DataError
from krllm.tracking import read_metrics
from krllm.train.dpo import run_dpo
from krllm.train.dpo_config import ADAPTER_LR, FULL_LR, DPORunConfig, trl_loss_types

REPO = Path(__file__).resolve().parents[1]


def cfg_for(tmp_path, pairs=None, **sections) -> DPORunConfig:
    """A tiny, fast run on arithmetic pairs: fp32, no validation, no samples, no merge unless asked."""
    _, model_dir = tiny_base()
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs if pairs is not None else arithmetic_pairs(16))
    cfg = {"name": "run", "runs_dir": str(tmp_path / "runs"), "base_model": str(model_dir), "merge": False,
           "data": {"train": str(data), "eval_fraction": 0, "max_length": 128},
           "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
           "train": {"max_steps": 2, "batch_size": 4, "lr": 5e-3, "warmup": 0, "logging_steps": 1,
                     "save_steps": 100, "dtype": "fp32", "device": "cpu"},
           "samples": {"n": 0}, "tracking": {"tensorboard": False}}
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(cfg, DPORunConfig)


def train_losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train" and "loss" in r}


def test_dpo_widens_the_log_probability_margin_on_held_out_pairs(tmp_path):
    """The behaviour DPO exists for: after training, unseen chosen answers gain log-probability relative to
    unseen rejected ones (here: rejected answers that give no final answer, a pattern that generalizes)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    held = arithmetic_pairs(16, seed=1, missing=True)
    held_file = write_jsonl(tmp_path / "held.jsonl", held)
    cfg = cfg_for(tmp_path, arithmetic_pairs(48, missing=True), merge=True,
                  data={"eval": str(held_file)}, peft={"r": 8, "alpha": 16},
                  train={"max_steps": 30, "batch_size": 8, "eval_steps": 30, "logging_steps": 5},
                  samples={"n": 2, "max_new_tokens": 8}, tracking={"tensorboard": True})
    _, model_dir = tiny_base()
    with one_thread():
        tok = AutoTokenizer.from_pretrained(model_dir)
        c0, r0 = sequence_logps(AutoModelForCausalLM.from_pretrained(model_dir).eval(), tok, held)
        s = run_dpo(cfg)
        c1, r1 = sequence_logps(AutoModelForCausalLM.from_pretrained(s["outputs"]["merged"]).eval(), tok, held)
    before, after = (c0 - r0).mean().item(), (c1 - r1).mean().item()
    assert after > before + 10, (before, after)  # measured 28.5 -> 58.7 nats
    # the trainer's own numbers agree with transformers' on the held-out set, before and after
    assert s["eval_logp_margin_before"] == pytest.approx(before, rel=1e-4)
    assert s["eval_logp_margin"] == pytest.approx(after, rel=1e-3)
    assert s["eval_loss_before"] == pytest.approx(math.log(2)) and s["eval_reward_margin_before"] == 0.0
    assert s["eval_loss"] < math.log(2) and s["eval_reward_margin"] > 0 and s["eval_reward_accuracy"] > 0.5
    run = Path(cfg.runs_dir) / "run"
    metrics = read_metrics(run)
    train = [r for r in metrics if r["split"] == "train" and "loss" in r]
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
            "logps/rejected", "tok_per_s"} <= set(train[-1])
    assert [r["step"] for r in metrics if r["split"] == "eval"] == [0, 30]
    assert any(p.name.startswith("events.") for p in (run / "tb").iterdir())
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [x["reference"] for x in samples] == [p["chosen"][-1]["content"] for p in held[:2]]
    assert [x["prompt"] for x in samples] == [p["prompt"] for p in held[:2]]


def test_completions_end_with_the_end_of_turn_token(tmp_path):
    """TRL renders the chat template; ChatML puts a newline after <|im_end|>. What trains must end the answer with
    <|im_end|> (so the aligned model stops) and nothing after; plain-string pairs tokenize the same way."""
    from krllm.train.dpo import make_trainer, prepare

    pairs = arithmetic_pairs(6)
    strings = arithmetic_pairs(6, conversational=False)
    rows = {}
    for name, data in (("messages", pairs), ("strings", strings)):
        cfg = cfg_for(tmp_path / name, data)
        p = prepare(cfg)
        trainer = make_trainer(cfg, p, tmp_path / name / "run")
        rows[name] = trainer.train_dataset
    tok = p.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ds = rows["messages"]
    assert len(ds) == 6
    for row, pair in zip(ds, pairs):
        for key in ("chosen", "rejected"):
            ids = row[f"{key}_ids"]
            assert ids[-1] == end and ids.count(end) == 1, tok.decode(ids)
            assert tok.decode(ids) == pair[key][0]["content"] + "<|im_end|>"
            assert (row["prompt_ids"], ids) == completion_ids(tok, pair["prompt"], pair[key])
        assert tok.decode(row["prompt_ids"]).endswith("<|im_start|>assistant\n")
        assert row["length"] == len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"]))
    cols = ("prompt_ids", "chosen_ids", "rejected_ids")
    assert [[r[c] for c in cols] for r in rows["strings"]] == [[r[c] for c in cols] for r in ds]


def test_bad_pairs_fail_with_file_and_line_through_the_cli(tmp_path):
    good = arithmetic_pairs(1, conversational=False)[0]
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [good, {"prompt": "2 더하기 3은?", "chosen": "5"},
                      {"prompt": "  ", "chosen": "5", "rejected": "6"},
                      {"prompt": "2 더하기 3은?", "chosen": 5, "rejected": "6"},
                      {"prompt": [{"role": "user", "content": 7}], "chosen": "5", "rejected": "6"},
                      ["not", "an", "object"]])
    cfg = cfg_for(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "krllm", "dpo", "-c", str(path), "--set", f"data.train={bad}"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr[-2000:]
    err = out.stderr
    assert "5 invalid dpo record(s)" in err
    for line in (f"{bad}:2: rejected: required key is missing", f"{bad}:3: prompt: is empty",
                 f"{bad}:4: chosen: must be a string or a list of {{'role', 'content'}} messages, got int",
                 f"{bad}:5: prompt[0].content: must be a string", f"{bad}:6: each line must be a JSON object"):
        assert line in err, err
    assert f"{bad}:1:" not in err
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()
    # the same check in-process, before any model is loaded or trained
    with pytest.raises(DataError, match=r"bad\.jsonl:2: rejected: required key is missing"):
        run_dpo(cfg_for(tmp_path / "again", data={"train": str(bad)}))
    # pairs whose prompt alone fills max_length leave nothing to learn: said, not trained on silently
    from krllm.errors import KrllmError

    with pytest.raises(KrllmError, match="every train pair was dropped.*data.max_length=10"):
        run_dpo(cfg_for(tmp_path / "short", data={"max_length": 10}))


def test_run_layout_resume_and_adapter(tmp_path):
    """2 steps with a checkpoint each step, then --resume to 3: the same step-3 loss as an uninterrupted run;
    the adapter loads with PEFT and equals merged/."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from krllm.errors import KrllmError

    part = cfg_for(tmp_path, merge=True, train={"max_steps": 2, "save_steps": 1, "schedule": "constant"})
    with one_thread():
        s2 = run_dpo(part)
    run = Path(part.runs_dir) / "run"
    assert s2["steps"] == 2 and sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-1", "checkpoint-2"]
    assert {p.name for p in run.iterdir()} == {"config.yaml", "lineage.json", "metrics.jsonl", "checkpoints",
                                             "adapter", "merged", "summary.json"}
    assert load_config(run / "config.yaml", DPORunConfig) == part
    assert json.loads((run / "lineage.json").read_text())["inputs"]["data"]["path"] == part.data.train
    with pytest.raises(KrllmError, match="already holds a run"):
        run_dpo(part)

    more = part.model_copy(update={"train": part.train.model_copy(update={"max_steps": 3})})
    with one_thread():
        s3 = run_dpo(more, resume=True)
    assert s3["steps"] == 3 and s3["eval_loss_before"] is None
    resumed = train_losses(run)
    straight = cfg_for(tmp_path / "straight", train={"max_steps": 3, "save_steps": 1, "schedule": "constant"})
    with one_thread():
        run_dpo(straight)
    assert resumed == pytest.approx(train_losses(Path(straight.runs_dir) / "run"), rel=1e-5)
    assert sorted(resumed) == [1, 2, 3]

    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in (run / "adapter").iterdir()}
    with one_thread():
        base = AutoModelForCausalLM.from_pretrained(part.base_model)
        peft_model = PeftModel.from_pretrained(base, run / "adapter").eval()
        merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
        ids = torch.randint(4, 900, (2, 17), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits, peft_model(input_ids=ids).logits,
                                       rtol=1e-4, atol=1e-4)
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in peft_model.named_parameters())


def test_full_fine_tuning_against_a_frozen_copy(tmp_path):
    """full: hf/ loads in transformers and differs from the base; the reference is a separate frozen copy, so
    the rewards are 0 at step 1 (policy == reference) and not after (a reference that moved with the policy
    would keep them at 0). One batch holds every pair, so each step moves the same margins."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    cfg = cfg_for(tmp_path, peft={"method": "full"}, train={"max_steps": 3, "lr": 1e-3, "batch_size": 16})
    with one_thread():
        s = run_dpo(cfg)
    assert set(s["outputs"]) == {"hf"} and s["trainable_params"] == s["total_params"]
    logs = {r["step"]: r for r in read_metrics(Path(cfg.runs_dir) / "run") if r["split"] == "train" and "loss" in r}
    assert logs[1]["rewards/chosen"] == 0.0 and logs[1]["loss"] == pytest.approx(math.log(2))
    assert logs[3]["rewards/chosen"] != 0.0 and 0 < logs[2]["rewards/margins"] < logs[3]["rewards/margins"]
    assert logs[3]["loss"] < logs[2]["loss"] < logs[1]["loss"]  # every step sees the whole set
    AutoModelForCausalLM.from_pretrained(s["outputs"]["hf"])
    before = load_file(Path(cfg.base_model) / "model.safetensors")
    after = load_file(Path(s["outputs"]["hf"]) / "model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)


def test_dora_trains_a_magnitude(tmp_path):
    cfg = cfg_for(tmp_path, peft={"method": "dora"}, train={"max_steps": 1})
    with one_thread():
        s = run_dpo(cfg)
    adapter = json.loads((Path(s["outputs"]["adapter"]) / "adapter_config.json").read_text())
    assert adapter["use_dora"] is True and s["steps"] == 1


def test_config_checks_against_the_installed_trl():
    import dataclasses
    import re

    from trl import DPOConfig

    # our list is read from TRL's trainer source; TRL's DPOConfig help names the same losses
    help_text = next(f for f in dataclasses.fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert set(trl_loss_types()) == set(re.findall(r"`'(\w+)'`", help_text))
    assert "sigmoid" in trl_loss_types() and "ipo" in trl_loss_types()

    base = {"base_model": "x"}
    with pytest.raises(ConfigError) as e:
        validate({**base, "dpo": {"loss_type": ["sigmoid", "sigmoidd"]}, "train": {"batching": "packed"}},
                 DPORunConfig)
    msg = str(e.value)
    assert "dpo.loss_type: unknown loss type(s) 'sigmoidd'" in msg and "sigmoid_norm" in msg
    assert "train.batching" in msg
    with pytest.raises(ConfigError, match="loss_weights has 1 values for 2 loss types"):
        validate({**base, "dpo": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}}, DPORunConfig)
    with pytest.raises(ConfigError, match="exo_pair needs label_smoothing > 0"):
        validate({**base, "dpo": {"loss_type": "exo_pair"}}, DPORunConfig)
    with pytest.raises(ConfigError, match="dpo.beta"):
        validate({**base, "dpo": {"beta": 0}}, DPORunConfig)
    assert validate({**base, "dpo": {"loss_type": "ipo"}}, DPORunConfig).dpo.loss_type == ["ipo"]
    # learning rate an order below SFT, by method, unless given
    assert validate(base, DPORunConfig).train.lr == ADAPTER_LR
    assert validate({**base, "peft": {"method": "full"}}, DPORunConfig).train.lr == FULL_LR
    assert validate({**base, "peft": {"method": "full"}, "train": {"lr": 1e-4}}, DPORunConfig).train.lr == 1e-4
    # the shipped config, with overrides as on the command line
    cfg = load_config(REPO / "configs/dpo/math_lora.yaml", DPORunConfig,
                      ["dpo.loss_type=[sigmoid,sft]", "peft.method=dora"])
    assert cfg.name == "math_dpo" and cfg.base_model == "runs/math_full/hf"
    assert cfg.dpo.loss_type == ["sigmoid", "sft"] and cfg.peft.method == "dora"


def test_pipeline_stage_takes_its_base_from_sft(tmp_path):
    from krllm.pipeline.config import load_pipeline
    from krllm.pipeline.runner import Pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "p", "runs_dir": str(tmp_path), "stages": {
        "tokenizer": {}, "data": {"set": {"sources": "builtin:ko-law"}}, "pretrain": {"set": {"train": {"max_steps": 5}}},
        "sft": {}, "dpo": {"set": {"data": {"n": 400}, "train": {"batch_size": 4}}},
        "dpo_full": {"kind": "dpo", "set": {"peft": {"method": "full"}}, "inputs": {"base": "dpo"}}}},
        sort_keys=False), encoding="utf-8")
    by = {p.name: p for p in Pipeline(load_pipeline(path), config_path=path).plans}
    dpo, full = by["dpo"], by["dpo_full"]
    assert isinstance(dpo.cfg, DPORunConfig) and dpo.ctx.config["base_model"] == str(tmp_path / "p" / "sft" / "merged")
    assert full.ctx.config["base_model"] == str(tmp_path / "p" / "dpo" / "merged")
    assert dpo.kind.output_map(dpo.cfg) == {"adapter": "adapter", "model": "merged"}
    assert full.kind.output_map(full.cfg) == {"model": "hf"} and full.cfg.train.lr == FULL_LR
    assert dpo.kind.command.format(config="c.yaml") == "krllm dpo -c c.yaml"
    (tmp_path / "p" / "dpo").mkdir(parents=True)
    (tmp_path / "p" / "dpo" / "metrics.jsonl").write_text('{"split": "train", "step": 6}\n{"split": "train", "step": 7}\n')
    assert dpo.kind.progress(dpo.ctx, dpo.cfg) == (7, 95)  # 95% of 400 pairs held for training, 4 a step


@pytest.mark.slow
def test_two_cpu_processes(tmp_path):
    """torchrun --nproc_per_node 2 (DDP over gloo): each step consumes a batch on each process; rank 0 writes."""
    cfg = cfg_for(tmp_path, name="ddp", merge=True, train={"max_steps": -1, "epochs": 1, "batch_size": 2})
    out = torchrun_krllm("dpo", cfg, tmp_path)
    assert out.stdout.count("done:") == 1
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 16 // (2 * 2)
    assert not (run / "merged").exists() and (run / "adapter" / "adapter_model.safetensors").exists()
