"""`krllm eval`: perplexity, NPC chat loss, math exact match and sample answers of every model given.

    krllm eval -c configs/eval/demo_ko.yaml --base runs/demo_ko/pretrain/hf --tuned runs/demo_ko/sft/merged \\
        --shards runs/demo_ko/data/shards --out runs/my_eval
    krllm eval -c configs/eval/demo_ko.yaml --base runs/demo_ko/pretrain/hf \\
        --model math_sft=runs/demo_ko/math_sft/merged --model grpo=runs/demo_ko/math_grpo/merged
    krllm eval translate DIR|URL --data builtin:ko-en-help:heldout --src ko --tgt en   # krllm.commands.eval_translate
    krllm eval prompts DIR --data builtin:math:ko --n 40                                # krllm.commands.eval_prompts
    krllm eval harness DIR --tasks krllm_ko_sentiment --include-path benchmarks/harness    # krllm.commands.eval_harness
"""

from __future__ import annotations

import argparse

EPILOG = """\
Writes OUT/eval.json (all metrics), OUT/samples.md (answers side by side) and OUT/config.yaml.
Losses are mean cross-entropy in nats per token; perplexity = exp(loss). Math exact match compares the
last number of a greedy answer with the true integer. --tuned may be a merged HF directory or a PEFT
adapter directory (merged on the fly); so may each --model ROLE=DIR (evaluated in order after base and
tuned, one column each). See docs/pipeline.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("-c", "--config", metavar="YAML", help="eval config (default: built-in defaults), "
                   "e.g. configs/eval/demo_ko.yaml")
    p.add_argument("--base", metavar="DIR", help="base model HF directory (sets base=)")
    p.add_argument("--tuned", metavar="DIR", help="fine-tuned model: merged HF dir or adapter dir (sets tuned=)")
    p.add_argument("--model", dest="models", action="append", default=[], metavar="ROLE=DIR",
                   help="one more model to evaluate, e.g. --model grpo=runs/x/math_grpo/merged (repeatable; "
                        "sets models.ROLE=)")
    p.add_argument("--shards", metavar="DIR", help="token shards for validation perplexity (sets perplexity.shards=)")
    p.add_argument("--out", metavar="DIR", help="output directory (sets out_dir=; default runs/eval)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "int8", "int4"], default=None,
                   help="weights while evaluating (sets dtype=; default fp32): e.g. int4 to measure what it costs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set math.n=100 "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    _add_tasks(p)


TASKS = {"translate": ("krllm.commands.eval_translate", "BLEU / chrF / TER of one model's translations (a "
                       "directory or a served URL)"),
         "prompts": ("krllm.commands.eval_prompts", "math exact match of one model under several prompt "
                     "templates (plain, step-by-step, persona), with a bar plot"),
         "harness": ("krllm.commands.eval_harness", "lm-evaluation-harness tasks (kobest, kmmlu, your own JSONL "
                     "task YAML) on a model or adapter directory")}  # `krllm eval TASK ...`: one module each


def _add_tasks(p: argparse.ArgumentParser) -> None:
    import importlib

    sub = p.add_subparsers(dest="eval_task", metavar="TASK", help="optional single task: " + ", ".join(TASKS))
    for name, (module, help_text) in TASKS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text, description=help_text))


def run(args) -> int:
    if getattr(args, "eval_task", None):
        import importlib

        return importlib.import_module(TASKS[args.eval_task][0]).run(args)
    from krllm.config import load_config
    from krllm.eval.run import EvalConfig, run_eval

    overrides = list(args.overrides)
    for item in args.models:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            from krllm.errors import KrllmError

            raise KrllmError(f"--model {item!r}: expected ROLE=DIR, e.g. --model grpo=runs/x/math_grpo/merged")
        overrides.append(f"models.{role}={path}")
    for key, val in (("base", args.base), ("tuned", args.tuned), ("perplexity.shards", args.shards),
                     ("out_dir", args.out), ("dtype", args.dtype)):
        if val:
            overrides.append(f"{key}={val}")
    cfg = load_config(args.config, EvalConfig, overrides)
    out = run_eval(cfg)
    print(f"wrote {cfg.out_dir}/eval.json ({out['wall_s']:.1f}s, {out['tokens_scored']:,} tokens)")
    return 0
