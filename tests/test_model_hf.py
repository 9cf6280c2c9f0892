"""HF directories both ways: ours -> AutoModelForCausalLM, HF save_pretrained -> load_hf; strict loading."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig, LlamaForCausalLM

from krllm.errors import KrllmError
from krllm.model.config import model_config_from
from krllm.model.hf import config_from_hf_dir, load_hf, save_hf
from krllm.model.llama import Llama

VOCAB = 300


def cfg(**over):
    base = dict(preset="tiny", vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rope_theta=25000.0)
    base.update(over)
    return model_config_from(base)


def make_tokenizer_dir(path, extra_tokens=0):
    """A tiny real tokenizer (HF tokenizers) with krllm's special ids 0..3."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for i in range(40 + extra_tokens):
        vocab[f"w{i}"] = len(vocab)
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    path.mkdir(parents=True, exist_ok=True)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>"}))
    (path / "notes.txt").write_text("not a tokenizer file")
    return path


@pytest.mark.parametrize("tie", [True, False])
def test_ours_loads_in_transformers_with_same_logits(tmp_path, tie):
    model = Llama(cfg(tie_word_embeddings=tie)).eval()
    out = save_hf(model, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.rope_parameters["rope_theta"] == 25000.0
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    ids = torch.randint(0, VOCAB, (2, 23))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_transformers_save_pretrained_loads_into_ours(tmp_path, tie):
    torch.manual_seed(3)
    hc = LlamaConfig(vocab_size=VOCAB, hidden_size=96, intermediate_size=200, num_hidden_layers=2,
                     num_attention_heads=6, num_key_value_heads=2, rope_parameters={"rope_type": "default",
                     "rope_theta": 77777.0}, tie_word_embeddings=tie, rms_norm_eps=1e-6)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    assert model.config.rope_theta == 77777.0 and model.config.num_key_value_heads == 2
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    assert all(p.requires_grad for p in model.parameters())
    ids = torch.randint(0, VOCAB, (2, 19))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_saved_directory_file_set_and_contents(tmp_path):
    tok = make_tokenizer_dir(tmp_path / "tok")
    model = Llama(cfg(tie_word_embeddings=True))
    out = save_hf(model, tmp_path / "hf", tokenizer_dir=tok, dtype="bf16")
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    assert config["rope_theta"] == 25000.0  # top level, for mlx-lm
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 25000.0}
    assert config["dtype"] == "bfloat16"
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied: stored once, as transformers does
    assert len(tensors) == 1 + 2 * 9 + 1 and all(t.dtype == torch.bfloat16 for t in tensors.values())
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == [3, 0]  # chat_tokens.stop_ids: the tokenizer's <|im_end|>, then <|endoftext|>
    assert (gen.bos_token_id, gen.pad_token_id) == (0, 1)
    loaded = load_hf(out, dtype="float32")
    ids = torch.randint(0, VOCAB, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model.to(torch.bfloat16).float()(ids)[0])


def test_save_is_atomic_and_keeps_old_dir_on_failure(tmp_path):
    model = Llama(cfg())
    out = save_hf(model, tmp_path / "hf")
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(KrllmError, match="unknown dtype"):
        save_hf(Llama(cfg()), out, dtype="int3")
    assert (out / "model.safetensors").read_bytes() == before


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    out = save_hf(Llama(cfg(tie_word_embeddings=False)), tmp_path / "hf")
    tensors = load_file(out / "model.safetensors")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    tensors["model.layers.1.mlp.extra.weight"] = torch.zeros(2)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(KrllmError) as e:
        load_hf(out)
    msg = str(e.value)
    assert "missing (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected (1): model.layers.1.mlp.extra.weight" in msg


def test_wrong_shape_is_reported(tmp_path):
    out = save_hf(Llama(cfg()), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    config["intermediate_size"] = 128
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(KrllmError, match=r"wrong shape: model.layers.0.mlp.down_proj.weight: file \(64, 160\)"):
        load_hf(out)


def test_non_llama_and_unsupported_features_rejected(tmp_path):
    out = save_hf(Llama(cfg()), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(KrllmError, match="model_type: 'gpt2' is not a Llama-architecture model"):
        load_hf(out)
    (out / "config.json").write_text(json.dumps({**config, "rope_parameters": {"rope_type": "yarn",
                                                 "rope_theta": 5e5, "factor": 8.0}}))
    with pytest.raises(KrllmError, match=r"rope_parameters\.rope_type: 'yarn' RoPE scaling is not supported"):
        config_from_hf_dir(out)
    with pytest.raises(KrllmError, match="config.json not found"):
        load_hf(tmp_path)


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32}


def _random_hf_llama(rope: dict, theta: float = 5e5, **over) -> LlamaForCausalLM:
    torch.manual_seed(5)
    hc = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                     rope_parameters={**rope, "rope_theta": theta}, **over)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0, 0.1)
    return hf


@pytest.mark.parametrize("rope", [LLAMA3, {"rope_type": "linear", "factor": 4.0}], ids=["llama3", "linear"])
def test_rope_scaling_checkpoint_loads_with_transformers_logits(tmp_path, rope):
    """A Llama-3.2-style directory (rope_scaling llama3) and a linear-scaled one: same logits as transformers,
    over positions beyond the original context, with and without the KV cache."""
    hf = _random_hf_llama(rope)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf(tmp_path / "hf")
    assert model.config.rope_scaling.model_dump(exclude_none=True) == rope
    inv = model.model.rotary_emb.inv_freq()
    torch.testing.assert_close(inv, hf.model.rotary_emb.inv_freq, rtol=0, atol=0)
    if rope["rope_type"] == "llama3":  # the test exercises all three llama3 bands
        plain = 1.0 / (5e5 ** (torch.arange(0, 32, 2).float() / 32))
        ratio = (plain / inv).tolist()
        assert min(ratio) == 1.0 and max(ratio) == 8.0 and any(1.0 < r < 8.0 for r in ratio)
    ids = torch.randint(0, VOCAB, (2, 100))  # longer than original_max_position_embeddings=32
    with torch.no_grad():
        ours = model(ids)[0]
        torch.testing.assert_close(ours, hf(ids).logits, rtol=1e-5, atol=1e-5)
        from krllm.model.cache import KVCache

        cache = KVCache(model.config, 2, 128, "cpu", torch.float32)
        step = torch.cat([model(ids[:, :60], cache=cache)[0], model(ids[:, 60:], cache=cache)[0]], dim=1)
        torch.testing.assert_close(step, ours, rtol=1e-5, atol=1e-5)


def test_transformers4_style_rope_scaling_is_read(tmp_path):
    """Llama 3.2's own config.json layout: `rope_scaling` + top-level `rope_theta`, no rope_parameters."""
    hf = _random_hf_llama(LLAMA3, theta=31337.0)
    hf.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rope_theta=31337.0, rope_scaling=dict(LLAMA3))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    model = load_hf(tmp_path / "hf")
    assert model.config.rope_theta == 31337.0 and model.config.rope_scaling.rope_type == "llama3"
    ids = torch.randint(0, VOCAB, (1, 70))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)


def test_save_hf_keeps_rope_scaling_for_transformers(tmp_path):
    model = Llama(cfg(rope_scaling=LLAMA3, rope_theta=5e5, hidden_size=64, num_attention_heads=2,
                      num_key_value_heads=1)).eval()
    out = save_hf(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"] == {**LLAMA3, "rope_theta": 5e5}
    assert config["rope_scaling"] == LLAMA3 and config["rope_theta"] == 5e5  # transformers 4 / mlx-lm readers
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert hf.config.rope_parameters == {**LLAMA3, "rope_theta": 5e5}
    ids = torch.randint(0, VOCAB, (2, 90))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], hf(ids).logits, rtol=1e-5, atol=1e-5)
    hf.save_pretrained(tmp_path / "again")  # and back: transformers' own file loads to the same config
    assert load_hf(tmp_path / "again").config == model.config


def test_unsupported_rope_scaling_names_the_key(tmp_path):
    out = save_hf(Llama(cfg()), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    del config["rope_parameters"]
    cases = [({"type": "dynamic", "factor": 2.0}, r"rope_scaling\.rope_type: 'dynamic' RoPE scaling is not supported"),
             ({**LLAMA3, "mscale": 1.0}, r"rope_scaling\.mscale: unknown key"),
             ({"rope_type": "llama3", "factor": 8.0}, r"rope_scaling\.low_freq_factor: required for rope_type 'llama3'"),
             ({"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
              r"rope_scaling\.partial_rotary_factor: 0\.5 is not supported")]
    for scaling, message in cases:
        (out / "config.json").write_text(json.dumps({**config, "rope_scaling": scaling}))
        with pytest.raises(KrllmError, match=message):
            load_hf(out)


def test_transformers4_style_top_level_rope_theta_is_read(tmp_path):
    out = save_hf(Llama(cfg()), tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    del config["rope_parameters"]
    config["rope_theta"] = 31337.0
    (out / "config.json").write_text(json.dumps(config))
    assert config_from_hf_dir(out).rope_theta == 31337.0


def test_tokenizer_larger_than_vocab_is_rejected(tmp_path):
    tok = make_tokenizer_dir(tmp_path / "tok", extra_tokens=300)  # 345 tokens > 300
    with pytest.raises(KrllmError, match="345 tokens but the model's vocab_size is 300"):
        save_hf(Llama(cfg()), tmp_path / "hf", tokenizer_dir=tok)
    out = save_hf(Llama(cfg()), tmp_path / "hf")
    (out / "tokenizer.json").write_bytes((tok / "tokenizer.json").read_bytes())
    with pytest.raises(KrllmError, match="tokenizer has 345 tokens but config.json vocab_size is 300"):
        load_hf(out)


def test_sharded_checkpoint_loads(tmp_path):
    torch.manual_seed(4)
    model = Llama(cfg(tie_word_embeddings=False))
    hf = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in model.config.to_hf_dict().items()
                                         if k not in ("architectures", "model_type")}))
    hf.load_state_dict(model.state_dict())
    hf.save_pretrained(tmp_path / "hf", max_shard_size="100KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "hf").glob("model-*.safetensors"))) > 1
    loaded = load_hf(tmp_path / "hf")
    ids = torch.randint(0, VOCAB, (1, 11))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0], rtol=0, atol=0)


def test_save_unwraps_compiled_model_and_rejects_others(tmp_path):
    model = Llama(cfg())
    out = save_hf(torch.compile(model), tmp_path / "hf")  # no compilation happens: only the wrapper
    assert "model.norm.weight" in load_file(out / "model.safetensors")
    with pytest.raises(KrllmError, match="expects a krllm Llama, got Linear"):
        save_hf(torch.nn.Linear(2, 2), tmp_path / "x")
