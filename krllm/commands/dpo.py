"""`krllm dpo`: preference alignment (DPO; LoRA / DoRA / QLoRA / full) from a YAML config.

    krllm dpo -c configs/dpo/math_lora.yaml
    krllm dpo -c configs/dpo/math_lora.yaml --set dpo.beta=0.2 --set name=math_dpo_b02
    krllm dpo -c configs/dpo/math_lora.yaml --set 'dpo.loss_type=[sigmoid,sft]'   # DPO + SFT on chosen (RPO)
    krllm dpo -c configs/dpo/math_lora.yaml --resume          # continue from the last checkpoint
    torchrun --nproc_per_node 2 -m krllm dpo -c ...           # data parallel (CPU: gloo; GPU: NCCL)
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m krllm dpo -c ...   # FSDP / DeepSpeed
"""

from __future__ import annotations

import argparse

from krllm.commands.sft import key_help

KEYS = ("base_model", "data.train", "data.n", "data.max_length", "dpo.beta", "dpo.loss_type",
        "dpo.label_smoothing", "peft.method", "peft.r", "peft.alpha", "train.lr", "train.epochs",
        "train.max_steps", "train.batch_size", "train.grad_accum", "train.gradient_checkpointing", "train.dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from krllm.train.dpo_config import DPORunConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Outputs go to <runs_dir>/<name>/: adapter/ (PEFT), merged/ (base+adapter) or hf/ (full), config.yaml,\n"
        "metrics.jsonl (loss, rewards/margins, rewards/accuracies, logps/chosen, logps/rejected), tb/,\n"
        "samples.md (answers before/after, chosen answer as reference), summary.json, checkpoints/ (resumable).\n"
        "Data: a JSONL of {\"prompt\", \"chosen\", \"rejected\"} (strings or message lists) or builtin:math.\n"
        "Reference model: the base with the adapter off (lora/dora/qlora) or a frozen copy (full).\n\n"
        "Settings people change most (--set KEY=VALUE; defaults in parentheses; all in docs/alignment.md):\n"
        + key_help(DPORunConfig, KEYS)
    )
    p.add_argument("-c", "--config", required=True, help="YAML config (e.g. configs/dpo/math_lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set dpo.beta=0.2 --set train.max_steps=100 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (weights, optimizer, scheduler, data position)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run directory (deletes its checkpoints, metrics and outputs)")


def run(args: argparse.Namespace) -> int:
    from krllm.config import load_config
    from krllm.train.hf.callbacks import quiet_known_warnings

    quiet_known_warnings()
    from krllm.train.dpo import run_dpo
    from krllm.train.dpo_config import DPORunConfig
    from krllm.train.hf.outputs import rank

    cfg = load_config(args.config, DPORunConfig, args.overrides)
    summary = run_dpo(cfg, resume=args.resume, overwrite=args.overwrite)
    if rank() != 0:
        return 0
    out = summary["outputs"]
    if summary["eval_loss"] is not None:
        result = (f"val loss {summary['eval_loss']:.4f}, reward margin {summary['eval_reward_margin']:.3f}, "
                  f"reward accuracy {summary['eval_reward_accuracy']:.2f}")
    else:
        result = f"train loss {summary['train_loss']:.4f}"
    print(f"done: {summary['steps']} steps, {result}; outputs: " + ", ".join(out.values()))
    if "merged" in out or "hf" in out:
        print(f"chat with it: krllm chat {out.get('merged') or out.get('hf')}")
    return 0
