"""Merge a PEFT LoRA/DoRA adapter into its base model and write one plain HF directory.

    krllm merge runs/npc_lora/adapter --out runs/npc_merged [--base runs/pretrain_tiny/hf] [--dtype bf16]

Why: every downstream consumer (our server, vLLM, llama.cpp/GGUF, MLX, lm-eval) wants a single
checkpoint, not base + adapter. The fold is krllm's one merge, `krllm.model.adapters.merge_adapter`
(B·A·(alpha/r), rsLoRA, DoRA's magnitude rescaling, saved layers), computed in fp32 so the merged
model's logits equal PEFT's base+adapter (tested against PEFT); `--dtype` only sets how the result
is stored. The base is found as `krllm.model.load.resolve_base` finds it (--base, else the recorded
path from any working directory). The base is built with transformers, so the directory is exactly
what transformers writes for that architecture; causal-LM adapters and sequence-classification
adapters (task_type SEQ_CLS, whose trained `score` head is saved in the adapter) both merge.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from krllm.errors import KrllmError
from krllm.model.adapters import merge_adapter as merge_into, read_adapter_config
from krllm.model.hf import parse_dtype, top_level_rope_theta
from krllm.model.load import load_tokenizer, resolve_base, tokenizer_dir
from krllm.runs import atomic_dir, write_json

def load_merged(adapter_dir: str | Path, base: str | None = None, dtype: str = "fp32"):
    """(merged transformers model in `dtype`, tokenizer or None, base directory)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    adapter_dir = Path(adapter_dir)
    store_dtype = parse_dtype(dtype)  # checked before the (slow) load
    cfg = read_adapter_config(adapter_dir)
    base_dir = resolve_base(adapter_dir, base)
    tok_dir = tokenizer_dir(adapter_dir, base_dir)
    tokenizer = load_tokenizer(tok_dir) if (tok_dir / "tokenizer_config.json").exists() else None
    kw = dict(dtype=torch.float32, local_files_only=True)  # merged in fp32, stored in `dtype`
    try:
        if cfg.get("task_type") == "SEQ_CLS":
            model = AutoModelForSequenceClassification.from_pretrained(
                str(base_dir), **kw, **_classifier_kwargs(adapter_dir, tokenizer))
        else:
            model = AutoModelForCausalLM.from_pretrained(str(base_dir), **kw)
    except (OSError, ValueError, KeyError) as e:
        raise KrllmError(f"{base_dir}: transformers cannot load the base model of {adapter_dir} ({e})") from None
    merge_into(model, adapter_dir)
    return model.to(store_dtype).eval(), tokenizer, base_dir


def _classifier_kwargs(adapter_dir: Path, tokenizer) -> dict:
    """Head size (and label names) of a classification adapter: from krllm's labels.json, else from the
    saved `score` weight's shape."""
    from safetensors import safe_open

    kw = {}
    labels_file = adapter_dir / "labels.json"
    if labels_file.exists():
        names = json.loads(labels_file.read_text(encoding="utf-8"))["labels"]
        kw.update(num_labels=len(names), id2label=dict(enumerate(names)),
                  label2id={n: i for i, n in enumerate(names)})
    else:
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as f:
            heads = [k for k in f.keys() if k.split(".")[-2:] == ["score", "weight"] or ".score." in k]
            if not heads:
                raise KrllmError(f"{adapter_dir}: a SEQ_CLS adapter without a saved score head cannot be merged")
            kw["num_labels"] = f.get_slice(heads[0]).get_shape()[0]
    if tokenizer is not None and tokenizer.pad_token_id is not None:
        kw["pad_token_id"] = tokenizer.pad_token_id
    return kw


def merge_adapter(adapter_dir: str | Path, out: str | Path, base: str | None = None, dtype: str = "fp32") -> Path:
    """Write base+adapter as one HF directory (atomically), with tokenizer and generation config."""
    adapter_dir, out = Path(adapter_dir), Path(out)
    merged, tokenizer, base_dir = load_merged(adapter_dir, base, dtype)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # krllm sft stores the generation config it trained for (stop on <|im_end|>) beside the adapter
        for gen in (adapter_dir / "generation_config.json", base_dir / "generation_config.json"):
            if gen.exists():
                shutil.copy(gen, tmp / "generation_config.json")
                break
        top_level_rope_theta(tmp / "config.json")
        write_json(tmp / "merge.json", {"adapter": str(adapter_dir.resolve()), "base": str(base_dir.resolve()),
                                        "dtype": dtype})
    return out
