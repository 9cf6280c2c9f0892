"""`krllm classify-train`: LoRA sequence classifier over a base model; reports accuracy and macro-F1.

    krllm classify-train -c configs/classify/sentiment_lora.yaml
    krllm classify-train -c configs/classify/sentiment_lora.yaml --set data.train=my_labeled.jsonl
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from krllm.commands.sft import key_help
    from krllm.train.classify import ClassifyRunConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("Data: JSONL lines {\"text\": ..., \"label\": ...} or builtin:sentiment (generated Korean reviews).\n"
                "Outputs in <runs_dir>/<name>/: eval.json (accuracy, macro-F1, per class, confusion matrix,\n"
                "majority baseline), predictions.jsonl, adapter/ (PEFT, with the trained head), metrics.jsonl, tb/.\n\n"
                "Settings people change most (--set KEY=VALUE; defaults in parentheses):\n"
                + key_help(ClassifyRunConfig, ("base_model", "data.train", "data.n", "data.eval_fraction",
                                               "data.labels", "peft.method", "peft.r", "train.lr", "train.epochs",
                                               "train.batch_size")))
    p.add_argument("-c", "--config", required=True, help="YAML config (e.g. configs/classify/sentiment_lora.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an existing run directory (deletes its checkpoints, metrics and outputs)")


def run(args: argparse.Namespace) -> int:
    from krllm.config import load_config
    from krllm.train.hf.callbacks import quiet_known_warnings

    quiet_known_warnings()
    from krllm.train.classify import ClassifyRunConfig, run_classify

    cfg = load_config(args.config, ClassifyRunConfig, args.overrides)
    rep = run_classify(cfg, resume=args.resume, overwrite=args.overwrite)
    print(f"held-out accuracy {rep['accuracy']:.4f}, macro-F1 {rep['f1_macro']:.4f} on {rep['n']} examples "
          f"(majority-class baseline {rep['majority_baseline']:.4f}); {rep['output']}")
    for name, c in rep["per_class"].items():
        print(f"  {name:>12}: precision {c['precision']:.3f}  recall {c['recall']:.3f}  f1 {c['f1']:.3f}  "
              f"n={c['support']}")
    return 0
