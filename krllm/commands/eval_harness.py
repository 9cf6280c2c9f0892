"""`krllm eval harness`: lm-evaluation-harness tasks on a model or adapter directory.

    krllm eval harness runs/demo_ko/sft/merged --tasks krllm_ko_sentiment,krllm_ko_math --include-path benchmarks/harness
    krllm eval harness DIR --tasks kobest_copa,kobest_boolq --limit 200      # online: the tasks' Hub datasets
"""

from __future__ import annotations

import argparse

EPILOG = """\
Runs lm_eval.simple_evaluate with the harness's `hf` model (pretrained=DIR; an adapter directory runs as
pretrained=BASE,peft=DIR) — the numbers equal `lm-eval run --model hf --model_args pretrained=DIR,dtype=float32
--tasks ...` on the same model. Writes OUT/results.json and OUT/samples_<task>.jsonl.
Korean tasks (online): kobest_boolq, kobest_copa, kobest_hellaswag, kobest_sentineg, kobest_wic, kmmlu,
haerae. Offline: your own task YAML over a local JSONL (benchmarks/harness/*.yaml) with --include-path.
Needs: pip install "lm-eval[hf]". See docs/evaluation.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("target", metavar="DIR", help="model directory (HF) or PEFT adapter directory")
    p.add_argument("--tasks", required=True, help="comma-separated harness task names")
    p.add_argument("--include-path", help="directory of your own task YAML files (e.g. benchmarks/harness)")
    p.add_argument("--limit", type=float, help="examples per task (an integer count, or a fraction < 1)")
    p.add_argument("--num-fewshot", type=int, help="few-shot examples (default: each task's own)")
    p.add_argument("--batch-size", type=int, default=1, help="harness batch size (default 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default cpu)")
    p.add_argument("--chat-template", action="store_true", help="wrap prompts in the model's chat template")
    p.add_argument("--out", default="runs/eval_harness", help="output directory (default runs/eval_harness)")


def run(args) -> int:
    from krllm.eval.harness import run_harness, summary_lines

    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    result = run_harness(args.target, tasks, args.out, include_path=args.include_path, limit=limit,
                         num_fewshot=args.num_fewshot, batch_size=args.batch_size, device=args.device,
                         apply_chat_template=args.chat_template)
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out}/results.json")
    return 0
