"""Adapters move between PEFT and mlx-lm exactly: a PEFT adapter converted to mlx-lm gives, in mlx-lm, the
logits PEFT gives in transformers, and an adapter made by mlx-lm's own code converted to PEFT gives in PEFT
the logits mlx-lm gives (LoRA, DoRA, rsLoRA; krllm's Llama and a Qwen2 with biases). krllm's loader opens
mlx-lm adapter directories directly. Bad inputs are errors naming the file and key."""

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlx_helpers import (llama_base, mlx_adapter, mlx_logits, mlx_model, peft_adapter,  # noqa: E402
                         qwen2_base, torch_logits)

from krllm.errors import KrllmError, UsageError  # noqa: E402
from krllm.export.adapter import convert_adapter  # noqa: E402
from krllm.model.mlx import is_mlx_adapter_dir, read_mlx_config  # noqa: E402
from krllm.model.load import load  # noqa: E402

TOL = 1e-4  # fp32 on both sides; measured max |diff| is ~1e-6 (see the report in docs/mlx.md)


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bases")
    return {"llama": llama_base(tmp), "qwen2": qwen2_base(tmp)}


def _close(a: np.ndarray, b: np.ndarray, tol: float = TOL) -> float:
    diff = float(np.abs(a - b).max())
    print(f"max |diff| {diff:.3g}")
    assert diff < tol, f"max |diff| {diff:.3g} >= {tol}"
    return diff


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_mlx_lm_base_logits_match_pytorch(bases, arch):
    """Same weights, same prompt: mlx-lm's model and ours (fp32) agree, biases and rope_theta included."""
    base = bases[arch]
    ours = load(base, dtype="fp32").model
    _close(mlx_logits(mlx_model(base)), torch_logits(ours))


@pytest.mark.parametrize("arch,dora,rslora,layers", [
    ("llama", False, False, None), ("llama", True, False, [1]), ("qwen2", False, True, [1, 2]),
    ("qwen2", True, False, None)], ids=["llama-lora", "llama-dora-top1", "qwen2-rslora-top2", "qwen2-dora"])
def test_peft_adapter_converted_to_mlx_gives_peft_logits(bases, tmp_path, arch, dora, rslora, layers):
    base = bases[arch]
    peft_model, adapter = peft_adapter(base, tmp_path / "peft", dora=dora, rslora=rslora, layers=layers)
    want = torch_logits(peft_model)
    assert np.abs(want - torch_logits(load(base, dtype="fp32").model)).max() > 1e-2  # the adapter matters
    out = convert_adapter(adapter, "mlx", tmp_path / "mlx")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == ("dora" if dora else "lora")
    assert cfg["num_layers"] == (3 if arch == "qwen2" else 2) - (min(layers) if layers else 0)
    assert is_mlx_adapter_dir(out)
    _close(mlx_logits(mlx_model(base, out)), want)


@pytest.mark.parametrize("arch,kind,num_layers,keys", [
    ("llama", "lora", 1, None), ("llama", "dora", 2, ["self_attn.q_proj", "mlp.down_proj"]),
    ("qwen2", "lora", 2, ["self_attn.k_proj", "self_attn.v_proj", "mlp.up_proj"]), ("qwen2", "dora", -1, None)])
def test_mlx_adapter_converted_to_peft_gives_mlx_logits(bases, tmp_path, arch, kind, num_layers, keys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = bases[arch]
    model, adapter = mlx_adapter(base, tmp_path / "mlx", kind, num_layers, keys)
    want = mlx_logits(model)
    out = convert_adapter(adapter, "peft", tmp_path / "peft")
    hf = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(hf, str(out)).eval()
    _close(torch_logits(peft_model), want)
    # krllm's loader takes the mlx-lm directory as it is (merged in memory; fp32)
    _close(torch_logits(load(adapter, dtype="fp32").model), want)


def test_round_trip_is_exact(bases, tmp_path):
    from safetensors.torch import load_file

    _, adapter = peft_adapter(bases["qwen2"], tmp_path / "peft", dora=True, layers=[1, 2])
    back = convert_adapter(convert_adapter(adapter, "mlx", tmp_path / "mlx"), "peft", tmp_path / "back")
    a, b = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(back / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = json.loads((back / "adapter_config.json").read_text())
    assert cfg["r"] == 4 and cfg["lora_alpha"] == 12 and cfg["use_dora"] and cfg["layers_to_transform"] == [1, 2]


def test_missing_adapter_config_is_named(bases, tmp_path):
    _, adapter = mlx_adapter(bases["llama"], tmp_path / "mlx")
    (adapter / "adapter_config.json").unlink()
    with pytest.raises(KrllmError, match=r"adapter_config\.json not found.*adapters\.safetensors is there"):
        convert_adapter(adapter, "peft", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_fine_tune_type_is_named(bases, tmp_path):
    _, adapter = mlx_adapter(bases["llama"], tmp_path / "mlx")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"fine_tune_type": "qlora"}))
    with pytest.raises(KrllmError, match=r"adapter_config\.json: fine_tune_type 'qlora' is unknown"):
        read_mlx_config(adapter)
    with pytest.raises(KrllmError, match="fine_tune_type 'qlora'"):
        load(adapter)


def test_alpha_instead_of_scale_is_named(bases, tmp_path):
    _, adapter = mlx_adapter(bases["llama"], tmp_path / "mlx")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["lora_parameters"] = {"rank": 4, "alpha": 10, "dropout": 0.0}
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(KrllmError, match=r"lora_parameters\.scale .*not alpha"):
        convert_adapter(adapter, "peft", tmp_path / "out")


def test_adapter_for_a_different_base_is_an_error(bases, tmp_path):
    """An mlx-lm adapter trained on the Llama, pointed at the Qwen2 (other widths): the loader refuses it,
    naming the adapter file and module, as mlx-lm's own load_adapters refuses it."""
    from mlx_lm.tuner.utils import load_adapters

    _, adapter = mlx_adapter(bases["llama"], tmp_path / "mlx", num_layers=2)
    with pytest.raises(KrllmError, match=r"mlx: adapter for 'model\.layers\.\d\.\S+' gives shape"):
        load(adapter, base=bases["qwen2"])
    with pytest.raises(ValueError, match="incompatible"):
        load_adapters(mlx_model(bases["qwen2"]), str(adapter))


def test_peft_rank_pattern_cannot_become_mlx(bases, tmp_path):
    _, adapter = peft_adapter(bases["llama"], tmp_path / "peft")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps(cfg | {"rank_pattern": {"q_proj": 8}}))
    with pytest.raises(KrllmError, match=r"adapter_config\.json: rank_pattern"):
        convert_adapter(adapter, "mlx", tmp_path / "out")


def test_wrong_direction_is_a_usage_error(bases, tmp_path):
    _, adapter = peft_adapter(bases["llama"], tmp_path / "peft")
    with pytest.raises(UsageError, match="already a PEFT adapter"):
        convert_adapter(adapter, "peft", tmp_path / "out")
    shutil.copytree(adapter, tmp_path / "copy")
    with pytest.raises(UsageError, match="--to 'gguf'"):
        convert_adapter(tmp_path / "copy", "gguf", tmp_path / "out")


def test_cli_convert_and_its_error_exit(bases, tmp_path, capsys):
    from krllm.cli import main

    _, adapter = peft_adapter(bases["llama"], tmp_path / "peft", layers=[1])
    with pytest.raises(SystemExit) as e:
        main(["adapter", "convert", str(adapter), "--to", "mlx", "--out", str(tmp_path / "mlx")])
    assert e.value.code == 0 and "converted" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert cfg["num_layers"] == 1 and cfg["lora_parameters"]["rank"] == 4 and cfg["lora_parameters"]["scale"] == 3.0
    assert cfg["lora_parameters"]["keys"] == ["mlp.down_proj", "self_attn.o_proj", "self_attn.q_proj",
                                              "self_attn.v_proj"]
    with pytest.raises(SystemExit) as e:
        main(["adapter", "convert", str(tmp_path / "nowhere"), "--to", "peft", "--out", str(tmp_path / "x")])
    assert e.value.code == 2 and "nowhere is not a directory" in capsys.readouterr().err
