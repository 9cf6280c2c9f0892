"""Shared by tests/test_mlx_*.py: tiny bases mlx-lm loads, PEFT adapters with random (nonzero) weights,
mlx-lm adapters made by mlx-lm's own code, and logits from each side as float64 numpy arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from krllm.infer.testing import tiny_model_dir, tiny_tokenizer_dir
from krllm.model.hf import top_level_rope_theta

PROMPT = [5, 17, 42, 99, 7, 123, 64, 250, 11, 3, 200, 31]


def llama_base(tmp: Path) -> Path:
    """krllm's tiny GQA Llama (tied embeddings), rope_theta 5e5 so a reader that drops it is caught."""
    return tiny_model_dir(tmp / "llama", seed=1, rope_theta=5e5)


def qwen2_base(tmp: Path) -> Path:
    """A tiny transformers Qwen2 with nonzero q/k/v biases, untied head, rope_theta 2e5 (not mlx-lm's 1e6
    default), as transformers 5 saves it plus the top-level rope_theta mlx-lm reads."""
    from transformers import AutoTokenizer

    from krllm.infer.testing import random_qwen2

    tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir(tmp / "qwen2_tok")))
    hf = random_qwen2(len(tok), layers=3, rope_theta=2e5)
    out = tmp / "qwen2"
    hf.save_pretrained(out)
    tok.save_pretrained(out)
    top_level_rope_theta(out / "config.json")
    return out


def torch_logits(model, ids=PROMPT) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    logits = out.logits if hasattr(out, "logits") else out[0]
    return logits[0].double().numpy()


def mlx_logits(model, ids=PROMPT) -> np.ndarray:
    import mlx.core as mx

    out = model(mx.array([ids])).astype(mx.float32)
    return np.array(out[0]).astype(np.float64)


def mlx_model(base: Path, adapter: Path | None = None):
    """mlx-lm's own load (+ load_adapters), fp32 weights as stored."""
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(base))
    if adapter is not None:
        load_adapters(model, str(adapter))
    model.eval()
    return model


def peft_adapter(base: Path, out: Path, dora: bool = False, rslora: bool = False, layers=None,
                 targets=("q_proj", "v_proj", "o_proj", "down_proj"), seed: int = 0):
    """A PEFT adapter on `base` with random nonzero lora_B (and perturbed DoRA magnitudes), saved at `out`
    -> (the live PeftModel in eval mode, out)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=12, target_modules=list(targets), use_dora=dora, use_rslora=rslora,
                     layers_to_transform=layers, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif "lora_magnitude_vector" in name:
                p.mul_(0.5 + torch.rand(p.shape, generator=g))
    peft_model.save_pretrained(str(out))
    return peft_model.eval(), out


def mlx_adapter(base: Path, out: Path, fine_tune_type: str = "lora", num_layers: int = 1,
                keys=None, rank: int = 4, scale: float = 2.5, seed: int = 0):
    """An mlx-lm adapter made by mlx-lm's linear_to_lora_layers, random lora_b (and m), saved as
    mlx_lm.lora saves it -> (the live mlx model in eval mode, out)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = mlx_model(base)
    model.freeze()
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        params["keys"] = list(keys)
    linear_to_lora_layers(model, num_layers, params, use_dora=fine_tune_type == "dora")
    mx.random.seed(seed)
    updates = []
    for name, p in tree_flatten(model.trainable_parameters()):
        if name.endswith("lora_b"):
            updates.append((name, mx.random.normal(p.shape) * 0.3))
        elif name.endswith(".m"):
            updates.append((name, p * (0.5 + mx.random.uniform(shape=p.shape))))
    model.load_weights(updates, strict=False)
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters())))
    (out / "adapter_config.json").write_text(json.dumps({
        "model": str(base), "fine_tune_type": fine_tune_type, "num_layers": num_layers,
        "lora_parameters": params, "batch_size": 4, "iters": 100, "optimizer": "adam"}))
    model.eval()
    return model, out
