"""PEFT LoRA / DoRA adapters merged into a loaded `Llama`, in memory, without importing peft.

A PEFT adapter directory holds `adapter_config.json` + `adapter_model.safetensors` with keys like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. Merging gives one plain model,
so the engine decodes at base-model speed. Supported (what `krllm sft` and PEFT write):
- LoRA on Linear layers: W += s * B @ A, s = alpha / r (alpha / sqrt(r) with `use_rslora`),
  per-module r / alpha from `rank_pattern` / `alpha_pattern`;
- DoRA on Linear layers: W' = m / ||W + s B A||_row * (W + s B A) (PEFT's merge formula);
- LoRA on the embedding (`lora_embedding_A/B`), saved full layers (`base_layer.weight`) and
  `modules_to_save` copies (e.g. a trained `lm_head`).
A tied lm_head is untied first when the adapter changes either side, matching what PEFT computes.
Anything else is an error that names the key, never a silent partial merge.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from krllm.errors import KrllmError

_PREFIX = "base_model.model."


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def read_adapter_config(path: str | Path) -> dict:
    cfg_path = Path(path) / "adapter_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise KrllmError(f"{cfg_path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise KrllmError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not supported (LoRA / DoRA only)")
    if cfg.get("fan_in_fan_out"):
        raise KrllmError(f"{cfg_path}: fan_in_fan_out=true (GPT-2 Conv1D layers) does not apply to Llama")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise KrllmError(f"{cfg_path}: adapters with trained biases are not supported (bias must be 'none')")
    return cfg


def read_adapter_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    st, binf = path / "adapter_model.safetensors", path / "adapter_model.bin"
    if st.is_file():
        from safetensors.torch import load_file

        return load_file(str(st))
    if binf.is_file():
        return torch.load(binf, map_location="cpu", weights_only=True)
    raise KrllmError(f"{path}: no adapter weights (adapter_model.safetensors or adapter_model.bin)")


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the end of the module name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _scale(cfg: dict, module: str, r: int) -> float:
    alpha = _pattern_value(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


@torch.no_grad()
def merge_adapter(model, adapter_dir: str | Path) -> dict:
    """Merge a PEFT adapter into `model` (our Llama) in place -> summary {"lora": n, "dora": n, "full": n}."""
    adapter_dir = Path(adapter_dir)
    cfg = read_adapter_config(adapter_dir)
    weights = read_adapter_weights(adapter_dir)
    params = dict(model.named_parameters(remove_duplicate=False))

    groups: dict[str, dict[str, torch.Tensor]] = {}  # module name -> {"A", "B", "m", "full"}
    full: dict[str, torch.Tensor] = {}  # parameter name -> replacement tensor
    for key, t in weights.items():
        if not key.startswith(_PREFIX):
            raise KrllmError(f"{adapter_dir}: unexpected adapter key {key!r} (PEFT keys start with {_PREFIX!r})")
        name = key[len(_PREFIX):]
        if m := re.fullmatch(r"(.+)\.lora_(A|B)\.weight", name):
            groups.setdefault(m[1], {})[m[2]] = t
        elif m := re.fullmatch(r"(.+)\.lora_embedding_(A|B)", name):
            groups.setdefault(m[1], {})["E" + m[2]] = t
        elif m := re.fullmatch(r"(.+)\.lora_magnitude_vector(?:\.weight)?", name):
            groups.setdefault(m[1], {})["m"] = t
        elif m := re.fullmatch(r"(.+)\.base_layer\.weight", name):
            full[m[1] + ".weight"] = t
        elif re.fullmatch(r"(.+)\.modules_to_save\.[^.]+\.weight", name):
            full[re.sub(r"\.modules_to_save\.[^.]+", "", name)] = t
        elif name in params:
            full[name] = t
        else:
            raise KrllmError(f"{adapter_dir}: adapter key {key!r} matches no parameter of the base model "
                             "(is this adapter for a different model?)")

    touched = {n.rsplit(".", 1)[0] for n in full} | set(groups)
    if model.config.tie_word_embeddings and touched & {"lm_head", "model.embed_tokens"}:
        model.lm_head.weight = torch.nn.Parameter(model.model.embed_tokens.weight.detach().clone())
        params = dict(model.named_parameters(remove_duplicate=False))

    summary = {"lora": 0, "dora": 0, "full": 0}
    for pname, t in full.items():
        p = params.get(pname)
        if p is None or p.shape != t.shape:
            raise KrllmError(f"{adapter_dir}: saved layer {pname} {tuple(t.shape)} does not fit the base model "
                             f"({'missing' if p is None else tuple(p.shape)})")
        p.copy_(t.to(p.dtype))
        summary["full"] += 1

    for module, g in sorted(groups.items()):
        pname = module + ".weight"
        p = params.get(pname)
        if p is None:
            raise KrllmError(f"{adapter_dir}: adapter targets {module!r}, which the base model does not have")
        w = p.float()
        if "EA" in g or "EB" in g:  # embedding LoRA: A (r, V), B (C, r); delta (V, C)
            if "EA" not in g or "EB" not in g or "m" in g:
                raise KrllmError(f"{adapter_dir}: incomplete or DoRA embedding adapter for {module!r}")
            r = g["EA"].shape[0]
            delta = (g["EB"].float() @ g["EA"].float()).T * _scale(cfg, module, r)
        else:  # linear LoRA: A (r, in), B (out, r); delta (out, in)
            if "A" not in g or "B" not in g:
                raise KrllmError(f"{adapter_dir}: {module!r} has lora_{'A' if 'A' not in g else 'B'} missing")
            r = g["A"].shape[0]
            delta = (g["B"].float() @ g["A"].float()) * _scale(cfg, module, r)
        if delta.shape != w.shape:
            raise KrllmError(f"{adapter_dir}: adapter for {module!r} gives shape {tuple(delta.shape)}, "
                             f"base weight is {tuple(w.shape)}")
        merged = w + delta
        if "m" in g:  # DoRA: rescale each output row to the learned magnitude
            norm = merged.norm(p=2, dim=1)  # (out,)
            merged = (g["m"].float() / norm).unsqueeze(1) * merged
            summary["dora"] += 1
        else:
            summary["lora"] += 1
        p.copy_(merged.to(p.dtype))
    return summary
