"""`krllm sft`: supervised fine-tuning (LoRA / DoRA / QLoRA / full) from a YAML config.

    krllm sft -c configs/sft/npc_lora.yaml
    krllm sft -c configs/sft/npc_lora.yaml --set peft.method=dora --set name=npc_dora
    krllm sft -c configs/sft/npc_lora.yaml --resume          # continue from the last checkpoint
    krllm sft -c configs/sft/npc_lora.yaml --backend mlx     # mlx-lm (Apple Silicon GPU, or CPU): docs/mlx.md
    torchrun --nproc_per_node 2 -m krllm sft -c ...           # data parallel (CPU: gloo; GPU: NCCL)
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m krllm sft -c ...   # FSDP / DeepSpeed
"""

from __future__ import annotations

import argparse


KEYS = ("base_model", "data.train", "data.n", "data.loss_on", "data.max_length", "peft.method", "peft.r",
        "peft.alpha", "peft.target_modules", "peft.num_layers", "train.lr", "train.epochs", "train.max_steps",
        "train.batch_size", "train.grad_accum", "train.batching", "train.gradient_checkpointing",
        "train.early_stopping_patience", "train.dtype")


def key_help(schema, keys=KEYS) -> str:
    """`key (default): description` lines for the settings people change most, read from the schema."""
    lines = []
    for key in keys:
        *path, last = key.split(".")
        model, section = schema, None  # section: the default instance of the enclosing section
        for part in path:
            f = model.model_fields[part]
            section = f.default if section is None else getattr(section, part)
            model = f.annotation
        field = model.model_fields[last]
        value = getattr(section, last) if section is not None else field.default
        default = "required" if section is None and field.is_required() else repr(value)
        lines.append(f"  {key} ({default}): {field.description or ''}")
    return "\n".join(lines)


def add_run_arguments(p: argparse.ArgumentParser, example_config: str, example_set: str) -> None:
    """-c / --set / --resume / --overwrite, the arguments every tuning command (sft, dpo, grpo) takes."""
    p.add_argument("-c", "--config", required=True, help=f"YAML config (e.g. {example_config})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config key, e.g. --set {example_set} "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (weights, optimizer, scheduler, data position)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run directory (deletes its checkpoints, metrics and outputs)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from krllm.train.sft_config import SFTRunConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Outputs go to <runs_dir>/<name>/: adapter/ (PEFT), merged/ (base+adapter) or hf/ (full), config.yaml,\n"
        "metrics.jsonl, tb/ (tensorboard --logdir runs/), samples.md (answers before/after), summary.json,\n"
        "checkpoints/ (resumable). Data: a JSONL file (chat {messages}, {instruction,input,output} or {text})\n"
        "or builtin:npc / builtin:math / builtin:sentiment.\n\n"
        "Settings people change most (--set KEY=VALUE; defaults in parentheses; all in docs/finetuning.md):\n"
        + key_help(SFTRunConfig)
    )
    add_run_arguments(p, "configs/sft/npc_lora.yaml", "peft.method=dora --set train.max_steps=100")
    p.add_argument("--backend", choices=["auto", "torch", "mlx"], default=None,
                   help="trainer: torch (transformers/TRL), mlx (mlx-lm: Apple Silicon GPU, or CPU; docs/mlx.md), "
                   "auto (mlx on Apple Silicon with mlx-lm installed); default: the config's `backend` (auto)")

def run(args: argparse.Namespace) -> int:
    from krllm.config import load_config
    from krllm.train.hf.callbacks import quiet_known_warnings

    quiet_known_warnings()
    from krllm.train.hf.outputs import rank
    from krllm.train.sft import run_sft
    from krllm.train.sft_config import SFTRunConfig

    overrides = args.overrides + ([f"backend={args.backend}"] if getattr(args, "backend", None) else [])
    cfg = load_config(args.config, SFTRunConfig, overrides)
    summary = run_sft(cfg, resume=args.resume, overwrite=args.overwrite)
    if rank() != 0:
        return 0
    out = summary["outputs"]
    loss = summary["eval_loss"] if summary["eval_loss"] is not None else summary["train_loss"]
    print(f"done: {summary['steps']} steps, {'val' if summary['eval_loss'] is not None else 'train'} loss "
          f"{loss:.4f}; outputs: " + ", ".join(out.values()))
    if "merged" in out or "hf" in out:
        print(f"chat with it: krllm chat {out.get('merged') or out.get('hf')}")
    return 0
