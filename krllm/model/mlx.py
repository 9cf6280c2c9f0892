"""mlx-lm's files seen from PyTorch: adapters <-> PEFT adapters, exactly, both ways, and the config keys
mlx-lm reads (no mlx import: torch + safetensors only, so an MLX-trained adapter moves to a GPU machine
without MLX). krllm.model.adapters reads mlx-lm adapter directories through `peft_view`;
`krllm adapter convert` (krllm.export.adapter) writes either format.

An mlx-lm adapter directory (what `mlx_lm.lora` writes) holds
  adapter_config.json   {"fine_tune_type": lora|dora|full, "num_layers": N, "model": BASE,
                         "lora_parameters": {"rank": r, "scale": s, "dropout": p, "keys": [...]}}
  adapters.safetensors  model.layers.3.self_attn.q_proj.lora_a (in, r), .lora_b (r, out), .m (out,) [dora]
and computes, per adapted Linear (mlx_lm/tuner/lora.py, dora.py):
  LoRA  y = W x + b + s * (x @ lora_a) @ lora_b
  DoRA  y = m / ||W + s lora_b^T lora_a^T||_row * (W x + s (x @ lora_a) @ lora_b) + b
PEFT computes the same with lora_A.weight (r, in) = lora_a^T, lora_B.weight (out, r) = lora_b^T,
scaling = lora_alpha / r (alpha / sqrt(r) with use_rslora) and `lora_magnitude_vector` = m (the same
per-output-row norm). So conversion transposes A and B, carries m as it is, and maps
scale <-> alpha: alpha = s * r (use_rslora off) one way, s = PEFT's scaling the other way.

Layer selection: mlx-lm adapts the `keys` (paths inside a block, e.g. self_attn.q_proj) of the last
`num_layers` blocks (-1: all); PEFT names target_modules + layers_to_transform. Tensor names carry the
layer index, so conversion keeps exactly the adapted modules; a module mlx-lm creates but the file does
not hold keeps its initial value, which is the identity (lora_b = 0, m = ||W||), so widening the layer
range to mlx-lm's "last N" never changes the output.

Not convertible (an error names the file and key): per-module ranks or alphas (PEFT rank_pattern /
alpha_pattern: mlx-lm has one rank and one scale), LoRA on embeddings (mlx-lm applies it to a tied
output head as well, PEFT does not), saved full layers (modules_to_save), and an mlx-lm `full` fine-tune
to PEFT (it is not an adapter; `krllm merge` / the loader take it: `peft_view` maps it to full layers).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch

from krllm.errors import KrllmError
from krllm.runs import atomic_dir, read_json_object, write_json

CONFIG = "adapter_config.json"
MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
FINE_TUNE_TYPES = ("lora", "dora", "full")
_PREFIX = "base_model.model."
_LAYER = re.compile(r"(?P<stem>.*\.layers)\.(?P<idx>\d+)\.(?P<rel>.+)")  # model.layers.3.self_attn.q_proj
_MLX_KEYS = ("fine_tune_type", "lora_parameters")  # PEFT configs have neither


# ---------------------------------------------------------------- reading

def is_mlx_config(cfg: dict) -> bool:
    return any(k in cfg for k in _MLX_KEYS) and "peft_type" not in cfg


def is_mlx_adapter_dir(path: str | Path) -> bool:
    """An mlx-lm adapter directory: adapter_config.json in mlx-lm's format, or adapters.safetensors alone."""
    path = Path(path)
    cfg_path = path / CONFIG
    if cfg_path.is_file():
        return is_mlx_config(read_json_object(cfg_path))
    return (path / MLX_WEIGHTS).is_file()


def read_mlx_config(path: str | Path) -> dict:
    """adapter_config.json of an mlx-lm adapter, checked: every problem names the file and key."""
    path = Path(path)
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        hint = f" ({MLX_WEIGHTS} is there; copy the adapter_config.json mlx_lm.lora wrote beside it)" \
            if (path / MLX_WEIGHTS).is_file() else ""
        raise KrllmError(f"{cfg_path} not found: an mlx-lm adapter directory needs it{hint}")
    cfg = read_json_object(cfg_path)
    kind = cfg.get("fine_tune_type", "lora")  # mlx-lm's own default when the key is absent
    if kind not in FINE_TUNE_TYPES:
        raise KrllmError(f"{cfg_path}: fine_tune_type {kind!r} is unknown (mlx-lm writes one of "
                         f"{', '.join(FINE_TUNE_TYPES)})")
    n = cfg.get("num_layers")
    if not isinstance(n, int) or isinstance(n, bool):
        raise KrllmError(f"{cfg_path}: num_layers must be an integer (-1 = all blocks), got {n!r}")
    if kind != "full":
        lp = cfg.get("lora_parameters")
        if not isinstance(lp, dict):
            raise KrllmError(f"{cfg_path}: lora_parameters must be an object with rank and scale")
        for key in ("rank", "scale"):
            if not isinstance(lp.get(key), (int, float)) or isinstance(lp.get(key), bool):
                raise KrllmError(f"{cfg_path}: lora_parameters.{key} must be a number, got {lp.get(key)!r}"
                                 + (" (mlx-lm uses scale, not alpha: scale = alpha / rank)"
                                    if key == "scale" and "alpha" in lp else ""))
    return cfg


def read_mlx_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    file = Path(path) / MLX_WEIGHTS
    if not file.is_file():
        raise KrllmError(f"{file} not found: an mlx-lm adapter directory holds its weights there")
    return load_file(str(file))


# ---------------------------------------------------------------- mlx-lm -> PEFT

def _module_groups(weights: dict[str, torch.Tensor], leaves: tuple[str, ...], source: str) -> dict[str, dict]:
    """{"model.layers.0.self_attn.q_proj": {"lora_a": t, ...}}; any other leaf is an error naming the key."""
    groups: dict[str, dict] = {}
    for key, t in weights.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in leaves or not module:
            raise KrllmError(f"{source}: tensor {key!r} is not an adapter weight (expected names ending in "
                             f"{', '.join('.' + x for x in leaves)})")
        groups.setdefault(module, {})[leaf] = t
    return groups


def _check_not_embedding(module: str, source: str) -> None:
    if module.split(".")[-1] in ("embed_tokens", "wte", "embeddings"):
        raise KrllmError(f"{source}: {module} is an embedding adapter, which is not converted (mlx-lm also "
                         "applies it to a tied output head, PEFT does not); adapt Linear layers only")


def _target_spec(modules: list[str]) -> tuple[list[str], list[int] | None]:
    """PEFT target_modules (+ layers_to_transform) naming exactly `modules`: short names over a range of
    blocks when the adapted set is every short name in every one of those blocks, else full names."""
    parsed = [_LAYER.fullmatch(m) for m in modules]
    if all(parsed):
        rels = sorted({p["rel"] for p in parsed})
        idxs = sorted({int(p["idx"]) for p in parsed})
        short = sorted({r.split(".")[-1] for r in rels})
        if len(short) == len(rels) and len(modules) == len(rels) * len(idxs):
            return short, idxs
    return sorted(modules), None


def peft_view(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """An mlx-lm adapter directory as PEFT would save it: (adapter_config dict, tensors under PEFT's names).

    A `full` fine-tune maps to saved full layers (what krllm's merge folds in; PEFT itself cannot load it).
    """
    path = Path(path)
    cfg = read_mlx_config(path)
    weights = read_mlx_weights(path)
    source = str(path / MLX_WEIGHTS)
    kind = cfg.get("fine_tune_type", "lora")
    base = cfg.get("model")
    peft_cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base,
                "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "rank_pattern": {},
                "alpha_pattern": {}, "modules_to_save": None, "use_rslora": False}
    if kind == "full":
        return peft_cfg | {"krllm_full": True}, {_PREFIX + k: t for k, t in weights.items()}
    lp = cfg["lora_parameters"]
    rank, scale = int(lp["rank"]), float(lp["scale"])
    groups = _module_groups(weights, ("lora_a", "lora_b", "m"), source)
    if not groups:
        raise KrllmError(f"{source}: no adapter tensors (lora_a / lora_b) in the file")
    out: dict[str, torch.Tensor] = {}
    for module, g in sorted(groups.items()):
        _check_not_embedding(module, source)
        if "lora_a" not in g or "lora_b" not in g:
            raise KrllmError(f"{source}: {module} has {'lora_b' if 'lora_a' in g else 'lora_a'} but not "
                             f"{'lora_a' if 'lora_a' in g else 'lora_b'}")
        a, b = g["lora_a"], g["lora_b"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise KrllmError(f"{source}: {module}.lora_a {tuple(a.shape)} / lora_b {tuple(b.shape)} do not have "
                             f"rank {rank} (lora_parameters.rank in {path / CONFIG}); expected (in, r) and (r, out)")
        if ("m" in g) != (kind == "dora"):
            raise KrllmError(f"{source}: {module} {'has' if 'm' in g else 'lacks'} a DoRA magnitude .m but "
                             f"{path / CONFIG} says fine_tune_type {kind!r}")
        out[f"{_PREFIX}{module}.lora_A.weight"] = a.T.contiguous()
        out[f"{_PREFIX}{module}.lora_B.weight"] = b.T.contiguous()
        if "m" in g:
            out[f"{_PREFIX}{module}.lora_magnitude_vector"] = g["m"].contiguous()
    targets, layers = _target_spec(list(groups))
    peft_cfg.update(r=rank, lora_alpha=scale * rank, lora_dropout=float(lp.get("dropout", 0.0)),
                    use_dora=kind == "dora", target_modules=targets, layers_to_transform=layers)
    return peft_cfg, out


# ---------------------------------------------------------------- PEFT -> mlx-lm

def _peft_scale(cfg: dict, cfg_path: Path) -> tuple[int, float]:
    """(rank, mlx-lm scale) of a PEFT config; per-module ranks / alphas cannot be expressed in mlx-lm."""
    for key in ("rank_pattern", "alpha_pattern"):
        if cfg.get(key):
            raise KrllmError(f"{cfg_path}: {key} {cfg[key]} gives modules their own rank / alpha, which mlx-lm "
                             "cannot express (one lora_parameters.rank and scale for all)")
    r, alpha = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    return r, (alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r)


def mlx_view(path: str | Path, cfg: dict, weights: dict[str, torch.Tensor],
             num_hidden_layers: int | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """A PEFT LoRA / DoRA adapter (its adapter_config dict and tensors, as krllm.model.adapters reads them from
    `path`) as mlx-lm would save it: (adapter_config dict, tensors).

    num_hidden_layers: the base model's block count, for mlx-lm's `num_layers` (adapt the last N blocks);
    None writes -1 (all blocks), equally exact (blocks without tensors stay the identity) but slower.
    """
    path = Path(path)
    cfg_path = path / CONFIG
    if cfg.get("task_type", "CAUSAL_LM") != "CAUSAL_LM":
        raise KrllmError(f"{cfg_path}: task_type {cfg.get('task_type')!r}: only causal-LM adapters run in mlx-lm")
    rank, scale = _peft_scale(cfg, cfg_path)
    groups: dict[str, dict] = {}
    for key, t in weights.items():
        m = re.fullmatch(re.escape(_PREFIX) + r"(.+)\.(lora_A\.weight|lora_B\.weight|lora_magnitude_vector"
                         r"(?:\.weight)?)", key)
        if m is None:
            raise KrllmError(f"{path}: adapter key {key!r} is not a LoRA / DoRA weight of a Linear layer (saved "
                             "full layers and embedding adapters have no mlx-lm equivalent)")
        groups.setdefault(m[1], {})[m[2].split(".")[0]] = t
    out: dict[str, torch.Tensor] = {}
    layer_idx, keys = [], set()
    for module, g in sorted(groups.items()):
        _check_not_embedding(module, str(path))
        if "lora_A" not in g or "lora_B" not in g:
            raise KrllmError(f"{path}: {module} has only {sorted(g)}; lora_A and lora_B are both needed")
        if g["lora_A"].shape[0] != rank:
            raise KrllmError(f"{path}: {module}.lora_A has rank {g['lora_A'].shape[0]}, {cfg_path} says r={rank}")
        out[f"{module}.lora_a"] = g["lora_A"].T.contiguous()
        out[f"{module}.lora_b"] = g["lora_B"].T.contiguous()
        if "lora_magnitude_vector" in g:
            out[f"{module}.m"] = g["lora_magnitude_vector"].reshape(-1).contiguous()
        if p := _LAYER.fullmatch(module):
            layer_idx.append(int(p["idx"]))
            keys.add(p["rel"])
        else:
            keys.add(module)  # a module outside the blocks (e.g. lm_head): mlx-lm matches it by full name
    dora = any(k.endswith(".m") for k in out)
    if dora and not all(f"{m}.m" in out for m in groups):
        raise KrllmError(f"{path}: some modules have a DoRA magnitude and some do not")
    if num_hidden_layers is not None and layer_idx and max(layer_idx) >= num_hidden_layers:
        raise KrllmError(f"{path}: adapts block {max(layer_idx)} but the base model has {num_hidden_layers} blocks "
                         "(is this adapter for a different model?)")
    num_layers = num_hidden_layers - min(layer_idx) if (num_hidden_layers and layer_idx) else -1
    mlx_cfg = {"fine_tune_type": "dora" if dora else "lora", "num_layers": num_layers,
               "model": cfg.get("base_model_name_or_path"),
               "lora_parameters": {"rank": rank, "scale": scale, "dropout": float(cfg.get("lora_dropout", 0.0)),
                                   "keys": sorted(keys)},
               "converted_from": "peft"}
    return mlx_cfg, out


# ---------------------------------------------------------------- writing, config keys

def write_adapter_dir(out: str | Path, cfg: dict, tensors: dict[str, torch.Tensor], to: str,
                      copy_from: str | Path | None = None) -> Path:
    """An adapter directory in `to` format ("peft" | "mlx"), written atomically; tokenizer and generation
    config files of `copy_from` travel along (krllm's SFT saves the chat template it trained with there)."""
    import shutil

    from safetensors.torch import save_file

    from krllm.model.hf import TOKENIZER_FILES

    name, meta = (PEFT_WEIGHTS, {"format": "pt"}) if to == "peft" else (MLX_WEIGHTS, {"format": "mlx"})
    with atomic_dir(out) as tmp:
        save_file(tensors, str(tmp / name), metadata=meta)
        write_json(tmp / CONFIG, cfg)
        if copy_from is not None:
            for f in (*TOKENIZER_FILES, "generation_config.json"):
                if (Path(copy_from) / f).is_file():
                    shutil.copy2(Path(copy_from) / f, tmp / f)
    return Path(out)


def mlx_rope_keys(config: dict) -> dict:
    """The top-level RoPE keys mlx-lm reads, taken from transformers 5's `rope_parameters` when absent
    (mlx-lm reads only the top level and otherwise silently uses its default base, 10000 for Llama)."""
    fixes = {}
    rope = config.get("rope_parameters") or {}
    if "rope_theta" not in config and rope.get("rope_theta") is not None:
        fixes["rope_theta"] = rope["rope_theta"]
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default" and not config.get("rope_scaling"):
        fixes["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    return fixes
