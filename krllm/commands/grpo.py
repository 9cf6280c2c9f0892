"""`krllm grpo`: reinforcement learning with verifiable rewards (GRPO; LoRA / DoRA / full) from a YAML config.

    krllm grpo -c configs/grpo/math_lora.yaml
    krllm grpo -c configs/grpo/math_lora.yaml --set grpo.num_generations=4 --set grpo.beta=0.04
    krllm grpo -c configs/grpo/math_lora.yaml --set 'rewards=[math_correct,format]'
    krllm grpo -c configs/grpo/math_lora.yaml --resume          # continue from the last checkpoint
    torchrun --nproc_per_node 2 -m krllm grpo -c ...           # data parallel (each process samples its share)
"""

from __future__ import annotations

import argparse

from krllm.commands.sft import key_help

KEYS = ("base_model", "data.train", "data.n", "grpo.num_generations", "grpo.max_completion_length",
        "grpo.temperature", "grpo.beta", "grpo.loss_type", "grpo.rollout", "peft.method", "peft.r", "train.lr",
        "train.max_steps", "train.batch_size", "train.grad_accum", "train.dtype")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from krllm.train.grpo_config import GRPORunConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Outputs go to <runs_dir>/<name>/: adapter/ (PEFT), merged/ (base+adapter) or hf/ (full), config.yaml,\n"
        "metrics.jsonl (reward, rewards/<fn>/mean, kl, completions/mean_length, rollout/generate_s), tb/,\n"
        "samples.md (answers before/after, ground truth as reference), summary.json, checkpoints/ (resumable).\n"
        "Data: a JSONL of {\"prompt\", \"ground_truth_answer\", ...} (extra fields reach the rewards) or\n"
        "builtin:math[:ko|en|mixed]. Rewards: math_correct, format, length_penalty or package.module:function.\n\n"
        "Settings people change most (--set KEY=VALUE; defaults in parentheses; all in docs/alignment.md):\n"
        + key_help(GRPORunConfig, KEYS)
    )
    p.add_argument("-c", "--config", required=True, help="YAML config (e.g. configs/grpo/math_lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set grpo.beta=0.04 --set train.max_steps=50 (repeatable)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run from its last checkpoint (weights, optimizer, scheduler, data position)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run directory (deletes its checkpoints, metrics and outputs)")


def run(args: argparse.Namespace) -> int:
    from krllm.config import load_config
    from krllm.train.hf.callbacks import quiet_known_warnings

    quiet_known_warnings()
    from krllm.train.grpo import run_grpo
    from krllm.train.grpo_config import GRPORunConfig
    from krllm.train.hf.outputs import rank

    cfg = load_config(args.config, GRPORunConfig, args.overrides)
    s = run_grpo(cfg, resume=args.resume, overwrite=args.overwrite)
    if rank() != 0:
        return 0
    out = s["outputs"]
    reward = (f"reward {s['reward_first']:.3f} -> {s['reward_last_fifth']:.3f} (mean of the last fifth)"
              if "reward_first" in s else f"train loss {s['train_loss']:.4f}")
    print(f"done: {s['steps']} steps, {reward}; rollouts: {s['rollout']}; outputs: " + ", ".join(out.values()))
    if "merged" in out or "hf" in out:
        print(f"chat with it: krllm chat {out.get('merged') or out.get('hf')}")
    return 0
