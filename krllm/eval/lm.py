"""Load a model to evaluate: an HF directory (ours or any local Llama) or a PEFT adapter directory.

Everything downstream (perplexity, decoding) runs on our `Llama` from `krllm.model.hf.load_hf`, so
the numbers in eval.json are the numbers of the model `krllm chat` and `krllm serve` will run. An
adapter is merged into its base with PEFT (`merge_and_unload`) into a temporary HF directory first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from krllm.errors import KrllmError


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a model (or adapter) directory, with its chat template."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise KrllmError(f"{path}: no tokenizer files (tokenizer.json); save the model with its tokenizer")
    return AutoTokenizer.from_pretrained(str(path))


def merge_adapter(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None) -> Path:
    """Base (from adapter_config.json's base_model_name_or_path, or `base`) + adapter -> one HF dir."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_dir = Path(adapter_dir)
    meta = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(base or meta.get("base_model_name_or_path") or "")
    if not (base / "config.json").is_file():
        raise KrllmError(f"{adapter_dir}: its base model {str(base)!r} is not a local model directory; "
                         "pass the base directory explicitly")
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(str(out_dir))
    tok_src = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base
    load_tokenizer(tok_src).save_pretrained(str(out_dir))
    return Path(out_dir)


class LoadedModel:
    """Our Llama + its tokenizer, in eval mode; `source` says what was loaded (for eval.json)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", base: str | Path | None = None):
        from krllm.model.hf import load_hf

        self.path = Path(path)
        if not self.path.exists():
            raise KrllmError(f"model directory {self.path} does not exist")
        self._tmp = None
        model_dir = self.path
        if is_adapter_dir(self.path):
            self._tmp = tempfile.TemporaryDirectory(prefix="krllm-merged-")
            model_dir = merge_adapter(self.path, self._tmp.name, base)
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_hf(model_dir, device=device, dtype=torch.float32).eval()
        self.device = torch.device(device)
        self.source = "adapter merged with PEFT" if self._tmp else "HF directory"

    @property
    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def stop_ids(self) -> list[int]:
        """Generation stops at the model's EOS ids and at `<|im_end|>` (end of a chat turn)."""
        ids = list(self.model.config.eos_ids)
        im_end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != self.tokenizer.unk_token_id and im_end not in ids:
            ids.append(im_end)
        return ids

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
