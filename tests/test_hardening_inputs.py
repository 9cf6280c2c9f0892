"""Inputs a Windows editor or an unusual umask produces are handled like ordinary ones (issue 15)."""

import json

import pytest

from krllm.data.sources import iter_texts
from krllm.tokenizer.train import train_tokenizer

BOM = b"\xef\xbb\xbf"


def test_bom_text_and_jsonl_train_the_same_tokenizer_as_without(tmp_path):
    text = "대한민국은 민주공화국이다.\n\n모든 국민은 법 앞에 평등하다.\n"
    (tmp_path / "bom.txt").write_bytes(BOM + text.encode("utf-8"))
    (tmp_path / "plain.txt").write_text(text, encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(BOM + (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode())
    assert list(iter_texts(str(tmp_path / "bom.txt"))) == list(iter_texts(str(tmp_path / "plain.txt")))
    assert list(iter_texts(str(tmp_path / "bom.jsonl"))) == [text]
    train_tokenizer(tmp_path / "a", sources=[str(tmp_path / "bom.txt")], vocab_size=300, progress=False)
    train_tokenizer(tmp_path / "b", sources=[str(tmp_path / "plain.txt")], vocab_size=300, progress=False)
    vocab = (tmp_path / "a" / "tokenizer.json").read_text(encoding="utf-8")
    assert "\ufeff" not in vocab and vocab == (tmp_path / "b" / "tokenizer.json").read_text(encoding="utf-8")


def test_base_model_that_is_neither_a_path_nor_a_cached_hub_id_is_one_error(tmp_path):
    """`--set base_model=/nonexistent` and a Hub id missing offline: a KrllmError naming base_model,
    not transformers' traceback; a regular file gets the loader's 'no config.json' error."""
    from krllm.errors import KrllmError
    from krllm.train.hf.model import load_tokenizer

    with pytest.raises(KrllmError, match="base_model /nonexistent/model: no such file or directory"):
        load_tokenizer("/nonexistent/model")
    with pytest.raises(KrllmError, match="base_model nobody-krllm/no-such-model"):
        load_tokenizer("nobody-krllm/no-such-model")  # HF_HUB_OFFLINE=1 in tests: not cached
    import subprocess
    import sys

    cli = subprocess.run([sys.executable, "-m", "krllm", "sft", "-c", "configs/sft/npc_lora.yaml", "--set",
                          "base_model=/nonexistent/model", "--set", f"runs_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and cli.stderr.strip().splitlines() == [
        "error: base_model /nonexistent/model: no such file or directory (and not a Hub id such as org/name)"]
    regular = tmp_path / "notes.txt"
    regular.write_text("x", encoding="utf-8")
    with pytest.raises(KrllmError, match="no config.json"):
        load_tokenizer(str(regular))


def test_unknown_lora_target_modules_are_named_with_the_choices():
    from sft_tiny import tiny_base
    from transformers import AutoModelForCausalLM

    from krllm.errors import KrllmError
    from krllm.train.hf.config import PeftSection
    from krllm.train.hf.model import peft_config_for

    _, model_dir = tiny_base()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with pytest.raises(KrllmError, match=r"peft.target_modules: \['nosuch'\] match no module.*q_proj"):
        peft_config_for(PeftSection(target_modules=["q_proj", "nosuch"]), model)
    assert set(peft_config_for(PeftSection(target_modules=["q_proj", "self_attn.v_proj"]), model).target_modules) \
        == {"q_proj", "self_attn.v_proj"}
