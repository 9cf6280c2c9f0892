"""End to end `krllm sft` on a tiny random Llama: the NPC loss drops far below the base model's and the
tuned model ends its turn; adapters load in PEFT and merge exactly; DoRA, full, num_layers, target
modules; resume reproduces an uninterrupted run; early stopping keeps the best; clear errors."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from sft_tiny import one_thread, tiny_base, torchrun_krllm, write_jsonl

from krllm.config import ConfigError, load_config, validate
from krllm.errors import DataError, KrllmError
from krllm.tracking import read_metrics
from krllm.train.sft import run_sft
from krllm.train.sft_config import SFTRunConfig

REPO = Path(__file__).resolve().parents[1]


def cfg_for(tmp_path, **sections) -> SFTRunConfig:
    """A tiny, fast run: no validation, no samples, no merge unless asked."""
    _, model_dir = tiny_base()
    data = {"name": "run", "runs_dir": str(tmp_path / "runs"), "base_model": str(model_dir), "merge": False,
            "data": {"train": "builtin:npc", "n": 24, "eval_fraction": 0, "max_length": 320},
            "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 5e-3, "warmup": 0, "logging_steps": 1,
                      "save_steps": 100},
            "samples": {"n": 0}, "tracking": {"tensorboard": False}}
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return validate(data, SFTRunConfig)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
def test_lora_npc_loss_drops_well_below_base_and_model_stops(tmp_path):
    """The acceptance test of the issue, plus the run directory contract."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a 128-wide random base (2 layers): LoRA on the 64-wide one is capacity-bound on this varied set
    cfg = cfg_for(tmp_path, merge=True, base_model=str(tiny_base(hidden=128, init_std=0.1)[1]),
                  data={"n": 168, "eval_fraction": 0.1},
                  peft={"r": 16, "alpha": 32},
                  train={"max_steps": 100, "batch_size": 8, "lr": 1e-2, "eval_steps": 50, "save_steps": 50,
                         "logging_steps": 10},
                  samples={"n": 3, "max_new_tokens": 120}, tracking={"tensorboard": True})
    with one_thread():
        s = run_sft(cfg)
    run = Path(cfg.runs_dir) / "run"

    # the acceptance criteria: held-out loss far below the base model's (measured 7.53 -> 4.0) and below
    # a uniform guess over the vocabulary by 2 nats; the tuned model ends its turns
    assert s["eval_loss"] < 0.6 * s["eval_loss_before"], s
    assert s["eval_loss"] < math.log(1000) - 2, s
    assert s["samples_stopped_before"] == [False] * 3 and s["samples_stopped_after"] == [True] * 3, s
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert all(x["after"]["answer"].strip() and x["after"]["tokens"] < 120 for x in samples)
    assert "did not stop" in (run / "samples.md").read_text()  # the base model rambles

    # run directory contract
    assert {p.name for p in (run / "adapter").iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "generation_config.json"}
    assert not any(p.name.startswith(".") for p in run.iterdir())  # no staging leftovers
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-50"]
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json"} <= {
        p.name for p in (run / "checkpoints" / "checkpoint-50").iterdir()}
    assert load_config(run / "config.yaml", SFTRunConfig) == cfg
    lineage = json.loads((run / "lineage.json").read_text())
    assert len(lineage["inputs"]["base_model"]["sha256"]) == 64 and lineage["data"]["train"] == "builtin:npc"
    metrics = read_metrics(run)
    train = [m for m in metrics if m["split"] == "train" and "loss" in m]
    evals = [m for m in metrics if m["split"] == "eval"]
    assert [m["step"] for m in train] == [1] + list(range(10, 101, 10))
    assert all(m["tok_per_s"] > 0 and 0 <= m["pad_frac"] < 0.5 for m in train)
    assert [m["step"] for m in evals] == [0, 50, 100] and evals[0]["loss"] == pytest.approx(s["eval_loss_before"])
    assert list((run / "tb").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["batching"] == "length_grouped" and summary["outputs"]["merged"] == str(run / "merged")

    # PEFT loads the adapter; merged/ gives the same logits as base + adapter
    tok = AutoTokenizer.from_pretrained(run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model)
    peft_model = PeftModel.from_pretrained(base, run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    ids = torch.tensor([tok.apply_chat_template(samples[0]["prompt"], add_generation_prompt=True)["input_ids"]])
    with one_thread():
        torch.testing.assert_close(logits_of(merged, ids), logits_of(peft_model, ids), rtol=1e-4, atol=1e-4)
        with peft_model.disable_adapter():
            assert (logits_of(peft_model, ids) - logits_of(merged, ids)).abs().max() > 0.1
        # the merged model stops on <|im_end|> by itself (generation_config), like the samples said
        out = merged.generate(ids, max_new_tokens=120, do_sample=False)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert merged.generation_config.eos_token_id == [im_end, tok.eos_token_id]
    assert out[0, -1].item() == im_end and out.shape[1] - ids.shape[1] < 120


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    cfg_a = cfg_for(tmp_path, name="a", train={"max_steps": 6, "save_steps": 3, "save_total_limit": 5},
                    peft={"dropout": 0.1})
    with one_thread():
        run_sft(cfg_a)
    a = Path(cfg_a.runs_dir) / "a"
    # b: the same run "killed" after checkpoint-3, then resumed
    cfg_b = cfg_a.model_copy(update={"name": "b"})
    b = Path(cfg_b.runs_dir) / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(a / "checkpoints" / "checkpoint-3", b / "checkpoints" / "checkpoint-3")
    with pytest.raises(KrllmError, match="pass --resume"):
        run_sft(cfg_b)
    with one_thread():
        s = run_sft(cfg_b, resume=True)
    assert s["steps"] == 6
    wa = load_file(a / "adapter" / "adapter_model.safetensors")
    wb = load_file(b / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-6)
    w3 = load_file(a / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors")
    assert any((w3[k] - wa[k]).abs().max() > 1e-4 for k in wa)  # steps 4-6 really trained
    steps = [m["step"] for m in read_metrics(b) if m["split"] == "train" and "loss" in m]
    assert steps == [4, 5, 6]


def test_dora_trains_and_merges_exactly(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = cfg_for(tmp_path, merge=True, peft={"method": "dora"})
    with one_thread():
        s = run_sft(cfg)
    run = Path(s["outputs"]["adapter"]).parent
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["use_dora"] is True
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.base_model),
                                           run / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(run / "merged").eval()
    ids = torch.randint(4, 900, (2, 21), generator=torch.Generator().manual_seed(0))
    with one_thread():
        torch.testing.assert_close(logits_of(merged, ids), logits_of(peft_model, ids), rtol=1e-4, atol=1e-4)


def test_full_fine_tuning_of_the_top_layer_only(tmp_path):
    from safetensors.torch import load_file

    cfg = cfg_for(tmp_path, peft={"method": "full", "num_layers": 1}, merge=True)
    with one_thread():
        s = run_sft(cfg)
    assert set(s["outputs"]) == {"hf"} and s["trainable_params"] < s["total_params"]
    before = load_file(Path(cfg.base_model) / "model.safetensors")
    after = load_file(Path(s["outputs"]["hf"]) / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") or k == "model.norm.weight" for k in changed), changed
    assert any(k.startswith("model.layers.1.mlp") for k in changed)
    cfg_json = json.loads((Path(s["outputs"]["hf"]) / "config.json").read_text())
    assert cfg_json["rope_theta"] == cfg_json["rope_parameters"]["rope_theta"]


@pytest.mark.parametrize("peft_section,expected", [
    ({"num_layers": 1}, {"layers.1." + m for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                   "mlp.down_proj")}),
    ({"target_modules": ["q_proj", "v_proj"]}, {f"layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj",
                                                                                                      "v_proj")}),
])
def test_which_modules_get_adapters(tmp_path, peft_section, expected):
    from safetensors import safe_open

    with one_thread():
        s = run_sft(cfg_for(tmp_path, peft=peft_section, train={"max_steps": 1}))
    with safe_open(str(Path(s["outputs"]["adapter"]) / "adapter_model.safetensors"), "pt") as f:
        got = {k.split("model.layers.")[1].rsplit(".lora_", 1)[0] for k in f.keys()}
    assert {"layers." + g for g in got} == expected


def test_early_stopping_keeps_the_best_checkpoint(tmp_path):
    """Train answers 'A', validate on the same questions answered 'B': validation loss soon rises."""
    qs = [f"질문 {i}번: 답은?" for i in range(32)]
    train = write_jsonl(tmp_path / "train.jsonl", [{"instruction": q, "output": "가나다라 " * 3} for q in qs])
    val = write_jsonl(tmp_path / "val.jsonl", [{"instruction": q, "output": "마바사아 " * 3} for q in qs[:8]])
    cfg = cfg_for(tmp_path, data={"train": str(train), "eval": str(val)},
                  train={"max_steps": 60, "eval_steps": 2, "early_stopping_patience": 2, "lr": 1e-2,
                         "save_total_limit": 1})
    with one_thread():
        s = run_sft(cfg)
    evals = {m["step"]: m["loss"] for m in read_metrics(Path(cfg.runs_dir) / "run") if m["split"] == "eval"}
    assert s["stopped_early"] and s["steps"] < 60
    best_step = int(s["best_checkpoint"].rsplit("-", 1)[1])
    assert evals[best_step] == min(v for k, v in evals.items() if k > 0)
    assert s["eval_loss"] == pytest.approx(evals[best_step])  # the kept model is the best one
    assert max(evals) == best_step + 2 * 2  # stopped after `patience` evaluations without improvement


def test_qlora_without_cuda_says_what_to_do(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(KrllmError, match="needs a CUDA\\s+GPU.*Use peft.method=lora"):
        run_sft(cfg_for(tmp_path, peft={"method": "qlora"}))


def test_bad_data_fails_before_training_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                   '{"messages": [{"role": "human", "content": "hi"}]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: messages\[0\]\.role: unknown role 'human'"):
        run_sft(cfg_for(tmp_path, data={"train": str(bad)}))
    assert not (tmp_path / "runs" / "run" / "checkpoints").exists()


def test_config_errors_name_every_key():
    with pytest.raises(ConfigError) as e:
        validate({"base_model": "x", "peft": {"method": "lora4", "rank": 8}, "train": {"max_steps": 0}},
                 SFTRunConfig)
    msg = str(e.value)
    assert "peft.method" in msg and "peft.rank: unknown key" in msg
    with pytest.raises(ConfigError, match="early_stopping_patience needs a validation set"):
        validate({"base_model": "x", "data": {"eval_fraction": 0}, "train": {"early_stopping_patience": 2}},
                 SFTRunConfig)
    with pytest.raises(ConfigError, match="base_model: required key is missing"):
        validate({}, SFTRunConfig)


def test_shipped_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    from krllm.train.classify import ClassifyRunConfig

    sft = sorted((REPO / "configs" / "sft").glob("*.yaml"))
    assert {p.stem for p in sft} >= {"npc_lora", "math_full"}
    for path in sft:
        cfg = load_config(path, SFTRunConfig)
        assert cfg.name == path.stem
    assert load_config(REPO / "configs/sft/npc_lora.yaml", SFTRunConfig, ["peft.method=dora"]).peft.method == "dora"
    for path in (REPO / "configs" / "classify").glob("*.yaml"):
        assert load_config(path, ClassifyRunConfig).name == path.stem
    for path in (REPO / "configs" / "accelerate").glob("*.yaml"):
        assert load_config_from_file(str(path)).num_processes >= 2
        assert yaml.safe_load(path.read_text())["distributed_type"] in ("FSDP", "DEEPSPEED", "MULTI_CPU")


def test_cli_runs_a_config_with_overrides(tmp_path, capsys):
    from krllm.cli import main

    cfg = cfg_for(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True))
    with one_thread(), pytest.raises(SystemExit) as e:
        main(["sft", "-c", str(path), "--set", "train.max_steps=2", "--set", "name=cli"])
    assert e.value.code == 0
    assert "done: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "runs" / "cli" / "adapter" / "adapter_model.safetensors").exists()
    with pytest.raises(SystemExit) as e:  # same run again without --resume/--overwrite
        main(["sft", "-c", str(path), "--set", "name=cli"])
    assert e.value.code == 1 and "already holds a run" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_split_the_data(tmp_path):
    """torchrun --nproc_per_node 2 (DDP over gloo): half the steps per epoch, one set of outputs from rank 0."""

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = cfg_for(tmp_path, name="ddp", merge=True, data={"n": 44, "eval_fraction": 0.1},
                  train={"max_steps": -1, "epochs": 1, "batch_size": 4, "eval_steps": 100})
    out = torchrun_krllm("sft", cfg, tmp_path)
    assert out.stdout.count("done:") == 1  # rank 0 reports
    run = tmp_path / "runs" / "ddp"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["data"]["examples"] == 39
    assert summary["steps"] == math.ceil(39 / (4 * 2))  # each step consumed 4 examples on each process
    assert not (run / "merged").exists() and "krllm merge" in out.stdout  # merged only in single-process runs
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(cfg.base_model), run / "adapter")
    assert any("lora_B" in n and p.abs().max() > 0 for n, p in peft_model.named_parameters())


def test_train_eval_split():
    from krllm.train.hf.data import split_records

    base = {"base_model": "x", "data": {"train": "builtin:npc", "n": 40, "eval_fraction": 0.1, "seed": 3}}
    train, held = split_records(validate(base, SFTRunConfig).data, "sft")
    assert len(train) == 36 and len(held) == 4
    assert not {str(r) for r in train} & {str(r) for r in held}
    assert split_records(validate(base, SFTRunConfig).data, "sft") == (train, held)  # seeded
    # a built-in eval set is generated fresh (seed + 1), sized like the hold-out
    cfg = validate({**base, "data": {**base["data"], "eval": "builtin:npc"}}, SFTRunConfig)
    train2, fresh = split_records(cfg.data, "sft")
    assert len(train2) == 40 and len(fresh) == 4 and fresh[0] not in train2


def test_nan_weights_stop_the_run_before_they_are_saved(tmp_path, monkeypatch):
    """A NaN at step 3 (after checkpoint-2): the run stops at step 3 with advice that fits it, writes no
    adapter or merged model, and checkpoint-2 stays finite and is named as the one to resume from."""
    from safetensors.torch import load_file

    monkeypatch.setenv("KRLLM_FAULT_NAN_AT_STEP", "3")
    cfg = cfg_for(tmp_path, merge=True, train={"max_steps": 5, "save_steps": 2, "max_grad_norm": 0, "dtype": "fp32"})
    with one_thread(), pytest.raises(KrllmError) as e:
        run_sft(cfg)
    run = tmp_path / "runs" / "run"
    msg = str(e.value)
    assert "diverged at step 3" in msg and "checkpoint-2" in msg and "--resume" in msg
    assert "train.lr (now 0.005)" in msg and "train.max_grad_norm=1.0" in msg and "train.dtype" not in msg
    assert not (run / "adapter").exists() and not (run / "merged").exists()
    assert not (run / "checkpoints" / "checkpoint-3").exists()
    weights = load_file(run / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_diverging_learning_rate_is_caught_on_the_first_bad_step(tmp_path):
    """No fault hook: lr=1e30 overflows the LoRA weights at once; nothing is saved."""
    cfg = cfg_for(tmp_path, train={"max_steps": 3, "lr": 1e30, "max_grad_norm": 0, "dtype": "bf16"})
    with one_thread(), pytest.raises(KrllmError, match=r"diverged at step 1.*no checkpoint was saved yet.*"
                                                       r"lower train.lr \(now 1e\+30\).*train.dtype=fp32 \(now bf16\)"):
        run_sft(cfg)
    assert not (tmp_path / "runs" / "run" / "adapter").exists()
