"""THE loader: an HF model directory, a PEFT adapter directory or a run directory -> one `LoadedModel`.

generate, chat, serve, eval, merge and the pipeline all open models here, so every command sees the
same weights, tokenizer, stop ids and dtype for the same path.

    lm = load("runs/demo_ko/sft")                      # serves sft/merged (see resolve_model_dir)
    lm = load("runs/demo_ko/sft/adapter", dtype="auto")  # base + adapter merged in memory
    ids = lm.encode_chat([{"role": "user", "content": "안녕"}])   # chat template + generation prompt
    lm.stop_ids                                         # krllm.data.tokens.chat_tokens.stop_ids: one rule

Weights load through the architecture registry (`krllm.model.registry`): `model_type: llama` gives
krllm's own Llama (the fast path), anything else a transformers model. An adapter is merged into its
base in memory by `krllm.model.adapters.merge_adapter` (no peft import), so decoding runs at
base-model speed; its base is found from any working directory (`resolve_base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from krllm.data.tokens.chat_tokens import generation_prompt_ids
from krllm.errors import KrllmError
from krllm.model.adapters import (
    BASE_KEY,
    base_candidates,
    is_adapter_dir,
    merge_adapter,
    read_adapter_config,
)
from krllm.model.config_facts import config_max_len, config_vocab_size

# A run directory holds its model in one of these, tried in this order (see resolve_model_dir).
RUN_SUBDIRS = ("merged", "hf", "adapter")
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json")


@dataclass
class LoadedModel:
    """A model ready to generate with, plus what turns text into ids and back.

    model: krllm's Llama or a transformers model, in eval mode, on its device.
    path: the directory that was loaded (an adapter directory when `adapter` is set).
    base: the base model directory an adapter was merged into (None otherwise).
    stop_ids: ids that end generation (krllm.data.tokens.chat_tokens.stop_ids).
    dtype_reason: why the weights have their dtype ("as saved", "as requested", "auto: ...").
    info: the adapter merge summary {"lora", "dora", "full"} (empty without an adapter).
    """

    model: torch.nn.Module
    tokenizer: object  # transformers PreTrainedTokenizerFast
    name: str  # id shown by /v1/models
    path: Path
    stop_ids: list[int]
    dtype_reason: str = "as saved"
    adapter: Path | None = None
    base: Path | None = None
    info: dict = field(default_factory=dict)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """messages [{"role", "content"}] -> prompt ids with the tokenizer's chat template."""
        if not self.has_chat_template:
            raise KrllmError(f"{self.path}: the tokenizer has no chat_template, so chat is not available "
                             "(use `krllm generate` / the completions endpoint, or a krllm tokenizer)")
        return generation_prompt_ids(self.tokenizer, messages)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_length(self) -> int | None:
        """Longest sequence the model's config names (None: no position limit, e.g. an SSM)."""
        return config_max_len(self.model.config)

    @property
    def num_parameters(self) -> int:
        """Unique parameters (a tied lm_head counts once; quantized weights count one per weight)."""
        from krllm.model.quant import logical_weights

        return sum(p.numel() for p in {id(p): p for p in self.model.parameters()}.values()) + logical_weights(self.model)

    @property
    def source(self) -> str:
        """What was loaded, in words (eval.json records it)."""
        if self.adapter is not None:
            return f"adapter merged into {self.base} on load"
        return "HF directory"


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() or is_adapter_dir(path)


def resolve_model_dir(path: str | Path) -> Path:
    """A run directory -> the directory holding its model; a model or adapter directory -> itself.

    Order in a run directory: `merged/` (an adapter already folded into its base: the complete
    fine-tuned model, loads without a merge step and is what the pipeline hands to the next stage),
    then `hf/` (pretraining, full fine-tuning), then `adapter/` (QLoRA runs keep only the adapter;
    it is merged on load). So `krllm serve runs/demo_ko/sft` serves the fine-tuned model whichever
    form the run kept, and prefers the one that needs no work at start-up.
    """
    path = Path(path)
    if not path.exists():
        raise KrllmError(f"{path} does not exist (give an HF model directory, an adapter directory or a run directory)")
    if _is_model_dir(path):
        return path
    for sub in RUN_SUBDIRS:
        if _is_model_dir(path / sub):
            return path / sub
    raise KrllmError(f"{path}: no config.json or adapter_config.json here, nor in "
                     + ", ".join(f"{path}/{s}" for s in RUN_SUBDIRS))


def resolve_base(adapter_dir: str | Path, base: str | Path | None = None) -> Path:
    """The base model directory of an adapter.

    `base` (--base) wins; else adapter_config.json's base_model_name_or_path: absolute as it is,
    relative tried against the current directory, then the adapter directory and its parents
    (krllm.model.adapters.base_candidates), then as a hub id in the local Hugging Face cache (no
    download). A run directory resolves to its model. A base that is nowhere is an error naming the
    adapter and every path tried.
    """
    adapter_dir = Path(adapter_dir)
    if base is not None:
        if not Path(base).exists():
            raise KrllmError(f"base model {base} (given for adapter {adapter_dir}) does not exist")
        return _base_model_dir(Path(base), adapter_dir)
    recorded = read_adapter_config(adapter_dir).get(BASE_KEY)
    if not recorded:
        raise KrllmError(f"{adapter_dir}/adapter_config.json names no base model ({BASE_KEY}); pass --base DIR")
    tried = base_candidates(adapter_dir, recorded)
    for cand in tried:
        if cand.is_dir():
            return _base_model_dir(cand, adapter_dir)
    if Path(recorded).is_absolute():
        raise KrllmError(f"base model {recorded} (from {adapter_dir}/adapter_config.json) does not exist, nor "
                         "does its trailing path under any parent of the adapter; pass --base DIR")
    cached = _hub_cache_dir(recorded)
    if cached is not None:
        return cached
    where = ", ".join(str(t) for t in dict.fromkeys(tried))
    raise KrllmError(f"adapter {adapter_dir}: its base model {recorded!r} (adapter_config.json) is not a local "
                     f"directory (tried {where}) nor a model in the Hugging Face cache; pass --base DIR")


def _hub_cache_dir(repo_id: str) -> Path | None:
    """A hub id (e.g. Qwen/Qwen2.5-0.5B) fine-tuned by name: its snapshot in the local HF cache, never
    downloaded here (None when it is not cached or is not a valid repo id)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError):
        return None
    return path if (path / "config.json").is_file() else None


def _base_model_dir(path: Path, adapter_dir: Path) -> Path:
    model_dir = resolve_model_dir(path)
    if is_adapter_dir(model_dir):
        raise KrllmError(f"adapter {adapter_dir}: its base {model_dir} is itself an adapter; the base must be a "
                         "full model directory (config.json)")
    return model_dir


def load_tokenizer(path: str | Path):
    """The transformers tokenizer saved in a model (or adapter) directory, with its chat template."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not any((path / f).is_file() for f in TOKENIZER_MARKERS):
        raise KrllmError(f"{path}: no tokenizer files (tokenizer.json); save the model with its tokenizer")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise KrllmError(f"{path}: cannot load the tokenizer ({e})") from None


def tokenizer_dir(adapter_dir: Path | None, model_dir: Path) -> Path:
    """An adapter's own tokenizer (SFT saves it, possibly with a new chat template) wins over the base's."""
    if adapter_dir is not None and any((adapter_dir / f).is_file() for f in TOKENIZER_MARKERS):
        return adapter_dir
    return model_dir


def load_weights(model_dir: str | Path, device: str | torch.device = "cpu", dtype=None) -> torch.nn.Module:
    """Weights of an HF directory through the registry: krllm's Llama for `llama`, else transformers."""
    from krllm.model.registry import family_for, model_type_of

    return family_for(model_type_of(model_dir)).load_model(model_dir, device=device, dtype=dtype)


def inference_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """-> (dtype to cast to, a few words on why) for `--dtype` auto / fp32 / bf16 / fp16 (int8 / int4:
    see `load`)."""
    from krllm.device import cpu_supports_bf16, pick_dtype

    try:
        target = pick_dtype(requested, device)
    except ValueError:
        raise KrllmError(f"unknown dtype {requested!r}: use auto, fp32, bf16, fp16, int8 or int4") from None
    if requested != "auto":
        return target, "as requested"
    if target == torch.bfloat16 and device.type == "cpu":
        return target, "auto: this CPU multiplies bf16 natively; --dtype fp32 for full precision"
    if device.type == "cpu" and not cpu_supports_bf16():
        return target, "auto: this CPU has no native bf16"
    return target, f"auto for {device.type}"


def _label(path: Path) -> str:
    """Model id: the directory name, or its run's name for runs/<name>/{hf,adapter,merged}."""
    p = path.resolve()
    return p.parent.name if p.name in RUN_SUBDIRS else p.name


def load(path: str | Path, base: str | Path | None = None, device: str | torch.device = "auto",
         dtype: str | None = None, name: str | None = None, group_size: int | None = None) -> LoadedModel:
    """Load weights (merging an adapter if `path` is or holds one) and the tokenizer; errors name the path.

    base: the base model directory of an adapter (default: the one its adapter_config.json records).
    device: auto (cuda > mps > cpu), cpu, cuda, mps.
    dtype: None keeps the dtype the weights were saved in; fp32 / bf16 / fp16 cast them; "auto"
    picks what this device multiplies fastest (krllm.device.pick_dtype: bf16 on CUDA and on CPUs
    with native bf16, where decoding reads half the bytes and runs ~2x faster; fp32 elsewhere).
    The reason is kept in `dtype_reason` and shown by the start-up line.
    int8 / int4 quantize the weights at load (krllm.model.quant: per-row int8, or int4 in groups of
    `group_size` columns, default 32); a directory written by `krllm.model.quant.save_quantized` loads
    quantized as saved, whatever float dtype is asked (its activations are fp32).
    name: the model id (default: the directory name, or the run's name).
    """
    from krllm.data.tokens.chat_tokens import stop_ids
    from krllm.device import pick_device
    from krllm.model import quant

    model_dir = resolve_model_dir(path)
    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    saved = None if is_adapter_dir(model_dir) else quant.read_spec(model_dir)
    quantize = dtype if quant.is_integer_dtype_name(dtype) else None
    if saved is not None:
        if quantize is not None and quantize != saved.format:
            raise KrllmError(f"{model_dir} holds {saved.format} weights (config.json {quant.CONFIG_KEY}); it cannot be "
                             f"loaded as {quantize}: quantize the original directory instead")
        target, reason = None, f"{saved.format} weights as saved, fp32 activations"
    elif quantize is not None:
        target, reason = torch.float32, f"{quantize} weights quantized at load, fp32 activations"
    else:
        target, reason = inference_dtype(dtype, dev) if dtype is not None else (None, "as saved")
    adapter = base_dir = None
    info: dict = {}
    if saved is not None:
        model = quant.load_quantized(model_dir, device=dev)
    elif is_adapter_dir(model_dir):
        adapter, base_dir = model_dir, resolve_base(model_dir, base)
        model = load_weights(base_dir, device="cpu", dtype=target)
        info = merge_adapter(model, adapter)  # on CPU, each merged weight computed in fp32
        model = model.to(device=dev)
    else:
        model = load_weights(model_dir, device=dev, dtype=target)
    if quantize is not None and saved is None:
        model = quant.quantize_model(model, quantize, group_size or quant.DEFAULT_GROUP_SIZE)
    tok_dir = tokenizer_dir(adapter, base_dir or model_dir)
    tokenizer = load_tokenizer(tok_dir)
    if len(tokenizer) > config_vocab_size(model.config):
        raise KrllmError(f"{tok_dir}: tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                         f"{config_vocab_size(model.config)} (they do not belong together)")
    model.eval()
    dirs = [d for d in (adapter, base_dir or model_dir) if d is not None]
    return LoadedModel(model=model, tokenizer=tokenizer, name=name or _label(Path(path)), path=model_dir,
                       stop_ids=stop_ids(tokenizer, model_dir=dirs, config=model.config), dtype_reason=reason,
                       adapter=adapter, base=base_dir, info=info)
