"""The model side of every TRL/PEFT training method: tokenizer and base-model loading, the 4-bit (QLoRA)
base, the PEFT config from our YAML section, and freezing for partial full fine-tuning.

`load_base_model` is the one place a trainer reads base weights from disk (causal LM or a sequence
classifier over the same backbone), so pointing trainers at another loader is a one-function change.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from krllm.data.tokens.chat_tokens import stop_ids
from krllm.errors import KrllmError, UsageError
from krllm.train.hf.config import PeftSection

HEADS = ("causal_lm", "seq_cls")


_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # org/name or name, as the Hub accepts them


def _from_pretrained(cls, spec: str, path: str, **kwargs):
    """cls.from_pretrained(path), a Hub id missing offline or a broken directory as one KrllmError."""
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as e:
        raise UsageError(f"base_model {spec}: {e}") from None


def base_model_path(spec: str) -> str:
    """Where a trainer's `base_model` lives: a local model or run directory through krllm's loader
    (`runs/x/pretrain` -> its hf/, `runs/x/sft` -> its merged/), a hub id as it is (transformers
    resolves it). An adapter is not a base to train on: merge it first."""
    from krllm.model.adapters import is_adapter_dir
    from krllm.model.load import resolve_model_dir

    if not Path(spec).exists():
        if not _HUB_ID.fullmatch(str(spec)):
            raise UsageError(f"base_model {spec}: no such file or directory (and not a Hub id such as org/name)")
        return spec
    model_dir = resolve_model_dir(spec)
    if is_adapter_dir(model_dir):
        raise KrllmError(f"base_model {spec} is a PEFT adapter ({model_dir}); train on a full model: "
                         f"`krllm merge {model_dir} --out DIR` first, then base_model: DIR")
    return str(model_dir)


def load_tokenizer(path: str, chat_template: str | None = None):
    """A fast tokenizer from `path`; `chat_template` (a .jinja file, key data.chat_template) replaces its template.

    A missing pad token becomes EOS: padding is masked out of attention and loss, any id works.
    """
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, path, base_model_path(path))
    if chat_template:
        file = Path(chat_template)
        if not file.is_file():
            raise KrllmError(f"data.chat_template: {file} not found")
        tok.chat_template = file.read_text(encoding="utf-8")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(path: str, head: str = "causal_lm", qlora_compute_dtype: torch.dtype | None = None, **kwargs):
    """The base model of a training run: fp32 master weights (autocast does the low precision), or a 4-bit
    NF4 base when `qlora_compute_dtype` is given.

    head: causal_lm (AutoModelForCausalLM) | seq_cls (AutoModelForSequenceClassification: the same backbone
    with a new `score` head; pass num_labels etc. in kwargs).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classes = {"causal_lm": AutoModelForCausalLM, "seq_cls": AutoModelForSequenceClassification}
    if head not in classes:
        raise KrllmError(f"unknown model head {head!r}: use one of {', '.join(HEADS)}")
    kw = {"dtype": torch.float32}
    if qlora_compute_dtype is not None:
        kw = {"quantization_config": quantization_config(qlora_compute_dtype), "dtype": torch.bfloat16}
    return _from_pretrained(classes[head], path, base_model_path(path), **kw, **kwargs)


def load_causal_lm(path: str, tokenizer, peft: PeftSection, dtype: torch.dtype, gradient_checkpointing: bool = False):
    """The base causal LM ready for a PEFT/TRL trainer: k-bit preparation for QLoRA, vocabulary checked
    against the tokenizer, generation stop/pad ids from the tokenizer, lower blocks frozen for
    `full` + `num_layers`. `dtype` is the compute dtype (used by the 4-bit base only)."""
    qlora = peft.method == "qlora"
    model = load_base_model(path, "causal_lm", qlora_compute_dtype=dtype if qlora else None)
    if qlora:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise KrllmError(f"the tokenizer has {len(tokenizer)} tokens but {path} embeds only {rows}: "
                         "use the tokenizer the model was trained with")
    model.generation_config.eos_token_id = stop_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    if peft.method == "full" and peft.num_layers is not None:
        freeze_below(model, peft.num_layers)
    return model


def quantization_config(dtype: torch.dtype):
    """QLoRA's 4-bit NF4 base: CUDA + bitsandbytes only, said plainly otherwise."""
    if not torch.cuda.is_available():
        raise KrllmError("peft.method=qlora loads the base model in 4 bits with bitsandbytes, which needs a CUDA "
                         "GPU; none is available here. Use peft.method=lora (same adapter, full-precision base) "
                         "on CPU/MPS.")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise KrllmError("peft.method=qlora needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype if dtype != torch.float32 else torch.bfloat16)


def num_layers(model) -> int:
    return int(model.config.get_text_config().num_hidden_layers)


def block_linear_names(model) -> list[str]:
    """Names (last component) of the Linear layers inside the transformer blocks: q_proj, ..., down_proj."""
    names = set()
    for full, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in full:
            names.add(full.rsplit(".", 1)[-1])
    return sorted(names)


def peft_config_for(p: PeftSection, model, task_type: str = "CAUSAL_LM"):
    """Our YAML section -> peft.LoraConfig (DoRA = LoRA + use_dora; QLoRA = LoRA on a 4-bit base).

    `num_layers` (adapt the top N blocks, as mlx-lm) maps to PEFT's `layers_to_transform`, which PEFT
    refuses together with the string `all-linear`: then the block's Linear names are listed explicitly.
    """
    from peft import LoraConfig

    n = num_layers(model)
    layers, targets = None, p.target_modules
    if p.num_layers is not None:
        if p.num_layers > n:
            raise KrllmError(f"peft.num_layers={p.num_layers} but the model has {n} layers")
        layers = list(range(n - p.num_layers, n))
        if targets == "all-linear":
            targets = block_linear_names(model)
    if isinstance(targets, list):
        _check_target_modules(targets, model)
    return LoraConfig(
        r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, task_type=task_type,
        target_modules=targets, use_dora=p.method == "dora", layers_to_transform=layers,
        modules_to_save=p.modules_to_save,
    )


def _check_target_modules(targets: list[str], model) -> None:
    """Every name in peft.target_modules matches a module the way PEFT matches (the full name or its last
    parts), else a KrllmError listing the block's Linear names (PEFT's own error is a traceback)."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UsageError(f"peft.target_modules: {missing} match no module of the model; its blocks' Linear "
                         f"layers are {block_linear_names(model)} (or use all-linear)")


def freeze_below(model, keep_layers: int) -> None:
    """Full fine-tuning of the top `keep_layers` blocks (+ final norm) only; everything else frozen."""
    n = num_layers(model)
    if keep_layers > n:
        raise KrllmError(f"peft.num_layers={keep_layers} but the model has {n} layers")
    keep = {f".layers.{i}." for i in range(n - keep_layers, n)}
    for name, p in model.named_parameters():
        p.requires_grad = any(k in name for k in keep) or name.endswith("model.norm.weight")


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(x.numel() for x in params if x.requires_grad), sum(x.numel() for x in params)
