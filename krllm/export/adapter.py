"""`krllm adapter convert`: an adapter directory from PEFT to mlx-lm format or back, exactly
(krllm.model.mlx has the mapping and its proof; this finds the base and writes the directory).

    convert_adapter("runs/x/adapter_mlx", "peft", "runs/x/adapter_peft")
    convert_adapter("runs/x/adapter", "mlx", "adapters_mlx", base="runs/pretrain/hf")
"""

from __future__ import annotations

from pathlib import Path

from krllm.errors import KrllmError, UsageError
from krllm.model.mlx import (CONFIG, MLX_WEIGHTS, is_mlx_adapter_dir, mlx_view, peft_view, read_mlx_config,
                             write_adapter_dir)
from krllm.runs import read_json_object


def _base_layers(adapter: Path, base: str | Path | None) -> int | None:
    """num_hidden_layers of the adapter's base (None when the base cannot be found: mlx-lm then adapts all)."""
    from krllm.model.load import resolve_base

    try:
        base_dir = resolve_base(adapter, base)
    except KrllmError:
        if base is not None:
            raise
        return None
    cfg = read_json_object(base_dir / "config.json")
    cfg = cfg.get("text_config", cfg)
    n = cfg.get("num_hidden_layers")
    return int(n) if isinstance(n, int) else None


def convert_adapter(src: str | Path, to: str, out: str | Path, base: str | Path | None = None) -> Path:
    """Convert the adapter at `src` into `to` ("peft" or "mlx") format, written atomically at `out`.

    `base` overrides / supplies the base model directory recorded in the output (PEFT -> mlx also reads
    its block count for mlx-lm's num_layers). Tokenizer files beside the adapter are copied along.
    """
    from krllm.model.adapters import read_adapter_config, read_adapter_weights

    src, out = Path(src), Path(out)
    if to not in ("peft", "mlx"):
        raise UsageError(f"--to {to!r}: use peft or mlx")
    if not src.is_dir():
        raise UsageError(f"{src} is not a directory (give an adapter directory)")
    if src.resolve() == out.resolve():
        raise UsageError(f"--out {out} is the source adapter; write the converted one elsewhere")
    source_is_mlx = is_mlx_adapter_dir(src)
    if not (src / CONFIG).is_file():
        if source_is_mlx:
            read_mlx_config(src)  # its error says what an mlx-lm directory needs
        raise KrllmError(f"{src / CONFIG} not found: {src} is not an adapter directory")
    if to == "peft":
        if not source_is_mlx:
            raise UsageError(f"{src} is already a PEFT adapter (adapter_config.json has no fine_tune_type)")
        cfg, tensors = peft_view(src)
        if cfg.pop("krllm_full", False):
            raise KrllmError(f"{src / CONFIG}: fine_tune_type 'full' is a full fine-tune, not an adapter; load or "
                             f"merge it directly (krllm merge {src} --out DIR) instead of converting it to PEFT")
        if base is not None:
            cfg["base_model_name_or_path"] = str(Path(base).resolve())
    else:
        if source_is_mlx:
            raise UsageError(f"{src} is already an mlx-lm adapter (adapter_config.json has fine_tune_type)")
        cfg, tensors = mlx_view(src, read_adapter_config(src), read_adapter_weights(src), _base_layers(src, base))
        if base is not None:
            cfg["model"] = str(Path(base).resolve())
    return write_adapter_dir(out, cfg, tensors, to, copy_from=src)


__all__ = ["convert_adapter", "MLX_WEIGHTS"]
