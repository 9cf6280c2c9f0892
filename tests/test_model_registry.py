"""The architecture registry: model_type -> family, what each family loads / builds / saves."""

import json

import pytest
import torch

from krllm.errors import KrllmError
from krllm.model.registry import (FAMILIES, TRANSFORMERS, Family, family_for, model_type_of, pretrainable,
                                  pretrainable_family)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_every_registered_family_is_found_and_its_code_imports(model_type):
    family = family_for(model_type)
    assert family is FAMILIES[model_type] and family.model_type == model_type and family.description
    for target in (family.load, family.build, family.config, family.save):
        if target is not None:
            assert callable(Family.resolve(target)), target
    if family.build is not None:
        assert model_type in pretrainable() and pretrainable_family(model_type) is family


def test_unknown_types_fall_back_to_transformers_but_pretraining_is_strict():
    assert family_for("some_new_arch") is FAMILIES[TRANSFORMERS] and family_for(None) is FAMILIES[TRANSFORMERS]
    assert not FAMILIES[TRANSFORMERS].fast and FAMILIES["llama"].fast
    assert "llama" in pretrainable() and TRANSFORMERS not in pretrainable()
    with pytest.raises(KrllmError, match="'nosuch' is not a registered family; pretrainable families: .*llama"):
        pretrainable_family("nosuch")
    with pytest.raises(KrllmError, match="'transformers' cannot be built from scratch"):
        pretrainable_family(TRANSFORMERS)
    with pytest.raises(KrllmError, match="cannot build this family"):
        FAMILIES[TRANSFORMERS].build_model({})
    with pytest.raises(KrllmError, match="cannot import 'krllm.model.hf:no_such_function'"):
        Family.resolve("krllm.model.hf:no_such_function")


def test_llama_family_builds_a_llama_from_a_preset_config():
    from krllm.model.llama import Llama

    family = pretrainable_family("llama")
    cfg = family.make_config("tiny", ["num_hidden_layers=2"], vocab_size=300)
    assert cfg.num_hidden_layers == 2 and cfg.vocab_size == 300
    torch.manual_seed(0)
    model = family.build_model(cfg, device="cpu")
    assert isinstance(model, Llama)
    torch.manual_seed(0)
    same = Llama.build(cfg, device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))


def test_load_goes_through_the_family_of_config_json(tmp_path):
    """A krllm Llama directory loads as krllm's Llama; any other model_type through transformers."""
    from transformers import MistralConfig, MistralForCausalLM

    from krllm.infer.testing import tiny_model_dir
    from krllm.model.llama import Llama

    llama_dir = tiny_model_dir(tmp_path / "llama")
    assert model_type_of(llama_dir) == "llama"
    assert isinstance(family_for(model_type_of(llama_dir)).load_model(llama_dir), Llama)

    cfg = MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    MistralForCausalLM(cfg).save_pretrained(str(tmp_path / "mistral"))
    model = family_for(model_type_of(tmp_path / "mistral")).load_model(tmp_path / "mistral", dtype="bf16")
    assert isinstance(model, MistralForCausalLM) and next(model.parameters()).dtype == torch.bfloat16


def test_model_type_of_names_the_file_in_errors(tmp_path):
    with pytest.raises(KrllmError, match="config.json not found"):
        model_type_of(tmp_path)
    (tmp_path / "config.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(KrllmError, match=r"config.json:1: invalid JSON"):
        model_type_of(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}), encoding="utf-8")
    assert model_type_of(tmp_path) is None
