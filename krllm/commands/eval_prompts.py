"""`krllm eval prompts`: the same math questions under several prompt templates, exact match per template.

    krllm eval prompts runs/demo_ko/math_grpo/merged --data builtin:math:ko --n 40
    krllm eval prompts DIR --template plain --template step --template "coach=코치처럼 답하세요.\\n\\n{question}"
"""

from __future__ import annotations

import argparse

EPILOG = """\
Built-in templates (the workshop's three): plain = the question as is; step = the question plus
"solve step by step, end with '정답: <number>'"; persona = a careful maths-teacher persona before the
question. Writes OUT/eval.json (accuracy and every answer per template), OUT/accuracy.png (bar plot) and
OUT/samples.md. Answers are greedy; a final answer is read as the math eval and GRPO reward read it
(정답: 42, #### 42, \\boxed{42}, else the last number). See docs/evaluation.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("target", metavar="DIR", help="model directory (HF, merged or adapter)")
    p.add_argument("--data", default="builtin:math:ko", help="GRPO-style JSONL {prompt, ground_truth_answer}, "
                   "builtin:math[:ko|en|mixed] or hf:NAME[:CONFIG][@SPLIT] (default builtin:math:ko)")
    p.add_argument("--template", dest="templates", action="append", default=[], metavar="NAME[=TEXT]",
                   help="plain, step, persona, or NAME=TEXT with {question} (repeatable; default: all three)")
    p.add_argument("--n", type=int, default=40, help="problems (default 40)")
    p.add_argument("--seed", type=int, default=9002, help="generator seed of builtin:math (default 9002, the "
                   "eval's held-out seed)")
    p.add_argument("--max-new-tokens", type=int, default=96, help="tokens per answer (default 96)")
    p.add_argument("--batch", type=int, default=32, help="answers decoded together (default 32)")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--out", default="runs/eval_prompts", help="output directory (default runs/eval_prompts)")


def run(args) -> int:
    from krllm.errors import UsageError
    from krllm.eval.prompts import parse_templates, run_prompts

    if args.n < 1:
        raise UsageError(f"--n {args.n}: must be at least 1")
    templates = parse_templates(args.templates)
    out = run_prompts(args.target, args.data, args.out, templates, n=args.n, seed=args.seed,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch, system=args.system,
                      device=args.device)
    for name, r in out["prompts"].items():
        print(f"{name:>12}: exact match {r['correct']}/{r['n']} = {r['accuracy']:.1%}")
    print(f"wrote {args.out}/eval.json, accuracy.png, samples.md ({out['wall_s']:.1f}s)")
    return 0
