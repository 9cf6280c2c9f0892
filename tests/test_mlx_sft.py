"""`krllm sft --backend mlx`: mlx-lm trains the same config; its loss falls; the adapter it writes, converted
to PEFT, gives in transformers + PEFT the logits mlx-lm gives; the run directory is krllm's (metrics,
summary, samples, adapter/ + merged/); the guide's log lines are printed; unsupported keys are errors."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlx_helpers import mlx_logits, mlx_model, torch_logits  # noqa: E402
from sft_tiny import one_thread, tiny_base  # noqa: E402

from krllm.config import validate  # noqa: E402
from krllm.errors import UsageError  # noqa: E402
from krllm.train.mlx_sft import check_supported, resolve_backend  # noqa: E402
from krllm.tracking import read_metrics  # noqa: E402
from krllm.train.sft import run_sft  # noqa: E402
from krllm.train.sft_config import SFTRunConfig  # noqa: E402

TOL = 1e-4


def cfg_for(tmp_path, **sections) -> SFTRunConfig:
    _, model_dir = tiny_base()
    data = {"name": "m", "runs_dir": str(tmp_path / "runs"), "base_model": str(model_dir), "backend": "mlx",
            "merge": True, "data": {"train": "builtin:npc", "n": 48, "eval_fraction": 0.2, "max_length": 320},
            "peft": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 24, "batch_size": 4, "lr": 1e-2, "warmup": 2, "logging_steps": 4,
                      "eval_steps": 12, "save_steps": 12, "device": "cpu"},
            "samples": {"n": 1, "max_new_tokens": 8}, "tracking": {"tensorboard": True},
            "mlx": {"val_batches": 2}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return validate(data, SFTRunConfig)


def _prompt_ids(tok_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    return tok.apply_chat_template([{"role": "user", "content": "검 얼마예요?"}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "dora"])
def test_mlx_sft_loss_falls_and_its_adapter_matches_in_peft(tmp_path, capsys, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = cfg_for(tmp_path, peft={"method": method})
    with one_thread():
        s = run_sft(cfg)
    log = capsys.readouterr().out
    run = tmp_path / "runs" / "m"
    # the guide's log lines
    assert "Iter 4: Train loss" in log and "Learning Rate" in log and "Tokens/sec" in log and "Peak mem" in log
    assert "Iter 1: Val loss" in log and "Iter 12: Val loss" in log and "Iter 24: Val loss" in log
    # the loss falls (train and validation)
    train = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if r["split"] == "train"]
    val = [r for r in read_metrics(run / "metrics.jsonl") if r["split"] == "eval"]
    print(f"{method}: train loss {train[0]:.3f} -> {train[-1]:.3f}, val {val[0]['loss']:.3f} -> {val[-1]['loss']:.3f}")
    assert train[-1] < 0.9 * train[0] and val[-1]["loss"] < val[0]["loss"] and val[0]["step"] == 0 and val[-1]["step"] == 24
    # krllm's run layout, so the report card and the pipeline read it like a PyTorch run
    assert s["backend"] == "mlx" and s["steps"] == 24 and s["eval_loss"] == pytest.approx(val[-1]["loss"])
    assert s["eval_loss_before"] == pytest.approx(val[0]["loss"])
    assert json.loads((run / "summary.json").read_text())["outputs"] == s["outputs"]
    for name in ("config.yaml", "lineage.json", "samples.md", "samples.jsonl", "tb", "merged/config.json",
                 "adapter/adapter_model.safetensors", "adapter_mlx/adapters.safetensors",
                 "adapter_mlx/0000012_adapters.safetensors", "adapter_mlx/tokenizer.json"):
        assert (run / name).exists(), name
    # the adapter mlx-lm trained, converted to PEFT: transformers + PEFT give mlx-lm's logits
    base = cfg.base_model
    ids = _prompt_ids(base)
    want = mlx_logits(mlx_model(base, run / "adapter_mlx"), ids)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                           str(run / "adapter")).eval()
    got = torch_logits(peft_model, ids)
    diff = float(np.abs(got - want).max())
    print(f"{method}: PEFT vs mlx-lm logits max |diff| {diff:.3g}")
    assert diff < TOL
    merged = AutoModelForCausalLM.from_pretrained(str(run / "merged"), dtype=torch.float32).eval()
    assert float(np.abs(torch_logits(merged, ids) - want).max()) < TOL


@pytest.mark.slow
def test_mlx_full_fine_tune_of_the_top_block_writes_hf(tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = cfg_for(tmp_path, peft={"method": "full", "num_layers": 1},
                  train={"max_steps": 6, "lr": 1e-3, "eval_steps": 100}, samples={"n": 0})
    with one_thread():
        s = run_sft(cfg)
    run = tmp_path / "runs" / "m"
    assert set(s["outputs"]) == {"adapter_mlx", "hf"}
    ids = _prompt_ids(cfg.base_model)
    want = mlx_logits(mlx_model(cfg.base_model, run / "adapter_mlx"), ids)
    hf = AutoModelForCausalLM.from_pretrained(str(run / "hf"), dtype=torch.float32).eval()
    assert float(np.abs(torch_logits(hf, ids) - want).max()) < TOL
    base = AutoModelForCausalLM.from_pretrained(cfg.base_model, dtype=torch.float32)
    changed = {n for n, p in hf.named_parameters() if not torch.equal(p, base.get_parameter(n))}
    assert changed and all(".layers.1." in n for n in changed)  # the top block only


def test_backend_auto_is_torch_off_apple_silicon():
    import platform

    if platform.system() == "Darwin" and platform.machine() == "arm64":
        pytest.skip("Apple Silicon: auto picks mlx")
    assert resolve_backend("auto") == "torch" and resolve_backend("mlx") == "mlx"


def test_what_mlx_cannot_do_is_said_before_loading(tmp_path):
    cfg = cfg_for(tmp_path, peft={"method": "qlora", "modules_to_save": ["lm_head"]}, train={"device": "cuda"})
    with pytest.raises(UsageError) as e:
        check_supported(cfg)
    msg = str(e.value)
    assert "peft.method=qlora" in msg and "peft.modules_to_save" in msg and "train.device=cuda" in msg


def test_unknown_target_module_is_named(tmp_path):
    with pytest.raises(UsageError, match=r"peft.target_modules: \['qkv'\]"):
        run_sft(cfg_for(tmp_path, peft={"target_modules": ["q_proj", "qkv"]}))


@pytest.mark.slow
def test_resume_starts_from_the_saved_adapter(tmp_path, capsys):
    """--resume (mlx-lm's --resume-adapter-file on the run's own adapters.safetensors): the continued run's
    first validation is the first run's final one, and grad_accum counts optimizer steps."""
    cfg = cfg_for(tmp_path, train={"max_steps": 6, "eval_steps": 100, "logging_steps": 3}, samples={"n": 0},
                  merge=False)
    with one_thread():
        first = run_sft(cfg)
        capsys.readouterr()
        again = run_sft(cfg_for(tmp_path, train={"max_steps": 2, "grad_accum": 2, "eval_steps": 100,
                                                 "logging_steps": 1}, samples={"n": 0}, merge=False), resume=True)
    log = capsys.readouterr().out
    assert again["eval_loss_before"] == pytest.approx(first["eval_loss"], abs=1e-5)
    assert again["steps"] == 2 and "Iter 4: Train loss" in log  # 2 steps x 2 micro-batches
    steps = [r["step"] for r in read_metrics(tmp_path / "runs" / "m" / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [3, 6, 7, 8]  # the resumed run continues the step axis
    with pytest.raises(Exception, match="already holds a run"):
        run_sft(cfg)


def test_cli_backend_flag_reaches_the_config(tmp_path, capsys):
    import yaml

    from krllm.cli import main

    cfg = cfg_for(tmp_path, backend="torch", peft={"method": "qlora"})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True), encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["sft", "-c", str(path), "--backend", "mlx"])
    assert e.value.code == 2 and "backend: mlx cannot run this config" in capsys.readouterr().err
