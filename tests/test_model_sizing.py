"""Sizing: analytic counts == our model == transformers (meta device); activation formula == autograd."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from krllm.cli import main
from krllm.model.config import PRESETS, model_config_from
from krllm.model.llama import Llama
from krllm.model.sizing import activation_bytes_per_token, count_parameters, estimate_memory


def hf_count(cfg) -> int:
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    with torch.device("meta"):
        hf = LlamaForCausalLM(LlamaConfig(**d))
    return hf.num_parameters()


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("tie", [True, False])
def test_counts_equal_our_model_and_transformers(name, tie):
    cfg = model_config_from(name, [f"tie_word_embeddings={tie}"], vocab_size=8000)
    counts = count_parameters(cfg)
    with torch.device("meta"):
        model = Llama(cfg)
    assert model.num_parameters() == counts.total == hf_count(cfg)
    assert model.num_parameters(exclude_embeddings=True) == counts.non_embedding
    assert counts.total_untied - counts.total_tied == 8000 * cfg.hidden_size
    sd = model.state_dict()
    assert sum(sd[k].numel() for k in sd if ".layers.0." in k) == counts.per_layer
    assert sum(sd[k].numel() for k in sd if ".layers.0.self_attn." in k) == counts.attention


def test_tiny_is_about_5m():
    assert count_parameters(model_config_from("tiny", vocab_size=8000)).total == 4_950_272


def saved_activation_bytes(model, B, T):
    """Bytes autograd keeps for backward during one training forward (unique storages, params excluded)."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, model.config.vocab_size, (B, T))
    targets = torch.randint(0, model.config.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, targets)
    return sum(seen.values())


@pytest.mark.parametrize("dtype,torch_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_activation_formula_matches_autograd(dtype, torch_dtype):
    for layers in (1, 3):
        cfg = model_config_from("tiny", [f"num_hidden_layers={layers}", "vocab_size=1000", "hidden_size=128",
                                         "intermediate_size=352"])
        model = Llama(cfg).to(torch_dtype)
        got = saved_activation_bytes(model, 2, 48)
        est = estimate_memory(cfg, 2, 48, dtype).activations
        assert est == pytest.approx(got, rel=0.01), (layers, got, est)
    per_layer, _ = activation_bytes_per_token(cfg, dtype)
    assert per_layer > 0


def test_memory_parts():
    cfg = model_config_from("small", vocab_size=16000)
    m = estimate_memory(cfg, batch_size=4, seq_len=512, dtype="bf16")
    p = count_parameters(cfg).total
    assert m.weights == 2 * p and m.grads == 2 * p and m.optimizer == 4 * p
    assert m.kv_cache == 2 * 12 * 4 * 512 * 3 * 64 * 2  # k and v, L, B, T, H_kv, D, bytes
    assert m.training == m.weights + m.grads + m.optimizer + m.activations + m.logits_peak
    assert estimate_memory(cfg, 8, 512, "bf16").activations == 2 * m.activations


def test_cli_info_json_equals_model(capsys):
    with pytest.raises(SystemExit) as e:
        main(["model", "info", "configs/model/small.yaml", "--vocab-size", "16000", "--batch-size", "2",
              "--seq-len", "128", "--dtype", "bf16", "--json", "--set", "num_hidden_layers=6"])
    assert e.value.code == 0
    rep = json.loads(capsys.readouterr().out)
    cfg = model_config_from("small", ["num_hidden_layers=6"], vocab_size=16000)
    assert rep["parameters"]["total"] == rep["parameters"]["instantiated"] == count_parameters(cfg).total
    assert rep["memory"]["training"]["total"] == estimate_memory(cfg, 2, 128, "bf16").training


def test_cli_info_table_and_hf_dir(tmp_path, capsys):
    from krllm.model.hf import save_hf

    cfg = model_config_from("tiny", ["num_hidden_layers=1"], vocab_size=500)
    save_hf(Llama(cfg), tmp_path / "hf")
    with pytest.raises(SystemExit):
        main(["model", "info", str(tmp_path / "hf"), "--seq-len", "64"])
    out = capsys.readouterr().out
    assert f"{count_parameters(cfg).total:,}" in out and "KV cache" in out


def test_cli_bad_config_names_key(tmp_path, capsys):
    y = tmp_path / "m.yaml"
    y.write_text("preset: tiny\nnum_key_value_heads: 3\n")
    with pytest.raises(SystemExit) as e:
        main(["model", "info", str(y)])
    assert e.value.code == 2
    assert "num_key_value_heads: num_attention_heads=8 is not divisible by num_key_value_heads=3" in capsys.readouterr().err
