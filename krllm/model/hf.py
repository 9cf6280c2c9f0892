"""Our Llama <-> Hugging Face directories (config.json + model.safetensors + generation_config.json
+ tokenizer files): the interchange format between every krllm stage and the rest of the ecosystem.

    save_hf(model, "runs/x/hf", tokenizer_dir="runs/tok")      # AutoModelForCausalLM loads it
    model = load_hf("runs/x/hf")                                # ours, or any local HF Llama / Qwen2 dir

A Qwen2 / Qwen2.5 directory loads into the same `Llama` with q/k/v biases (`attention_bias`), and
such a model is saved as model_type qwen2 (`Qwen2ForCausalLM`), biases included.

Loading is strict: every tensor the model needs must be in the files and every tensor in the files
must be used (the message lists both sides), and a tokenizer larger than the embedding is an error.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from krllm.config import ConfigError
from krllm.errors import KrllmError
from krllm.model.config import ModelConfig
from krllm.model.llama import Llama
from krllm.runs import atomic_dir, read_json_object, write_json

# Files that make up a tokenizer directory (copied by save_hf, nothing else is).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model",
)
# Non-persistent buffers some older HF checkpoints still carry; safe to drop on load.
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 / None -> torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "float": "float32"}
    name = aliases.get(dtype, dtype)
    if name not in _DTYPES:
        raise KrllmError(f"unknown dtype {dtype!r}: use float32/fp32, bfloat16/bf16 or float16/fp16")
    return _DTYPES[name]


def tokenizer_vocab_size(directory: str | Path) -> int | None:
    """Vocabulary size including added/special tokens of the tokenizer.json in `directory` (None if absent)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as e:  # the tokenizers library raises a bare Exception on malformed files
        raise KrllmError(f"{path}: cannot read tokenizer ({e})") from None


def _generation_eos(cfg: ModelConfig, tokenizer_dir: Path | None) -> list[int] | int | None:
    """generation_config.json's eos ids: krllm's one stop-id rule (the tokenizer's end-of-turn token,
    e.g. `<|im_end|>`, and the config's eos ids), so chat generation stops at the turn end."""
    from krllm.data.tokens.chat_tokens import stop_ids

    tok = tokenizer_dir / "tokenizer.json" if tokenizer_dir else None
    tokenizer = None
    if tok is not None and tok.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(tok))
    ids = stop_ids(tokenizer, config=cfg)
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else ids


def save_hf(
    model: Llama,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    eos_token_id: int | list[int] | None = None,
) -> Path:
    """Write `model` as an HF Llama (or, with q/k/v biases, Qwen2) directory, atomically (a reader never
    sees half of it).

    dtype: weights are stored in this dtype (default: as they are in memory).
    eos_token_id: ids in generation_config.json; default = config eos + `<|im_end|>` if the tokenizer has it.
    A tied lm_head is not stored (transformers re-ties it from the embedding, as it does itself).
    """

    for _ in range(3):  # torch.compile (`_orig_mod`) and DDP (`module`) wrappers, possibly nested
        if not isinstance(model, Llama):
            model = getattr(model, "_orig_mod", None) or getattr(model, "module", model)
    if not isinstance(model, Llama):
        raise KrllmError(f"save_hf expects a krllm Llama, got {type(model).__name__}")
    cfg = model.config
    dtype = parse_dtype(dtype)
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    if tok_dir is not None:
        if not tok_dir.is_dir():
            raise KrllmError(f"tokenizer directory {tok_dir} does not exist")
        n = tokenizer_vocab_size(tok_dir)
        if n is not None and n > cfg.vocab_size:
            raise KrllmError(f"{tok_dir}/tokenizer.json has {n} tokens but the model's vocab_size is "
                             f"{cfg.vocab_size}: token ids >= {cfg.vocab_size} would have no embedding")
    tensors = {}
    for name, t in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        t = t.detach()
        tensors[name] = (t.to(dtype) if dtype is not None else t).contiguous().cpu()
    stored = dtype or next(iter(tensors.values())).dtype
    hf_config = cfg.to_hf_dict()
    hf_config["dtype"] = _dtype_name(stored)
    return write_hf_dir(out_dir, tensors, hf_config, cfg, tok_dir, eos_token_id=eos_token_id)


def write_hf_dir(out_dir: str | Path, tensors: dict, hf_config: dict, cfg, tok_dir: Path | None,
                 eos_token_id: int | list[int] | None = None, metadata: dict | None = None) -> Path:
    """One HF model directory, written atomically: model.safetensors, config.json, generation_config.json
    (eos: given, else the model's end-of-turn ids) and the tokenizer files of `tok_dir`."""
    from safetensors.torch import save_file

    gen = {"bos_token_id": cfg.bos_token_id, "pad_token_id": cfg.pad_token_id,
           "eos_token_id": eos_token_id if eos_token_id is not None else _generation_eos(cfg, tok_dir)}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", **(metadata or {})})
        write_json(tmp / "config.json", hf_config)
        write_json(tmp / "generation_config.json", gen)
        if tok_dir is not None:
            for name in TOKENIZER_FILES:
                if (tok_dir / name).is_file():
                    shutil.copy2(tok_dir / name, tmp / name)
    return Path(out_dir)


def config_from_hf_dir(path: str | Path) -> ModelConfig:
    """ModelConfig of an HF Llama / Qwen2 directory's config.json (errors name the file and key)."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise KrllmError(f"{path} is not a model directory: config.json not found")
    data = read_json_object(cfg_path)
    try:
        return ModelConfig.from_hf_dict(data, source=str(cfg_path))
    except ConfigError as e:
        raise KrllmError(str(e)) from None


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a directory: model.safetensors, a sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file

    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(str(single))
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        if not isinstance(weight_map, dict):
            raise KrllmError(f"{index}: no 'weight_map' object")
        tensors: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise KrllmError(f"{index} lists shard {shard}, which is missing from {path}")
            tensors.update(load_file(str(path / shard)))
        return tensors
    bin_file = path / "pytorch_model.bin"
    if bin_file.is_file():
        return torch.load(bin_file, map_location="cpu", weights_only=True)
    raise KrllmError(f"{path}: no weights found (model.safetensors, model.safetensors.index.json "
                     "or pytorch_model.bin)")


def load_hf(path: str | Path, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None) -> Llama:
    """Load our or any local HF Llama / Qwen2 directory into `Llama`, strictly (q/k/v biases too).

    dtype: None keeps the stored dtype of the weights; otherwise they are cast on load.
    """
    path = Path(path)
    cfg = config_from_hf_dir(path)
    n_tok = tokenizer_vocab_size(path)
    if n_tok is not None and n_tok > cfg.vocab_size:
        raise KrllmError(f"{path}: tokenizer has {n_tok} tokens but config.json vocab_size is {cfg.vocab_size} "
                         "(tokenizer and model do not belong together)")
    dtype = parse_dtype(dtype)
    state = {k: v for k, v in _read_state_dict(path).items() if not k.endswith(_IGNORED_SUFFIXES)}
    with torch.device("meta"):
        model = Llama(cfg)
    expected = {k: v for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
        state.pop("lm_head.weight", None)  # some tied checkpoints store it anyway; the embedding wins
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                   for k in sorted(set(expected) & set(state)) if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        lines = [f"{path}: weights do not match config.json"]
        if missing:
            lines.append(f"  missing ({len(missing)}): " + ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if unexpected:
            lines.append(f"  unexpected ({len(unexpected)}): " + ", ".join(unexpected[:20])
                         + (" ..." if len(unexpected) > 20 else ""))
        if wrong_shape:
            lines.append("  wrong shape: " + "; ".join(wrong_shape[:20]))
        raise KrllmError("\n".join(lines))
    state = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.model.rotary_emb.to_empty(device=device)
    model.model.rotary_emb.reset_tables(cfg.max_position_embeddings, torch.device(device))
    return model


def load_transformers(path: str | Path, device: str | torch.device = "cpu",
                      dtype: str | torch.dtype | None = None):
    """Any local causal LM through transformers' AutoModelForCausalLM (the registry's catch-all family).

    dtype: None keeps the stored dtype (transformers' "auto"); errors name the directory.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    dtype = parse_dtype(dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype or "auto", local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise KrllmError(f"{path}: transformers cannot load this model ({e})") from None
    return model.to(device).eval()


def top_level_rope_theta(config_json: str | Path) -> None:
    """Copy `rope_parameters.rope_theta` to a top-level `rope_theta` in a config.json written by
    transformers 5: mlx-lm (and transformers 4) read only the top-level key and silently use 10000."""
    path = Path(config_json)
    cfg = json.loads(path.read_text(encoding="utf-8"))
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in cfg:
        cfg["rope_theta"] = theta
        write_json(path, cfg)
