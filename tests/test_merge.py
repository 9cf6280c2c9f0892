"""krllm merge: base + LoRA/DoRA adapter -> one HF directory whose logits equal PEFT's base+adapter."""

import json
import shutil

import pytest
import torch
from sft_tiny import one_thread, tiny_base

from krllm.errors import KrllmError
from krllm.export.merge import merge_adapter

CASES = {
    "lora": dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    "dora-all-linear": dict(r=4, lora_alpha=8, target_modules="all-linear", use_dora=True),
    "lora-top-layer": dict(r=4, lora_alpha=16, target_modules=["o_proj", "down_proj"], layers_to_transform=[1]),
}


def make_adapter(base_dir, out, task="CAUSAL_LM", **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(1)
    if task == "SEQ_CLS":
        base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=3, pad_token_id=1)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_dir)
    pm = get_peft_model(base, LoraConfig(init_lora_weights=False, task_type=task, **kw))  # random B: not a no-op
    if task == "SEQ_CLS":
        with torch.no_grad():
            pm.base_model.model.score.modules_to_save["default"].weight.normal_()
    pm.save_pretrained(out)
    return pm.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_merged_logits_equal_base_plus_adapter(tmp_path, case):
    from transformers import AutoModelForCausalLM

    _, base_dir = tiny_base()
    pm = make_adapter(base_dir, tmp_path / "adapter", **CASES[case])
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(4, 900, (2, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), one_thread():
        ref = pm(input_ids=ids).logits
        with pm.disable_adapter():
            plain = pm(input_ids=ids).logits
        got = merged(input_ids=ids).logits
    assert (ref - plain).abs().max() > 1e-2  # the adapter really changes the model
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32 merge rounding (DoRA: ~2e-5)
    assert not any(k for k in merged.state_dict() if "lora" in k)  # plain weights, no adapter layers
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"]
    assert json.loads((out / "merge.json").read_text())["adapter"].endswith("adapter")


def test_merge_sequence_classification_adapter(tmp_path):
    from transformers import AutoModelForSequenceClassification

    _, base_dir = tiny_base()
    pm = make_adapter(base_dir, tmp_path / "adapter", task="SEQ_CLS", r=4, lora_alpha=8, target_modules="all-linear")
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    ids = torch.randint(4, 900, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), one_thread():
        torch.testing.assert_close(merged(input_ids=ids).logits, pm(input_ids=ids).logits, rtol=1e-4, atol=1e-5)


def test_merge_cli_with_explicit_base_and_bf16(tmp_path):
    from krllm.cli import main

    _, base_dir = tiny_base()
    make_adapter(base_dir, tmp_path / "adapter", **CASES["lora"])
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(tmp_path / "moved-away")  # the recorded base is gone
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(KrllmError, match="does not exist.*pass --base"):
        merge_adapter(tmp_path / "adapter", tmp_path / "m")
    with pytest.raises(SystemExit) as e:
        main(["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "m"), "--base", str(base_dir),
              "--dtype", "bf16"])
    assert e.value.code == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert (tmp_path / "m" / "tokenizer.json").exists()  # tokenizer from the base when the adapter has none


def test_merge_rejects_non_adapter_dirs(tmp_path):
    _, base_dir = tiny_base()
    with pytest.raises(KrllmError, match="not a PEFT adapter directory"):
        merge_adapter(base_dir, tmp_path / "m")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{oops")
    with pytest.raises(KrllmError, match=r"adapter_config.json:1: invalid JSON"):
        merge_adapter(tmp_path / "bad", tmp_path / "m")
    assert not (tmp_path / "m").exists()
    shutil.rmtree(tmp_path / "bad")


def test_merge_with_a_trained_head_on_a_tied_base_keeps_both_matrices(tmp_path):
    """LoRA on the embedding + a trained lm_head on a tied base: the merged directory unties them."""
    from transformers import AutoModelForCausalLM

    from krllm.infer.testing import tiny_model_dir

    base_dir = tiny_model_dir(tmp_path / "base", initializer_range=0.1)  # tie_word_embeddings: true
    pm = make_adapter(base_dir, tmp_path / "adapter", r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"],
                      modules_to_save=["lm_head"])
    with torch.no_grad():
        pm.base_model.model.lm_head.modules_to_save["default"].weight.normal_()  # a head that really differs
    pm.save_pretrained(tmp_path / "adapter")
    out = merge_adapter(tmp_path / "adapter", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    ids = torch.randint(4, 300, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), one_thread():
        torch.testing.assert_close(merged(input_ids=ids).logits, pm(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
