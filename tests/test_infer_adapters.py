"""PEFT adapters created here on tiny models: our in-memory merge (krllm.model.adapters) gives PEFT's own
logits, on krllm's Llama and on a transformers model (Mistral, with a tied head)."""

import json

import pytest
import torch

from krllm.errors import KrllmError
from krllm.infer.engine import Engine
from krllm.infer.sampling import SamplingParams
from krllm.infer.testing import tiny_mistral_dir, tiny_model_dir
from krllm.model.load import load

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("adapters") / "base", initializer_range=0.1)


def _make_adapter(base_dir, out, **lora_kwargs):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    hf = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = peft.LoraConfig(init_lora_weights=False, **lora_kwargs)  # random B: the adapter changes outputs
    pm = peft.get_peft_model(hf, cfg).eval()
    pm.save_pretrained(out)
    return pm


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    "lora": dict(r=4, lora_alpha=8, target_modules=ALL_LINEAR),
    "rslora_patterns": dict(r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"],
                            rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}),
    "dora": dict(r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "o_proj", "up_proj"]),
    "embedding_and_lm_head": dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "k_proj"],
                                  modules_to_save=["lm_head"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_merged_adapter_matches_peft_outputs(base_dir, tmp_path, case):
    pm = _make_adapter(base_dir, tmp_path / "adapter", **CASES[case])
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11]])
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        base = pm.get_base_model()
        with pm.disable_adapter():
            plain = base(input_ids=ids).logits
    assert (ref - plain).abs().max() > 1e-2  # the adapter really changes the model

    lm = load(tmp_path / "adapter", device="cpu")
    assert lm.adapter == tmp_path / "adapter"
    ours, _ = lm.model(ids)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_engine_greedy_with_adapter_equals_peft_generate(base_dir, tmp_path):
    pm = _make_adapter(base_dir, tmp_path / "adapter", **CASES["lora"])
    prompt = [5, 17, 42, 99]
    with torch.no_grad():
        ref = pm.generate(input_ids=torch.tensor([prompt]), max_new_tokens=20, do_sample=False,
                          eos_token_id=None, pad_token_id=1)[0, len(prompt):].tolist()
    lm = load(tmp_path / "adapter", device="cpu")
    engine = Engine(lm.model, max_batch=1, max_seq_len=64)
    assert engine.generate([prompt], SamplingParams(temperature=0), 20, stop_ids=())[0].output == ref


def test_base_override_and_missing_base_errors(base_dir, tmp_path):
    _make_adapter(base_dir, tmp_path / "adapter", **CASES["lora"])
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "someone/not-here"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(KrllmError, match="--base"):
        load(tmp_path / "adapter", device="cpu")
    lm = load(tmp_path / "adapter", base=base_dir, device="cpu")
    assert lm.info["lora"] == 14


def test_adapter_for_another_model_is_rejected(base_dir, tmp_path):
    other = tiny_model_dir(tmp_path / "other", hidden_size=32, intermediate_size=64)
    _make_adapter(other, tmp_path / "adapter", **CASES["lora"])
    with pytest.raises(KrllmError, match="shape"):
        load(tmp_path / "adapter", base=base_dir, device="cpu")


def test_run_directory_resolves_to_its_adapter(base_dir, tmp_path):
    _make_adapter(base_dir, tmp_path / "run" / "adapter", **CASES["dora"])
    lm = load(tmp_path / "run", device="cpu")
    assert lm.adapter == tmp_path / "run" / "adapter" and lm.info["dora"] == 6
    assert lm.name == "run"


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return tiny_mistral_dir(tmp_path_factory.mktemp("mistral") / "base", tie_word_embeddings=True)


@pytest.mark.parametrize("case", ["lora", "dora", "embedding_and_lm_head"])
def test_transformers_model_adapter_matches_peft(mistral_dir, tmp_path, case):
    """The registry hands a Mistral directory to transformers; the same merge gives PEFT's logits."""
    pm = _make_adapter(mistral_dir, tmp_path / "adapter", **CASES[case])
    ids = torch.tensor([[5, 17, 42, 99, 7, 250, 3, 11]])
    with torch.no_grad():
        ref = pm(input_ids=ids).logits
        with pm.disable_adapter():
            plain = pm(input_ids=ids).logits
    assert (ref - plain).abs().max() > 1e-2
    lm = load(tmp_path / "adapter", device="cpu")
    assert type(lm.model).__name__ == "MistralForCausalLM" and lm.base == mistral_dir
    with torch.no_grad():
        got = lm.model(input_ids=ids).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    if case == "embedding_and_lm_head":  # the tie was cut, so the trained head and embedding differ
        assert lm.model.lm_head.weight is not lm.model.model.embed_tokens.weight
        assert lm.model.config.tie_word_embeddings is False
