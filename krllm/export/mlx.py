"""`krllm export mlx`: a model, run or adapter directory -> a directory mlx-lm loads (optionally 4/8-bit).

    krllm export mlx runs/npc_lora/sft --out npc-mlx-4bit --q-bits 4 --q-group-size 64
    mlx_lm.generate --model npc-mlx-4bit --prompt "안녕하세요" --max-tokens 64
    mlx_lm.chat --model npc-mlx-4bit

An adapter (PEFT or mlx-lm) is folded into its base first by krllm's one merge (fp32, tested against
PEFT), so the export holds the fine-tuned model. The weights go through mlx-lm's own load / quantize_model /
save, so the directory is exactly what `mlx_lm.convert` writes, with one fix: config.json gets the
top-level `rope_theta` (and `rope_scaling`) mlx-lm reads. transformers 5 writes them only inside
`rope_parameters`, and mlx-lm would then silently use its default base (10000 for Llama), which changes
every logit. Quantization is mlx-lm's affine group quantization; a layer whose input width is not a
multiple of the group size stays unquantized (mlx-lm's rule), and the export says how many did.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from krllm.errors import KrllmError, UsageError
from krllm.model.mlx import mlx_rope_keys
from krllm.runs import atomic_dir, write_json

Q_BITS = (2, 3, 4, 5, 6, 8)  # mlx affine quantization
Q_GROUP_SIZES = (32, 64, 128)


def _hf_source(source: Path, work: Path, base: str | Path | None) -> Path:
    """An HF directory holding the model to export: the model directory itself, or an adapter merged."""
    from krllm.model.adapters import is_adapter_dir
    from krllm.model.load import resolve_model_dir

    model_dir = resolve_model_dir(source)
    if not is_adapter_dir(model_dir):
        return model_dir
    from krllm.export.merge import merge_adapter

    return merge_adapter(model_dir, work / "merged", base=base, dtype="fp32")


def _check_quant(q_bits: int | None, q_group_size: int) -> None:
    if q_bits is not None and q_bits not in Q_BITS:
        raise UsageError(f"--q-bits {q_bits}: mlx quantizes to {', '.join(map(str, Q_BITS))} bits")
    if q_group_size not in Q_GROUP_SIZES:
        raise UsageError(f"--q-group-size {q_group_size}: use one of {', '.join(map(str, Q_GROUP_SIZES))}")


def export_mlx(source: str | Path, out_dir: str | Path, q_bits: int | None = None, q_group_size: int = 64,
               base: str | Path | None = None) -> Path:
    """Write `source` (HF model dir, run dir, PEFT or mlx-lm adapter dir) as an mlx-lm model at `out_dir`.

    q_bits: None keeps the weights' dtype; 4 or 8 (or 2, 3, 5, 6) quantizes with groups of q_group_size.
    base: an adapter's base model directory (default: the one the adapter records).
    Written atomically; `out_dir/krllm_export.json` records the source and the quantization.
    """
    try:
        import mlx.core  # noqa: F401
        from mlx_lm.utils import load, quantize_model, save
    except ImportError:
        raise KrllmError("krllm export mlx needs MLX: pip install 'krllm[mlx]' (Linux: mlx[cpu] + mlx-lm; "
                         "macOS on Apple Silicon: mlx + mlx-lm)") from None
    _check_quant(q_bits, q_group_size)
    source = Path(source)
    with tempfile.TemporaryDirectory(prefix="krllm-mlx-") as work:
        hf_dir = _hf_source(source, Path(work), base)
        config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
        fixes = mlx_rope_keys(config)
        try:
            model, tokenizer, config = load(str(hf_dir), model_config=fixes, return_config=True, lazy=True)
        except (ValueError, FileNotFoundError) as e:
            raise KrllmError(f"{hf_dir}: mlx-lm cannot load this model ({e})") from None
        config.update(fixes)
        report = {"source": str(source.resolve()), "q_bits": q_bits, "q_group_size": q_group_size if q_bits else None,
                  "rope_keys_added": sorted(fixes)}
        if q_bits is not None:
            model, config = quantize_model(model, config, q_group_size, q_bits)
            report["unquantized_linear_layers"] = _unquantized(model)
        with atomic_dir(out_dir) as tmp:
            save(tmp, hf_dir, model, tokenizer, config, donate_model=False)
            write_json(tmp / "krllm_export.json", report)
    return Path(out_dir)


def _unquantized(model) -> list[str]:
    """Linear layers mlx-lm left in full precision (input width not a multiple of the group size)."""
    import mlx.nn as nn

    return [name for name, m in model.named_modules() if type(m) is nn.Linear]
