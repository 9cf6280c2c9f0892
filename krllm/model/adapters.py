"""PEFT LoRA / DoRA adapters: read, merge into a loaded model in memory (without importing peft), and
record their base model so it is found from any working directory. krllm's one adapter merge:
`krllm.model.load` (generate / chat / serve / eval) and `krllm merge` both call `merge_adapter`.

A PEFT adapter directory holds `adapter_config.json` + `adapter_model.safetensors` with keys like
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`. Any model whose parameter names
are the PEFT keys without `base_model.model.` merges: krllm's Llama, a transformers causal LM, a
transformers sequence classifier (a SEQ_CLS adapter's trained `score` head is a saved full layer).
Merging gives one plain model, so the engine decodes at base-model speed. Supported (what
`krllm sft`, `krllm classify` and PEFT write):
- LoRA on Linear layers: W += s * B @ A, s = alpha / r (alpha / sqrt(r) with `use_rslora`),
  per-module r / alpha from `rank_pattern` / `alpha_pattern`;
- DoRA on Linear layers: W' = m / ||W + s B A||_row * (W + s B A) (PEFT's merge formula);
- LoRA on the embedding (`lora_embedding_A/B`), saved full layers (`base_layer.weight`) and
  `modules_to_save` copies (e.g. a trained `lm_head`).
An mlx-lm adapter directory (`mlx_lm.lora`'s adapters.safetensors + adapter_config.json) reads as the PEFT
adapter it converts to (krllm.model.mlx.peft_view), so every command above takes it as it is.
A tied parameter (lm_head sharing the embedding) is untied first when the adapter changes either
side, matching what PEFT computes; the config then says `tie_word_embeddings: false`, so a saved
merged model keeps both. Anything else is an error that names the key, never a silent partial merge.

    pin_base_path("runs/demo_ko/sft/adapter", "runs/demo_ko/pretrain/hf")   # absolute, from any cwd
    summary = merge_adapter(model, "runs/demo_ko/sft/adapter")              # {"lora": 14, "dora": 0, "full": 0}
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from krllm.errors import KrllmError
from krllm.model.config_facts import text_config
from krllm.runs import read_json_object, write_json

_PREFIX = "base_model.model."
BASE_KEY = "base_model_name_or_path"


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _is_mlx(cfg: dict) -> bool:
    """mlx-lm's adapter_config.json (fine_tune_type / lora_parameters, no peft_type): krllm.model.mlx."""
    return "peft_type" not in cfg and ("fine_tune_type" in cfg or "lora_parameters" in cfg)


def read_adapter_config(path: str | Path) -> dict:
    """adapter_config.json of a LoRA / DoRA adapter; anything we cannot merge is an error naming the file."""
    cfg_path = Path(path) / "adapter_config.json"
    if not cfg_path.is_file():
        raise KrllmError(f"{path} is not a PEFT adapter directory (no adapter_config.json); "
                         "point at runs/<name>/adapter")
    cfg = read_json_object(cfg_path)
    if _is_mlx(cfg):  # an mlx-lm adapter (mlx_lm.lora), seen as the PEFT adapter it converts to
        from krllm.model.mlx import peft_view

        return peft_view(path)[0]
    if cfg.get("peft_type", "LORA") != "LORA":
        raise KrllmError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r} is not supported (only LoRA / DoRA "
                         "adapters merge into the weights)")
    if cfg.get("fan_in_fan_out"):
        raise KrllmError(f"{cfg_path}: fan_in_fan_out=true (GPT-2 Conv1D layers) is not supported")
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
    if is_adapter_dir(path) and _is_mlx(read_json_object(path / "adapter_config.json")):
        from krllm.model.mlx import peft_view

        return peft_view(path)[1]
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


def pin_base_path(adapter_dir: str | Path, base: str | Path) -> Path:
    """Record `base` in adapter_config.json as an absolute path (rewritten atomically) -> that path.

    PEFT records the base as given to `from_pretrained`, usually relative to where training ran;
    an absolute path works from any working directory (`cd /tmp && krllm generate ADAPTER`).
    """
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    cfg = read_adapter_config(adapter_dir)
    pinned = Path(base).resolve()
    if not pinned.is_dir():
        raise KrllmError(f"{cfg_path}: base model {base} is not a directory; nothing to pin")
    cfg[BASE_KEY] = str(pinned)
    write_json(cfg_path, cfg)
    return pinned


def base_candidates(adapter_dir: str | Path, recorded: str) -> list[Path]:
    """Where a recorded base path may be, in the order tried.

    Absolute (krllm's SFT pins it): itself, then, for a project that was moved or copied since
    (`/old/proj/runs/demo_ko/pretrain/hf` recorded, the adapter now in `/new/proj/runs/demo_ko/sft`),
    the recorded path's trailing parts (`pretrain/hf`, `demo_ko/pretrain/hf`, ...) under each parent
    of the adapter, nearest parent and longest tail first. Relative (PEFT stores the path as training
    saw it): the current directory, then the adapter directory and each of its parents, nearest
    first. krllm's runs record e.g. `runs/demo_ko/pretrain/hf` for `runs/demo_ko/sft/adapter`
    (training ran in the directory holding `runs/`), which one of those parents resolves from anywhere.
    A wrong guess cannot merge silently: the adapter's shapes must fit the base (merge_adapter).
    """
    rec = Path(recorded).expanduser()
    adapter = Path(adapter_dir).resolve()
    if rec.is_absolute():
        tails = [Path(*rec.parts[i:]) for i in range(1, len(rec.parts) - 1)]  # longest first, >= 2 parts
        return [rec] + [d / tail for d in adapter.parents for tail in tails]
    return [Path.cwd() / rec] + [d / rec for d in (adapter, *adapter.parents)]


def _owner(model, pname: str):
    """(module, attribute) holding parameter `pname`."""
    module, _, attr = pname.rpartition(".")
    return (model.get_submodule(module) if module else model), attr


def _untie(model, touched: set[str], params: dict) -> bool:
    """Give every touched parameter that shares storage with another name its own copy.

    PEFT computes with the adapter applied to one side only (e.g. a LoRA on `embed_tokens` does
    not change a tied `lm_head`), so the merged model must not write through the tie.
    """
    by_id: dict[int, list[str]] = {}
    for name, p in params.items():
        by_id.setdefault(id(p), []).append(name)
    untied = False
    for names in by_id.values():
        if len(names) > 1 and any(n in touched for n in names):
            for n in names[1:]:  # the first name keeps the original tensor
                module, attr = _owner(model, n)
                setattr(module, attr, torch.nn.Parameter(params[n].detach().clone(), params[n].requires_grad))
            untied = True
    if untied:  # saved models must keep both matrices now
        for cfg in {id(c): c for c in (model.config, text_config(model.config))}.values():
            if getattr(cfg, "tie_word_embeddings", False):
                cfg.tie_word_embeddings = False
    return untied


@torch.no_grad()
def merge_adapter(model, adapter_dir: str | Path) -> dict:
    """Merge a PEFT adapter into `model` in place -> summary {"lora": n, "dora": n, "full": n}.

    `model`: krllm's Llama or a transformers model (any module whose parameter names match the
    adapter's keys without `base_model.model.`). Merge in fp32 for exact results: each merged
    weight is computed in fp32 and stored back in the parameter's dtype.
    """
    adapter_dir = Path(adapter_dir)
    return merge_adapter_weights(model, read_adapter_config(adapter_dir), read_adapter_weights(adapter_dir),
                                 source=str(adapter_dir))


@torch.no_grad()
def merge_adapter_weights(model, cfg: dict, weights: dict[str, torch.Tensor], source: str = "adapter") -> dict:
    """`merge_adapter` on an adapter already in memory: its config (adapter_config.json's dict) and its
    tensors under PEFT's saved names (`get_peft_model_state_dict`), e.g. a live policy's adapter in an RL
    rollout. `source` names it in errors."""
    params = dict(model.named_parameters(remove_duplicate=False))
    groups: dict[str, dict[str, torch.Tensor]] = {}  # module name -> {"A", "B", "m", "full"}
    full: dict[str, torch.Tensor] = {}  # parameter name -> replacement tensor
    for key, t in weights.items():
        if not key.startswith(_PREFIX):
            raise KrllmError(f"{source}: unexpected adapter key {key!r} (PEFT keys start with {_PREFIX!r})")
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
            raise KrllmError(f"{source}: adapter key {key!r} matches no parameter of the base model "
                             "(is this adapter for a different model?)")

    touched = set(full) | {m + ".weight" for m in groups}
    if _untie(model, touched, params):
        params = dict(model.named_parameters(remove_duplicate=False))

    summary = {"lora": 0, "dora": 0, "full": 0}
    for pname, t in full.items():
        p = params.get(pname)
        if p is None or p.shape != t.shape:
            raise KrllmError(f"{source}: saved layer {pname} {tuple(t.shape)} does not fit the base model "
                             f"({'missing' if p is None else tuple(p.shape)})")
        p.copy_(t.to(p.dtype))
        summary["full"] += 1

    for module, g in sorted(groups.items()):
        pname = module + ".weight"
        p = params.get(pname)
        if p is None:
            raise KrllmError(f"{source}: adapter targets {module!r}, which the base model does not have")
        w = p.float()
        if "EA" in g or "EB" in g:  # embedding LoRA: A (r, V), B (C, r); delta (V, C)
            if "EA" not in g or "EB" not in g or "m" in g:
                raise KrllmError(f"{source}: incomplete or DoRA embedding adapter for {module!r}")
            r = g["EA"].shape[0]
            delta = (g["EB"].float() @ g["EA"].float()).T * _scale(cfg, module, r)
        else:  # linear LoRA: A (r, in), B (out, r); delta (out, in)
            if "A" not in g or "B" not in g:
                raise KrllmError(f"{source}: {module!r} has lora_{'A' if 'A' not in g else 'B'} missing")
            r = g["A"].shape[0]
            delta = (g["B"].float() @ g["A"].float()) * _scale(cfg, module, r)
        if delta.shape != w.shape:
            raise KrllmError(f"{source}: adapter for {module!r} gives shape {tuple(delta.shape)}, "
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
