"""Open a model directory for inference: weights (+ a PEFT adapter merged in) and its tokenizer.

Accepts what krllm writes and what people download:
- an HF model directory (`runs/x/hf`, a merged model, any local checkpoint): loaded by the family
  its config.json's model_type names (krllm.model.registry: krllm's Llama, else transformers);
- a PEFT adapter directory (`runs/x/adapter`, or a fine-tuning run dir containing `adapter/`):
  the base comes from `--base` or the adapter's `base_model_name_or_path`;
- a run directory containing `hf/`.

    lm = load_for_inference("runs/demo/sft")
    ids = lm.encode_chat([{"role": "user", "content": "안녕"}])    # ChatML + generation prompt
    engine = Engine(lm.model, eos_ids=lm.eos_ids)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from krllm.errors import KrllmError
from krllm.infer.adapters import is_adapter_dir, merge_adapter, read_adapter_config
from krllm.infer.hf_runner import config_eos_ids


@dataclass
class LoadedModel:
    """A model ready to generate with, plus what turns text into ids and back."""

    model: torch.nn.Module
    tokenizer: object  # transformers PreTrainedTokenizerFast
    name: str  # id shown by /v1/models
    path: Path
    eos_ids: list[int]
    adapter: Path | None = None
    info: dict = field(default_factory=dict)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """messages [{"role", "content"}] -> prompt ids with the tokenizer's chat template."""
        if not self.has_chat_template:
            raise KrllmError(f"{self.path}: the tokenizer has no chat_template, so chat is not available "
                             "(use `krllm generate` / the completions endpoint, or a krllm tokenizer)")
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                 tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory -> the directory holding the model (adapter/ of a fine-tune, else hf/)."""
    path = Path(path)
    if not path.exists():
        raise KrllmError(f"{path} does not exist (give an HF model directory, an adapter directory or a run directory)")
    if (path / "config.json").is_file() or is_adapter_dir(path):
        return path
    for sub in ("adapter", "hf", "merged"):
        if (path / sub / "config.json").is_file() or is_adapter_dir(path / sub):
            return path / sub
    raise KrllmError(f"{path}: no config.json or adapter_config.json here, nor in {path}/adapter, "
                     f"{path}/hf or {path}/merged")


def _eos_ids(model_dir: Path, cfg, tokenizer) -> list[int]:
    """Every id that should end generation: generation_config.json, config.json, tokenizer eos, <|im_end|>."""
    ids: list[int] = []
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text(encoding="utf-8")).get("eos_token_id")
        ids.extend([eos] if isinstance(eos, int) else (eos or []))
    ids.extend(config_eos_ids(cfg))
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.append(im_end)
    return sorted(set(ids))


def _inference_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """-> (dtype to cast to, a few words on why) for `--dtype` auto / fp32 / bf16 / fp16."""
    from krllm.device import cpu_supports_bf16, pick_dtype

    try:
        target = pick_dtype(requested, device)
    except ValueError as e:
        raise KrllmError(str(e)) from None
    if requested != "auto":
        return target, "as requested"
    if target == torch.bfloat16 and device.type == "cpu":
        return target, "auto: this CPU multiplies bf16 natively; --dtype fp32 for full precision"
    if device.type == "cpu" and not cpu_supports_bf16():
        return target, "auto: this CPU has no native bf16"
    return target, f"auto for {device.type}"


def load_for_inference(path: str | Path, base: str | Path | None = None, device: str = "auto",
                       dtype: str | None = None, name: str | None = None) -> LoadedModel:
    """Load weights (merging an adapter if `path` is one) and the tokenizer; errors name the path.

    dtype: None keeps the dtype the weights were saved in; fp32 / bf16 / fp16 cast them; "auto"
    picks what this device multiplies fastest (krllm.device.pick_dtype: bf16 on CUDA and on CPUs
    with native bf16, where decoding reads half the bytes and runs ~2x faster; fp32 elsewhere).
    The choice is recorded in `info["dtype"]` and shown by `describe`.
    """
    from transformers import AutoTokenizer

    from krllm.device import pick_device
    from krllm.model.registry import family_for, model_type_of

    def load_hf(d: Path, device: str, dtype):  # krllm's Llama, or transformers for other families
        return family_for(model_type_of(d)).load_model(d, device=device, dtype=dtype)

    model_dir = resolve_model_dir(path)
    dev = pick_device(device)
    adapter = None
    if is_adapter_dir(model_dir):
        adapter = model_dir
        acfg = read_adapter_config(adapter)
        recorded = acfg.get("base_model_name_or_path")
        base_dir = Path(base) if base else Path(recorded or "")
        if not (base or recorded) or not base_dir.is_dir():
            raise KrllmError(f"{adapter} is an adapter whose base model {str(base or recorded)!r} is not a "
                             "local directory: pass the base model directory with --base DIR")
        base_dir = resolve_model_dir(base_dir)
        model = load_hf(base_dir, device="cpu", dtype=None)
        info = merge_adapter(model, adapter)  # merged in the stored dtype on CPU, then moved
        model = model.to(device=dev)
        tok_dir = adapter if (adapter / "tokenizer.json").is_file() else base_dir
        cfg_dir = base_dir
    else:
        model = load_hf(model_dir, device=str(dev), dtype=None)
        info, tok_dir, cfg_dir = {}, model_dir, model_dir
    if dtype is not None:
        target, why = _inference_dtype(dtype, dev)
        model = model.to(target)
        info = {**info, "dtype": why}
    if not (tok_dir / "tokenizer.json").is_file() and not (tok_dir / "tokenizer_config.json").is_file():
        raise KrllmError(f"{tok_dir}: no tokenizer files (tokenizer.json); save the model with its tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    n_tok = len(tokenizer)
    if n_tok > model.config.vocab_size:
        raise KrllmError(f"{tok_dir}: tokenizer has {n_tok} tokens but the model's vocab_size is "
                         f"{model.config.vocab_size} (they do not belong together)")
    model.eval()
    label = name or (Path(path).resolve().name if Path(path).resolve().name not in ("hf", "adapter")
                     else Path(path).resolve().parent.name)
    return LoadedModel(model=model, tokenizer=tokenizer, name=label, path=model_dir,
                       eos_ids=_eos_ids(cfg_dir, model.config, tokenizer), adapter=adapter, info=info)


def make_engine(lm: LoadedModel, max_batch: int = 1, max_seq_len: int = 0):
    """An Engine for `lm`: max_seq_len 0 = the model's max_position_embeddings."""
    from krllm.infer.engine import Engine

    return Engine(lm.model, max_batch=max_batch, max_seq_len=max_seq_len or None, eos_ids=lm.eos_ids)


def describe(lm: LoadedModel, engine) -> str:
    """One start-up line: what runs where, in which dtype, with how much KV cache."""
    p = next(lm.model.parameters())
    n = sum(t.numel() for t in {id(t): t for t in lm.model.parameters()}.values())
    kv_mb = engine.runner.cache.nbytes() / 2**20
    extra = f" + adapter {lm.adapter}" if lm.adapter else ""
    why = f" ({lm.info['dtype']})" if lm.info.get("dtype") else ""
    return (f"{lm.path}{extra}: {n / 1e6:.2f}M params, {str(p.dtype).removeprefix('torch.')}{why} on {p.device}, "
            f"{engine.max_batch} slot(s) x {engine.max_seq_len} tokens (KV cache {kv_mb:.0f} MiB), "
            f"decoding: {engine.runner.decode_path}, stop ids {sorted(engine.eos_ids)}")
