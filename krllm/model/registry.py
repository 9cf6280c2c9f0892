"""model_type -> family: which code builds, loads and runs each architecture (one lookup).

mlx-lm's pattern: every family is one record here, keyed by the `model_type` of its config.json.
A family either has krllm's own implementation (`fast=True`: our PyTorch model, the engine's
runner and, on CPU, the C decode step) or is run by transformers' own model class inside the same
engine and server (slower, but any causal LM transformers can load works). Unknown model types fall
back to the transformers family, so `krllm generate` works on a checkpoint krllm has never seen.

    family = family_for("qwen2")            # Family(model_type="qwen2", fast=True, ...)
    model = family.load(model_dir, device="cpu", dtype=None)

`load` / `build` are "module:function" strings, imported only when called, so looking a family up
never imports torch-heavy modules.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from krllm.errors import KrllmError

TRANSFORMERS = "transformers"  # the catch-all family: AutoModelForCausalLM


@dataclass(frozen=True)
class Family:
    """One architecture family.

    model_type: config.json's `model_type` (the registry key).
    load:  "module:function" (model_dir, device, dtype) -> nn.Module, strict about weights.
    build: "module:function" (config) -> a freshly initialised nn.Module for pretraining, or None
           where krllm cannot pretrain this family.
    fast:  served by krllm's own runner (and the C step on CPU); else by the transformers path.
    """

    model_type: str
    description: str
    load: str
    build: str | None = None
    fast: bool = False

    def _call(self, target: str, *args, **kwargs):
        module, _, name = target.partition(":")
        fn = importlib.import_module(module)
        for part in name.split("."):  # "Llama.build" -> the classmethod
            fn = getattr(fn, part)
        return fn(*args, **kwargs)

    def load_model(self, model_dir: str | Path, device="cpu", dtype=None):
        return self._call(self.load, Path(model_dir), device=device, dtype=dtype)

    def build_model(self, config):
        if self.build is None:
            raise KrllmError(f"model_type {self.model_type!r}: krllm cannot build this family from scratch "
                             f"(pretrainable: {', '.join(pretrainable())})")
        return self._call(self.build, config)


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add (or replace) a family; the MoE / SSM / RWKV families plug in here."""
    FAMILIES[family.model_type] = family
    return family


register(Family("llama", "Llama / Llama 2-3 / any LlamaForCausalLM (RoPE, GQA, SwiGLU, RMSNorm)",
                load="krllm.model.hf:load_hf", build="krllm.model.llama:Llama.build", fast=True))
register(Family(TRANSFORMERS, "any causal LM that transformers' AutoModelForCausalLM loads (slower path)",
                load="krllm.model.hf:load_transformers"))


def family_for(model_type: str | None) -> Family:
    """The family for a model_type; unknown types get the transformers family."""
    return FAMILIES.get(model_type or "", FAMILIES[TRANSFORMERS])


def model_type_of(model_dir: str | Path) -> str | None:
    """config.json's model_type (None when the file has none); errors name the file."""
    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KrllmError(f"{model_dir} is not a model directory: config.json not found") from None
    except json.JSONDecodeError as e:
        raise KrllmError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise KrllmError(f"{path}: expected a JSON object")
    return data.get("model_type")


def pretrainable() -> list[str]:
    return sorted(k for k, f in FAMILIES.items() if f.build is not None)
