"""ModelConfig: presets, YAML/dict/preset specs with overrides, every problem reported at once."""

import re
from pathlib import Path

import pytest
from transformers import LlamaConfig

from krllm.config import ConfigError, load_config
from krllm.model.config import PRESETS, ModelConfig, model_config_from

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def test_head_dim_and_kv_heads_are_derived():
    cfg = ModelConfig(hidden_size=512, num_attention_heads=8)
    assert cfg.head_dim == 64 and cfg.num_key_value_heads == 8
    assert ModelConfig(hidden_size=512, num_attention_heads=8, head_dim=128).head_dim == 128


def test_all_problems_reported_at_once_with_keys_and_fixes():
    with pytest.raises(ConfigError) as e:
        model_config_from({"hidden_size": 100, "num_attention_heads": 3, "num_key_value_heads": 2,
                           "vocab_size": 10, "pad_token_id": 12})
    problems = e.value.problems
    text = "\n".join(problems)
    assert any(p.startswith("hidden_size: hidden_size=100 is not divisible by num_attention_heads=3") for p in problems)
    assert "pick a multiple of 3 (e.g. 102)" in text
    assert any(p.startswith("num_key_value_heads:") and "use one of [1, 3]" in p for p in problems)
    assert any(p.startswith("head_dim:") and "odd" in p for p in problems)  # 100 // 3 = 33
    assert any(p.startswith("pad_token_id:") for p in problems)
    assert len(problems) == 4


def test_field_errors_are_listed_together():
    with pytest.raises(ConfigError) as e:
        model_config_from({"hidden_size": -4, "num_hidden_layers": 0, "hiden_size": 3, "rope_theta": "big"})
    keys = sorted(p.split(":")[0] for p in e.value.problems)
    assert keys == ["hidden_size", "hiden_size", "num_hidden_layers", "rope_theta"]
    assert "unknown key" in next(p for p in e.value.problems if p.startswith("hiden_size"))


def test_nested_in_a_stage_config_names_the_full_key_path(tmp_path):
    from krllm.config import StrictModel

    class Stage(StrictModel):
        model: ModelConfig = ModelConfig()

    p = tmp_path / "s.yaml"
    p.write_text("model:\n  hidden_size: 96\n  num_attention_heads: 6\n  num_key_value_heads: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, Stage)
    assert e.value.problems[0].startswith("model.num_key_value_heads: num_attention_heads=6 is not divisible")


def test_spec_kinds_and_precedence(tmp_path):
    assert model_config_from("small").hidden_size == 768
    y = tmp_path / "m.yaml"
    y.write_text("preset: tiny\nnum_hidden_layers: 6\nvocab_size: 100\n")
    cfg = model_config_from(y, vocab_size=5000)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (256, 6, 5000)  # tokenizer vocab wins
    cfg = model_config_from(y, ["vocab_size=7000", "rope_theta=5e5"], vocab_size=5000)
    assert cfg.vocab_size == 7000 and cfg.rope_theta == 500000.0  # explicit override wins over everything
    assert model_config_from({"preset": "medium", "num_hidden_layers": 2}).num_key_value_heads == 4
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        model_config_from({"preset": "huge"})
    with pytest.raises(ConfigError, match="not a preset"):
        model_config_from("smal")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shipped_yaml_equals_preset_and_header_count_is_exact(name):
    from krllm.model.sizing import count_parameters

    path = CONFIGS / f"{name}.yaml"
    cfg = model_config_from(path)
    assert cfg == model_config_from(name)
    header = path.read_text().splitlines()[:2]
    numbers = [int(m.replace(",", "")) for line in header for m in re.findall(r"\d{1,3}(?:,\d{3})+", line)]
    assert count_parameters(cfg).total in numbers  # the comment tells the truth


def test_preset_shapes_match_the_issue():
    spec = {"small": (768, 12, 12), "medium": (1024, 24, 16, 4, 4096), "large": (1536, 24, 24, 6, 6144)}
    for name, want in spec.items():
        c = model_config_from(name)
        got = (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
               c.intermediate_size)[: len(want)]
        assert got == want


def test_hf_dict_round_trip_and_transformers_accepts_it():
    cfg = model_config_from("large", vocab_size=12345)
    d = cfg.to_hf_dict()
    assert d["rope_theta"] == d["rope_parameters"]["rope_theta"] == 500000.0
    assert ModelConfig.from_hf_dict(d) == cfg
    hf = LlamaConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    assert (hf.head_dim, hf.num_key_value_heads, hf.vocab_size) == (64, 6, 12345)
    assert hf.rope_parameters["rope_theta"] == 500000.0


def test_rope_scaling_round_trips_through_the_hf_dict():
    llama3 = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}
    cfg = model_config_from({"preset": "large", "vocab_size": 12345, "rope_scaling": llama3})
    d = cfg.to_hf_dict()
    assert d["rope_parameters"] == {**llama3, "rope_theta": 500000.0} and d["rope_scaling"] == llama3
    assert ModelConfig.from_hf_dict(d) == cfg
    hf = LlamaConfig(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    assert hf.rope_parameters == {**llama3, "rope_theta": 500000.0}
    assert "rope_scaling" not in model_config_from("tiny").to_hf_dict()  # plain RoPE: config.json as before
    with pytest.raises(ConfigError) as e:
        model_config_from({"preset": "tiny", "rope_scaling": {"rope_type": "linear", "factor": 2.0,
                                                               "high_freq_factor": 4.0}})
    assert any(p.startswith("rope_scaling.high_freq_factor: is a 'llama3' parameter") for p in e.value.problems)


def test_from_hf_dict_rejects_what_we_do_not_implement():
    base = model_config_from("tiny").to_hf_dict()
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_hf_dict({**base, "model_type": "mistral", "attention_bias": True, "hidden_act": "gelu"})
    assert len(e.value.problems) == 3
