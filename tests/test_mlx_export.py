"""`krllm export mlx`: what mlx-lm loads from the export computes what krllm's PyTorch model computes (fp32,
both families, adapters folded in), rope_theta survives a transformers-5 config, and a 4-bit export stays
close to the fp32 model and generates with mlx_lm.generate."""

import json

import numpy as np
import pytest

pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

from mlx_helpers import (PROMPT, llama_base, mlx_adapter, mlx_logits, mlx_model, peft_adapter,  # noqa: E402
                         qwen2_base, torch_logits)

from krllm.errors import UsageError  # noqa: E402
from krllm.export.mlx import export_mlx  # noqa: E402
from krllm.model.load import load  # noqa: E402


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bases")
    return {"llama": llama_base(tmp), "qwen2": qwen2_base(tmp)}


def _maxdiff(a, b) -> float:
    d = float(np.abs(a - b).max())
    print(f"max |diff| {d:.3g}")
    return d


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_export_logits_match_pytorch(bases, tmp_path, arch):
    out = export_mlx(bases[arch], tmp_path / "mlx")
    assert _maxdiff(mlx_logits(mlx_model(out)), torch_logits(load(bases[arch], dtype="fp32").model)) < 1e-4
    assert {"config.json", "model.safetensors", "tokenizer.json", "krllm_export.json"} <= {
        p.name for p in out.iterdir()}


def test_export_mlx_command(bases, tmp_path, capsys):
    """`krllm export mlx DIR --out D --q-bits 8`: the CLI reaches export_mlx with its options."""
    from krllm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["export", "mlx", str(bases["llama"]), "--out", str(tmp_path / "m"), "--q-bits", "8",
              "--q-group-size", "32"])
    assert e.value.code == 0 and "mlx_lm.generate --model" in capsys.readouterr().out
    q = json.loads((tmp_path / "m" / "config.json").read_text())["quantization"]
    assert q["bits"] == 8 and q["group_size"] == 32
    with pytest.raises(SystemExit) as e:
        main(["export", "mlx", str(bases["llama"]), "--out", str(tmp_path / "m2"), "--q-bits", "7"])
    assert e.value.code == 2 and not (tmp_path / "m2").exists()


def test_rope_theta_from_a_transformers5_config_reaches_mlx(bases, tmp_path):
    """A config.json with rope_theta only inside rope_parameters (as transformers 5 writes it): mlx-lm alone
    would use its default base; the export writes the top-level key and the logits match."""
    import shutil

    src = tmp_path / "t5"
    shutil.copytree(bases["qwen2"], src)
    cfg = json.loads((src / "config.json").read_text())
    assert cfg["rope_parameters"]["rope_theta"] == 2e5
    del cfg["rope_theta"]
    (src / "config.json").write_text(json.dumps(cfg))
    want = torch_logits(load(src, dtype="fp32").model)
    assert _maxdiff(mlx_logits(mlx_model(src)), want) > 1e-3  # mlx-lm alone: wrong base, other logits
    out = export_mlx(src, tmp_path / "mlx")
    assert json.loads((out / "config.json").read_text())["rope_theta"] == 2e5
    assert json.loads((out / "krllm_export.json").read_text())["rope_keys_added"] == ["rope_theta"]
    assert _maxdiff(mlx_logits(mlx_model(out)), want) < 1e-4


@pytest.mark.parametrize("kind", ["peft-dora", "mlx-lora"])
def test_export_of_an_adapter_folds_it_in(bases, tmp_path, kind):
    base = bases["qwen2"]
    if kind == "peft-dora":
        live, adapter = peft_adapter(base, tmp_path / "a", dora=True, layers=[2])
        want = torch_logits(live)
    else:
        live, adapter = mlx_adapter(base, tmp_path / "a", "lora", num_layers=2)
        want = mlx_logits(live)
    out = export_mlx(adapter, tmp_path / "mlx")
    assert _maxdiff(mlx_logits(mlx_model(out)), want) < 1e-4


@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_export_computes_its_dequantized_weights_and_generates(bases, tmp_path, bits):
    """The 4-/8-bit export in mlx-lm gives the logits our PyTorch model gives with the export's dequantized
    weights (so config, RoPE and tied head are right), stays near the fp32 model, and mlx_lm.generate
    answers the NPC prompt through the chat template."""
    import copy

    import mlx.core as mx
    import torch
    from mlx.utils import tree_flatten
    from mlx_lm import generate
    from mlx_lm.utils import dequantize_model, load as mlx_load

    base = bases["llama"]
    out = export_mlx(base, tmp_path / "q", q_bits=bits, q_group_size=32)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization"] == {"group_size": 32, "bits": bits, "mode": "affine"}
    assert cfg["rope_theta"] == 5e5
    model, tok = mlx_load(str(out))
    assert "scales" in model.model.layers[0].self_attn.q_proj  # really quantized
    q = mlx_logits(model)
    ours = load(base, dtype="fp32").model
    f = torch_logits(ours)
    deq = copy.deepcopy(ours)
    weights = {k: torch.from_numpy(np.array(v.astype(mx.float32)))
               for k, v in tree_flatten(dequantize_model(mlx_load(str(out))[0]).parameters())}
    deq.load_state_dict(weights, strict=False)
    deq.tie_weights()
    assert _maxdiff(q, torch_logits(deq)) < 1e-4
    cos = (q * f).sum(-1) / (np.linalg.norm(q, axis=-1) * np.linalg.norm(f, axis=-1))
    print(f"{bits}-bit vs fp32 (random tiny model): min cosine {cos.min():.4f}, "
          f"argmax agreement {(q.argmax(-1) == f.argmax(-1)).mean():.2f}")
    assert cos.min() > (0.99 if bits == 8 else 0.5)
    prompt = tok.apply_chat_template([{"role": "user", "content": "대장장이님, 검은 얼마예요?"}],
                                     add_generation_prompt=True, tokenize=False)
    text = generate(model, tok, prompt=prompt, max_tokens=8, verbose=False)
    assert isinstance(text, str) and text


def test_bad_quantization_is_a_usage_error(bases, tmp_path):
    with pytest.raises(UsageError, match="--q-bits 7"):
        export_mlx(bases["llama"], tmp_path / "x", q_bits=7)
    with pytest.raises(UsageError, match="--q-group-size 48"):
        export_mlx(bases["llama"], tmp_path / "x", q_bits=4, q_group_size=48)
    assert not (tmp_path / "x").exists()


def test_prompt_is_in_vocab(bases):
    assert max(PROMPT) < json.loads((bases["llama"] / "config.json").read_text())["vocab_size"]
