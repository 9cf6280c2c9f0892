"""`krllm pretrain`: train a model from scratch on token shards (model.type: llama by default; resumable; torchrun DDP / FSDP2).

    krllm pretrain -c configs/pretrain/tiny_ko.yaml
    krllm pretrain -c configs/pretrain/tiny_ko.yaml --resume
    krllm pretrain -c configs/pretrain/tiny_ko.yaml --set train.max_steps=50 --set run.name=try
    torchrun --nproc_per_node 2 -m krllm pretrain -c configs/pretrain/tiny_ko.yaml
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "Writes runs/<run.name>/: config.yaml, lineage.json, metrics.jsonl, tb/ (tensorboard --logdir runs/),\n"
        "checkpoints/step_N/ (every checkpoint.save_interval steps, newest checkpoint.keep_last kept) and\n"
        "hf/ (the final model + tokenizer, loadable by transformers).\n"
        "Ctrl-C saves a checkpoint and exits (code 130); run again with --resume to continue.\n"
        "Multi-process: torchrun --nproc_per_node N -m krllm pretrain -c CONFIG  (DDP; --set run.distributed=fsdp\n"
        "for FSDP2). train.batch_size is per process: the global batch is batch_size x grad_accum x N.\n"
        "See docs/pretraining.md."
    )
    p.add_argument("-c", "--config", required=True, metavar="YAML",
                   help="pretrain config, e.g. configs/pretrain/tiny_ko.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.lr=1e-3 "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    p.add_argument("--resume", action="store_true",
                   help="continue runs/<run.name> from its newest complete checkpoint (corrupt ones are "
                        "reported and skipped; with none, start from step 0)")


def run(args) -> int:
    from krllm.config import load_config
    from krllm.train.pretrain import pretrain
    from krllm.train.pretrain_config import PretrainConfig

    cfg = load_config(args.config, PretrainConfig, args.overrides)
    result = pretrain(cfg, resume=args.resume)
    return 130 if result["status"] == "interrupted" else 0
