"""`krllm report RUN_DIR`: rebuild the report card (report.md, report.html, plots/) of a pipeline run.

    krllm report runs/demo_ko
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a pipeline run directory, e.g. runs/demo_ko (has _pipeline/state/)")


def run(args) -> int:
    from krllm.pipeline.report import build_report, final_model

    path = build_report(args.run_dir)
    print(f"report card: {path}  (and {path.with_suffix('.html')}, plots in {path.parent / 'plots'})")
    model = final_model(args.run_dir)
    if model is not None:
        print(f"chat with it:  krllm chat {model}")
    return 0
