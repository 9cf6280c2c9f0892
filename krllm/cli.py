"""The `krllm` command: one subcommand per stage.

Thin by design: each subcommand lives in `krllm/commands/<name>.py`, which exposes
`add_arguments(parser)` and `run(args) -> int | None`. Only the chosen command's module is
imported, so `krllm --help` and `krllm model info` start fast and never import torch needlessly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help). The order is the order of the stages.
COMMANDS: dict[str, tuple[str, str]] = {
    "model": ("krllm.commands.model", "Model presets: exact parameter counts and memory estimates."),
    "tokenizer": ("krllm.commands.tokenizer", "Train a Korean-aware BPE tokenizer; compare tokenizers."),
    "data": ("krllm.commands.data", "Clean, dedupe, filter, split and tokenize text into shards."),
    "pretrain": ("krllm.commands.pretrain", "Pretrain a model from scratch (resumable; torchrun DDP/FSDP)."),
    "sft": ("krllm.commands.sft", "Supervised fine-tuning with LoRA / DoRA / QLoRA / full."),
    "dpo": ("krllm.commands.dpo", "Preference alignment (DPO) with LoRA / DoRA / full."),
    "grpo": ("krllm.commands.grpo", "Reinforcement learning with verifiable rewards (GRPO) on krllm's engine."),
    "merge": ("krllm.commands.merge", "Merge a LoRA/DoRA adapter into its base model (HF directory)."),
    "adapter": ("krllm.commands.adapter", "Convert a LoRA/DoRA adapter between PEFT and mlx-lm (exact)."),
    "export": ("krllm.commands.export", "Export a model: GGUF (llama.cpp), GGUF + Modelfile (Ollama), MLX."),
    "classify-train": ("krllm.commands.classify", "Train a sequence classifier (LoRA) and report accuracy/F1."),
    "generate": ("krllm.commands.generate", "Generate text from a prompt with any krllm/HF Llama directory."),
    "chat": ("krllm.commands.chat", "Chat in the terminal (chat template, streaming)."),
    "serve": ("krllm.commands.serve", "OpenAI-compatible HTTP API at /v1 and a web chat page at /."),
    "eval": ("krllm.commands.eval", "Evaluate a model: perplexity, math accuracy, sample answers."),
    "pipeline": ("krllm.commands.pipeline", "Run a whole pipeline of stages from one config."),
    "report": ("krllm.commands.report", "Rebuild the report card (report.md + plots) of a run directory."),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="krllm",
        description="krllm: from raw Korean text to a served chat model. "
        "Run `krllm COMMAND --help` for each stage.",
    )
    from krllm import __version__

    parser.add_argument("--version", action="version", version=f"krllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def _chosen_command(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    command = _chosen_command(argv)
    args = build_parser(command).parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        raise SystemExit(2)
    from krllm.config import ConfigError
    from krllm.errors import KrllmError, UsageError

    try:
        code = importlib.import_module(COMMANDS[args.command][0]).run(args)
    except (ConfigError, KrllmError) as e:
        if os.environ.get("KRLLM_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2 if isinstance(e, (ConfigError, UsageError)) else 1) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    raise SystemExit(code or 0)

