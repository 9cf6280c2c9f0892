"""model_type -> family: which code builds, loads and runs each architecture (one lookup).

mlx-lm's pattern: every family is one record here, keyed by the `model_type` of its config.json.
A family either has krllm's own implementation (`fast=True`: our PyTorch model, the engine's
runner and, on CPU, the C decode step) or is run by transformers' own model class inside the same
engine and server (slower, but any causal LM transformers can load works). Unknown model types fall
back to the transformers family, so `krllm generate` works on a checkpoint krllm has never seen.

    family = family_for("qwen2")            # Family(model_type="qwen2", fast=True, ...)
    model = family.load_model(model_dir, device="cpu", dtype=None)

`krllm pretrain` builds the family its YAML names (`model.type`, default "llama"):
    family = pretrainable_family(cfg.model.type)            # unknown / not buildable: KrllmError
    model_cfg = family.make_config("tiny", ["num_hidden_layers=2"], vocab_size=8000)
    model = family.build_model(model_cfg, device="cpu")     # meta build, materialise, init_weights

What the pretraining loop asks of a built model (krllm's Llama is the reference):
    forward(input_ids (B, T), targets=(B, T), return_logits=False) -> (logits | None, loss scalar)
    config: `make_config`'s object (pydantic; checkpoints store its `model_dump`, the banner and MFU
            read ModelConfig's shape fields: hidden_size, num_hidden_layers, num_attention_heads,
            kv_heads, dim_per_head, intermediate_size, vocab_size, max_position_embeddings)
    optional: `num_parameters(exclude_embeddings)`, `model.layers` (activation checkpointing and
            FSDP per-block sharding need it), the family's `save` (the final `hf/` directory), and
            krllm's KV cache (samples during training: Llama only).

`load` / `build` / `config` / `save` are "module:function" strings, imported only when called, so
looking a family up never imports torch-heavy modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from krllm.errors import KrllmError

TRANSFORMERS = "transformers"  # the catch-all family: AutoModelForCausalLM


@dataclass(frozen=True)
class Family:
    """One architecture family.

    model_type: config.json's `model_type` (the registry key).
    load:  "module:function" (model_dir, device, dtype) -> nn.Module, strict about weights.
    build: "module:function" (config, device=...) -> a freshly initialised nn.Module for
           pretraining, or None where krllm cannot pretrain this family.
    fast:  served by krllm's own runner (and the C step on CPU); else by the transformers path.
    config: "module:function" (spec, overrides, vocab_size=...) -> the config `build` takes, from a
           preset name / model YAML / dict plus `key=value` overrides; None = krllm's ModelConfig
           (krllm.model.config.model_config_from), the Llama-shaped one.
    save:  "module:function" (model, out_dir, tokenizer_dir=...) -> Path, the HF directory pretraining
           writes at the end; None = no `hf/` export for this family.
    """

    model_type: str
    description: str
    load: str
    build: str | None = None
    fast: bool = False
    config: str | None = None
    save: str | None = None

    @staticmethod
    def resolve(target: str):
        """Import "module:function" (or "module:Class.method") -> the callable; errors name the target."""
        module, _, name = target.partition(":")
        try:
            fn = importlib.import_module(module)
            for part in name.split("."):  # "Llama.build" -> the classmethod
                fn = getattr(fn, part)
        except (ImportError, AttributeError) as e:
            raise KrllmError(f"model registry: cannot import {target!r} ({e})") from None
        return fn

    def _call(self, target: str, *args, **kwargs):
        return self.resolve(target)(*args, **kwargs)

    def load_model(self, model_dir: str | Path, device="cpu", dtype=None):
        return self._call(self.load, Path(model_dir), device=device, dtype=dtype)

    def build_model(self, config, device="cpu"):
        if self.build is None:
            raise KrllmError(f"model_type {self.model_type!r}: krllm cannot build this family from scratch "
                             f"(pretrainable: {', '.join(pretrainable())})")
        return self._call(self.build, config, device=device)

    def make_config(self, spec, overrides=(), vocab_size: int | None = None):
        return self._call(self.config or "krllm.model.config:model_config_from", spec, overrides,
                          vocab_size=vocab_size)

    def save_model(self, model, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path | None:
        """The final HF directory of a pretraining run; None where the family has no `save`."""
        if self.save is None:
            return None
        return self._call(self.save, model, out_dir, tokenizer_dir=tokenizer_dir)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; the MoE / SSM / RWKV families plug in here."""
    FAMILIES[family.model_type] = family
    return family


register(Family("llama", "Llama / Llama 2-3 / any LlamaForCausalLM (RoPE, GQA, SwiGLU, RMSNorm)",
                load="krllm.model.hf:load_hf", build="krllm.model.llama:Llama.build", fast=True,
                save="krllm.model.hf:save_hf"))
register(Family("qwen2", "Qwen2 / Qwen2.5 (a Llama with q/k/v biases; no sliding window)",
                load="krllm.model.hf:load_hf", fast=True, save="krllm.model.hf:save_hf"))
register(Family(TRANSFORMERS, "any causal LM that transformers' AutoModelForCausalLM loads (slower path)",
                load="krllm.model.hf:load_transformers"))


def family_for(model_type: str | None) -> Family:
    """The family for a model_type; unknown types get the transformers family."""
    return FAMILIES.get(model_type or "", FAMILIES[TRANSFORMERS])


def model_type_of(model_dir: str | Path) -> str | None:
    """config.json's model_type (None when the file has none); errors name the file."""
    from krllm.runs import read_json_object

    try:
        data = read_json_object(Path(model_dir) / "config.json")
    except FileNotFoundError:
        raise KrllmError(f"{model_dir} is not a model directory: config.json not found") from None
    return data.get("model_type")


def pretrainable() -> list[str]:
    """model_types `krllm pretrain` can build (`model.type` in a pretrain YAML)."""
    return sorted(k for k, f in FAMILIES.items() if f.build is not None)


def pretrainable_family(model_type: str) -> Family:
    """The family `model.type` names, strictly: unknown or not buildable is an error listing the choices."""
    family = FAMILIES.get(model_type)
    if family is None or family.build is None:
        why = "is not a registered family" if family is None else "cannot be built from scratch"
        raise KrllmError(f"model.type: {model_type!r} {why}; pretrainable families: {', '.join(pretrainable())}")
    return family
