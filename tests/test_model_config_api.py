"""The setup guide's Python API on krllm's model config: TransformerConfig.from_yaml / presets /
num_parameters / to_dict / save_yaml / num_layers, checked against the model actually built."""

from __future__ import annotations

import pytest
import torch

from krllm.config import ConfigError
from krllm.model.config import PRESETS, ModelConfig, TransformerConfig
from krllm.model.llama import Llama


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_and_num_parameters_equal_the_built_model(name):
    cfg = getattr(TransformerConfig, name)()
    assert cfg == ModelConfig.model_validate(PRESETS[name])
    with torch.device("meta"):
        model = Llama(cfg)
    assert cfg.num_parameters == model.num_parameters()


def test_guide_sizes_are_exact_counts():
    """docs/model.md quotes these (the guide's ~50.3M / ~350.2M / ~788.5M are estimates)."""
    sizes = [round(getattr(TransformerConfig, n)().num_parameters / 1e6, 1) for n in ("small", "medium", "large")]
    assert sizes == [98.9, 397.7, 919.4]


def test_save_yaml_round_trips_and_from_yaml_takes_overrides(tmp_path):
    cfg = TransformerConfig.medium(vocab_size=16000)
    path = cfg.save_yaml(tmp_path / "my_config.yaml")
    assert TransformerConfig.from_yaml(path) == cfg
    assert TransformerConfig.from_yaml(path, ["num_hidden_layers=6"]).num_hidden_layers == 6
    assert cfg.to_dict()["vocab_size"] == 16000 and "rope_scaling" not in cfg.to_dict()


def test_customising_like_the_guide_revalidates_and_recounts():
    cfg = TransformerConfig.medium()
    before = cfg.num_parameters
    cfg.num_layers = 20
    assert cfg.num_hidden_layers == 20
    per_layer = (before - cfg.num_parameters) / 4
    assert per_layer == pytest.approx(ModelConfig.medium().num_parameters - ModelConfig.medium(num_hidden_layers=23)
                                      .num_parameters)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        cfg.num_layers = 0
    with pytest.raises(ValueError, match="dropout"):  # the guide's `config.dropout = 0.2`: krllm's Llama has none
        cfg.dropout = 0.2


def test_bad_preset_and_bad_fields_are_reported_with_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        TransformerConfig.preset("huge")
    with pytest.raises(ConfigError, match="hidden_size"):
        TransformerConfig.small(hidden_size=100)
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nnum_attention_heads: 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml"):
        TransformerConfig.from_yaml(bad)
