"""krllm.model.load: run-directory resolution, adapters that find their base from any working directory,
transformers models through the registry, and one stop-id rule that every caller agrees on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from krllm.data.tokens import chat_tokens
from krllm.errors import KrllmError
from krllm.infer.testing import SAMPLE_TEXT, tiny_mistral_dir, tiny_model_dir
from krllm.model.adapters import pin_base_path, read_adapter_config
from krllm.model.load import load, resolve_base, resolve_model_dir

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def llama3_tokenizer_dir(out: Path) -> Path:
    """A byte-level BPE with Llama 3's special tokens: eos <|end_of_text|> (1), turn end <|eot_id|> (4)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SAMPLE_TEXT * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(LLAMA3_SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                 additional_special_tokens=list(LLAMA3_SPECIALS[2:]), chat_template=LLAMA3_TEMPLATE)
    hf.save_pretrained(str(out))
    return out


@pytest.fixture(scope="module")
def chatml_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("chatml") / "m")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3")
    return tiny_model_dir(root / "m", tokenizer_dir=llama3_tokenizer_dir(root / "tok"), bos_token_id=0,
                          eos_token_id=1, pad_token_id=1)


# ------------------------------------------------------------------ one stop-id rule


@pytest.mark.parametrize("style,want", [("chatml", {3, 0}), ("llama3", {4, 1})])
def test_every_caller_stops_on_the_same_ids(style, want, chatml_dir, llama3_dir, monkeypatch):
    from tokenizers import Tokenizer

    from krllm.eval import generate as eval_generate
    from krllm.infer import startup
    from krllm.infer.generator import Generator
    from krllm.train import samples

    model_dir = chatml_dir if style == "chatml" else llama3_dir
    lm = load(model_dir, device="cpu")
    assert set(lm.stop_ids) == want
    assert set(startup.make_engine(lm).eos_ids) == want  # generate / chat / serve
    assert set(Generator(lm).engine.eos_ids) == want  # the Python API
    assert set(chat_tokens.stop_ids(lm.tokenizer)) == want  # SFT's generation config and its samples
    gen_cfg = json.loads((model_dir / "generation_config.json").read_text())  # save_hf
    assert set(gen_cfg["eos_token_id"]) == want

    seen = {}
    real_make_engine = startup.make_engine
    monkeypatch.setattr(startup, "make_engine", lambda *a, **k: seen.setdefault("eval", real_make_engine(*a, **k)))
    eval_generate.greedy_answers(lm, ["안녕"], max_new_tokens=2, batch_size=1)
    assert set(seen["eval"].eos_ids) == want  # eval's greedy answers

    def fake_generate_ids(*a, stop_ids, **k):
        seen["samples"] = stop_ids
        return []

    monkeypatch.setattr(samples, "generate_ids", fake_generate_ids)
    raw = Tokenizer.from_file(str(model_dir / "tokenizer.json"))  # pretraining samples get a raw tokenizer
    samples.sample_texts(lm.model, lm.model.config, raw, ["x"], max_new_tokens=2, temperature=0, top_k=0,
                         seed=0, step=0, device=torch.device("cpu"))
    assert seen["samples"] == want


def test_stop_ids_order_and_sources(chatml_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(chatml_dir)
    assert chat_tokens.stop_ids(tok) == [3, 0]  # end of turn first, then EOS
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 0]}))

    class Cfg:  # a transformers-style config: eos_token_id int, list or None
        eos_token_id = 9

    assert chat_tokens.stop_ids(tok, model_dir=tmp_path, config=Cfg()) == [3, 0, 9, 7]
    assert chat_tokens.stop_ids(None, model_dir=[tmp_path, chatml_dir]) == [7, 0, 3]
    (tmp_path / "generation_config.json").write_text("{bad")
    with pytest.raises(KrllmError, match="generation_config.json:1: invalid JSON"):
        chat_tokens.stop_ids(tok, model_dir=tmp_path)


# ------------------------------------------------------------------ transformers models through the registry


@pytest.fixture(scope="module")
def mistral_dir(tmp_path_factory):
    return tiny_mistral_dir(tmp_path_factory.mktemp("mistral") / "m", eos_token_id=[0, 5])


def test_a_mistral_directory_loads_as_a_transformers_model(mistral_dir):
    from transformers import AutoModelForCausalLM

    lm = load(mistral_dir, device="cpu", dtype="bf16", name="q")
    assert type(lm.model).__name__ == "MistralForCausalLM" and not lm.model.training
    assert lm.dtype == torch.bfloat16 and lm.dtype_reason == "as requested" and lm.name == "q"
    assert set(lm.stop_ids) == {3, 0, 5}  # <|im_end|>, tokenizer eos, config's list
    ref = AutoModelForCausalLM.from_pretrained(mistral_dir, dtype=torch.float32).eval()
    ids = torch.tensor([lm.encode_chat([{"role": "user", "content": "안녕하세요"}])])
    with torch.no_grad():
        got = load(mistral_dir, device="cpu").model(input_ids=ids).logits
        torch.testing.assert_close(got, ref(input_ids=ids).logits)
    assert lm.num_parameters == sum(p.numel() for p in ref.parameters())


# ------------------------------------------------------------------ directories


def test_a_run_directory_serves_merged_then_hf_then_adapter(chatml_dir, tmp_path):
    run = tmp_path / "sft"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    assert resolve_model_dir(run) == run / "adapter"
    (run / "hf").mkdir()
    (run / "hf" / "config.json").write_text("{}")
    assert resolve_model_dir(run) == run / "hf"
    import shutil

    shutil.copytree(chatml_dir, run / "merged")
    assert resolve_model_dir(run) == run / "merged"
    lm = load(run, device="cpu")
    assert lm.path == run / "merged" and lm.adapter is None and lm.name == "sft"
    with pytest.raises(KrllmError, match="no config.json or adapter_config.json"):
        resolve_model_dir(tmp_path)
    with pytest.raises(KrllmError, match="does not exist"):
        load(tmp_path / "nope")


def _krllm_like_run(root: Path, base_src: Path) -> Path:
    """root/runs/demo/{pretrain/hf, sft/adapter}, the adapter trained with cwd=root, as `krllm sft` does:
    adapter_config.json records the base as `runs/demo/pretrain/hf` (relative)."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shutil.copytree(base_src, root / "runs/demo/pretrain/hf")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        torch.manual_seed(1)
        hf = AutoModelForCausalLM.from_pretrained("runs/demo/pretrain/hf", dtype=torch.float32)
        pm = get_peft_model(hf, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                           init_lora_weights=False))
        pm.save_pretrained("runs/demo/sft/adapter")
    finally:
        os.chdir(cwd)
    adapter = root / "runs/demo/sft/adapter"
    assert read_adapter_config(adapter)["base_model_name_or_path"] == "runs/demo/pretrain/hf"
    return adapter


def test_a_relative_base_is_found_from_any_working_directory(chatml_dir, tmp_path, monkeypatch):
    adapter = _krllm_like_run(tmp_path / "proj", chatml_dir)
    base = tmp_path / "proj/runs/demo/pretrain/hf"
    monkeypatch.chdir(tmp_path)  # neither the training cwd nor the adapter's directory
    assert resolve_base(adapter) == base
    assert resolve_base(adapter, base=tmp_path / "proj/runs/demo/pretrain") == base  # a run dir as --base
    lm = load(adapter, device="cpu")
    assert lm.base == base and lm.info["lora"] == 4 and lm.name == "sft"
    with pytest.raises(KrllmError, match="does not exist"):
        resolve_base(adapter, base=tmp_path / "missing")

    cfg = read_adapter_config(adapter)
    assert pin_base_path(adapter, "proj/runs/demo/pretrain/hf") == base.resolve()
    pinned = read_adapter_config(adapter)
    assert pinned["base_model_name_or_path"] == str(base.resolve())
    assert {k: v for k, v in pinned.items() if k != "base_model_name_or_path"} == \
        {k: v for k, v in cfg.items() if k != "base_model_name_or_path"}
    with pytest.raises(KrllmError, match="not a directory"):
        pin_base_path(adapter, tmp_path / "missing")


def test_a_base_that_is_nowhere_names_the_adapter_and_every_path_tried(chatml_dir, tmp_path, monkeypatch, capsys):
    from krllm.cli import main

    adapter = _krllm_like_run(tmp_path / "proj", chatml_dir)
    cfg = read_adapter_config(adapter)
    cfg["base_model_name_or_path"] = "runs/gone/hf"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KrllmError) as e:
        resolve_base(adapter)
    msg = str(e.value)
    assert str(adapter) in msg and str(tmp_path / "runs/gone/hf") in msg and str(adapter / "runs/gone/hf") in msg
    assert "--base" in msg
    for argv in (["merge", str(adapter), "--out", str(tmp_path / "m")], ["generate", str(adapter), "--prompt", "x"]):
        with pytest.raises(SystemExit) as ex:
            main(argv)
        err = capsys.readouterr().err
        assert ex.value.code == 1 and "runs/gone/hf" in err and "Traceback" not in err


def test_generate_and_merge_run_from_another_directory(chatml_dir, tmp_path):
    """`cd /tmp && krllm generate ABS_ADAPTER` and `krllm merge ABS_ADAPTER --out X`, with the base
    recorded relative to where training ran."""
    from krllm.infer.generator import Generator

    adapter = _krllm_like_run(tmp_path / "proj", chatml_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    prompt = "오늘 날씨가"
    proc = subprocess.run([sys.executable, "-m", "krllm", "generate", str(adapter.resolve()), "--prompt", prompt,
                           "--max-new-tokens", "8", "--temperature", "0", "--dtype", "fp32", "--device", "cpu"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    want = Generator.from_pretrained(adapter, device="cpu", dtype="fp32").generate(prompt, 8, temperature=0)
    assert proc.stdout == prompt + want + "\n"

    proc = subprocess.run([sys.executable, "-m", "krllm", "merge", str(adapter.resolve()), "--out", "merged"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((elsewhere / "merged" / "merge.json").read_text())
    assert meta["base"] == str((tmp_path / "proj/runs/demo/pretrain/hf").resolve())
    merged = Generator.from_pretrained(elsewhere / "merged", device="cpu", dtype="fp32")
    assert merged.generate(prompt, 8, temperature=0) == want  # merged dir == adapter merged on load


def test_a_pinned_base_is_found_after_the_project_moved(chatml_dir, tmp_path, monkeypatch):
    """SFT pins the base as an absolute path; copying the whole project elsewhere still finds it."""
    import shutil

    adapter = _krllm_like_run(tmp_path / "old", chatml_dir)
    pin_base_path(adapter, tmp_path / "old/runs/demo/pretrain/hf")
    shutil.copytree(tmp_path / "old", tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    monkeypatch.chdir(tmp_path)
    moved = tmp_path / "new/runs/demo/sft/adapter"
    assert resolve_base(moved) == (tmp_path / "new/runs/demo/pretrain/hf").resolve()
    assert load(moved, device="cpu").info["lora"] == 4
    shutil.rmtree(tmp_path / "new/runs/demo/pretrain")
    with pytest.raises(KrllmError, match="pass --base"):
        resolve_base(moved)
