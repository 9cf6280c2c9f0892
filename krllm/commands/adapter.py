"""`krllm adapter convert`: move a LoRA / DoRA adapter between PEFT and mlx-lm, exactly.

    krllm adapter convert runs/npc_mlx/adapter_mlx --to peft --out runs/npc_mlx/adapter_peft   # Mac -> GPU
    krllm adapter convert runs/npc_lora/adapter --to mlx --out adapters_mlx                    # GPU -> Mac
    mlx_lm.generate --model runs/pretrain/hf --adapter-path adapters_mlx --prompt "안녕"

krllm generate / chat / serve / merge / eval take either kind directly; convert to hand an adapter to the
other ecosystem's tools (mlx_lm.*, PEFT, vLLM). See docs/mlx.md.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser("convert", help="convert an adapter to PEFT or mlx-lm format",
                       description="Transposes lora_A/lora_B, maps scale <-> alpha / r, keeps the adapted layers "
                       "and DoRA magnitudes; the converted adapter gives the same logits (tested).")
    c.add_argument("src", help="adapter directory: PEFT (adapter_model.safetensors) or mlx-lm "
                   "(adapters.safetensors + adapter_config.json with fine_tune_type)")
    c.add_argument("--to", required=True, choices=["peft", "mlx"], help="target format")
    c.add_argument("--out", required=True, help="output directory (written atomically; replaced if it exists)")
    c.add_argument("--base", default=None, help="base model directory, recorded in the output (default: the one "
                   "the source adapter records; PEFT -> mlx reads its block count for num_layers)")


def run(args: argparse.Namespace) -> int:
    from krllm.export.adapter import convert_adapter

    out = convert_adapter(args.src, args.to, args.out, base=args.base)
    print(f"converted {args.src} -> {out} ({args.to})")
    return 0
