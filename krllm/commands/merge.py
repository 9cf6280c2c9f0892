"""`krllm merge`: fold a LoRA/DoRA adapter into its base model -> one HF directory.

    krllm merge runs/npc_lora/adapter --out runs/npc_merged
    krllm merge runs/npc_lora/adapter --out runs/npc_merged --base runs/pretrain_tiny/hf --dtype bf16
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors), "
                   "e.g. runs/npc_lora/adapter")
    p.add_argument("--out", required=True, help="output HF directory (written atomically; replaced if it exists)")
    p.add_argument("--base", default=None,
                   help="base model directory; default: base_model_name_or_path from adapter_config.json "
                   "(absolute, or relative to the current directory, the adapter directory or one of its parents)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="dtype of the merged weights (default fp32: exact; bf16 halves the size)")


def run(args: argparse.Namespace) -> int:
    from krllm.export.merge import merge_adapter

    out = merge_adapter(args.adapter, args.out, base=args.base, dtype=args.dtype)
    print(f"merged {args.adapter} -> {out}")
    return 0
