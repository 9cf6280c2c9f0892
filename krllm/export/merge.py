"""Merge a PEFT LoRA/DoRA adapter into its base model and write one plain HF directory.

    krllm merge runs/npc_lora/adapter --out runs/npc_merged [--base runs/pretrain_tiny/hf]

Why: every downstream consumer (our server, vLLM, llama.cpp/GGUF, MLX, lm-eval) wants a single
checkpoint, not base + adapter. `merge_and_unload` folds B·A·(alpha/r) (and DoRA's magnitude
rescaling) into the weights, so the merged model's logits equal base+adapter's (tested with
assert_close). Works for causal-LM adapters and for sequence-classification adapters (task_type
SEQ_CLS, whose trained `score` head is saved in the adapter).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from krllm.errors import KrllmError
from krllm.runs import atomic_dir, write_json

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def read_adapter_config(adapter_dir: Path) -> dict:
    path = Path(adapter_dir) / "adapter_config.json"
    if not path.is_file():
        raise KrllmError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json); "
                         "point at runs/<name>/adapter")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise KrllmError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None


def resolve_base(adapter_dir: Path, cfg: dict, base: str | None) -> str:
    """--base wins; else the path recorded in adapter_config.json (absolute, or relative to the cwd)."""
    base = base or cfg.get("base_model_name_or_path")
    if not base:
        raise KrllmError(f"{adapter_dir}/adapter_config.json names no base model; pass --base DIR")
    if not Path(base).exists() and Path(base).is_absolute():
        raise KrllmError(f"base model {base} (from adapter_config.json) does not exist; pass --base DIR")
    return base


def load_merged(adapter_dir: str | Path, base: str | None = None, dtype: str = "fp32"):
    """(merged model, tokenizer or None, base path). The model is a plain transformers model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    if cfg.get("peft_type") != "LORA":
        raise KrllmError(f"{adapter_dir}: only LoRA/DoRA adapters merge into the weights "
                         f"(this one is {cfg.get('peft_type')})")
    base = resolve_base(adapter_dir, cfg, base)
    torch_dtype = DTYPES[dtype]
    tok_dir = adapter_dir if (adapter_dir / "tokenizer_config.json").exists() else Path(base)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir) if (tok_dir / "tokenizer_config.json").exists() else None
    if cfg.get("task_type") == "SEQ_CLS":
        model = AutoModelForSequenceClassification.from_pretrained(base, dtype=torch_dtype,
                                                                   **_classifier_kwargs(adapter_dir, tokenizer))
    else:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, adapter_dir)
    merged = model.merge_and_unload()
    return merged, tokenizer, base


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
    merged, tokenizer, base = load_merged(adapter_dir, base, dtype)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        # krllm sft stores the generation config it trained for (stop on <|im_end|>) beside the adapter
        for gen in (adapter_dir / "generation_config.json", Path(base) / "generation_config.json"):
            if gen.exists():
                shutil.copy(gen, tmp / "generation_config.json")
                break
        _top_level_rope_theta(tmp / "config.json")
        write_json(tmp / "merge.json", {"adapter": str(adapter_dir.resolve()), "base": str(base), "dtype": dtype})
    return out


def _top_level_rope_theta(path: Path) -> None:
    """transformers 5 keeps rope_theta inside rope_parameters; mlx-lm reads only the top-level key."""
    cfg = json.loads(path.read_text())
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        path.write_text(json.dumps(cfg, indent=2) + "\n")
