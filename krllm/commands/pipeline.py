"""`krllm pipeline run CONFIG`: run every stage of a pipeline, skipping what has not changed.

    krllm pipeline run configs/pipelines/demo_ko.yaml                 # the main job (~15 min, 2 CPU cores)
    krllm pipeline run configs/pipelines/demo_ko.yaml --from sft      # re-run sft and all after it
    krllm pipeline run configs/pipelines/demo_ko.yaml --set pretrain.train.max_steps=50
    krllm pipeline status configs/pipelines/demo_ko.yaml              # what would run, and why
"""

from __future__ import annotations

import argparse
import shlex
import sys

EPILOG = """\
overrides: --set KEY=VALUE sets a pipeline key (e.g. name=my_run) or, when KEY starts with a stage
name, that stage's config key: --set pretrain.train.max_steps=50 == stages.pretrain.set.train.max_steps=50.
A stage is skipped when its config, its inputs' content and the files it names are unchanged since it
finished; an interrupted resumable stage (pretrain, sft) resumes from its last checkpoint.
Per-stage logs: runs/<name>/_pipeline/logs/<stage>.log; state: runs/<name>/_pipeline/state/<stage>.json.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, help_text in (("run", "run the pipeline (skips unchanged stages, resumes interrupted ones)"),
                              ("status", "show each stage's last result and what `run` would do, without running")):
        p = sub.add_parser(action, help=help_text, description=help_text, epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", help="pipeline YAML, e.g. configs/pipelines/demo_ko.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a pipeline or stage config key (repeatable; see below)")
        p.add_argument("--from", dest="from_stage", metavar="STAGE",
                       help="force re-running STAGE and every stage after it (default: only what changed)")
        p.add_argument("--until", metavar="STAGE", help="stop after STAGE (default: run to the last stage)")
        if action == "run":
            p.add_argument("--isolation", choices=["process", "inline"],
                           help="process (default in the configs) = each stage in a child process with exact "
                                "peak RSS; inline = in this process, for debuggers")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from krllm.pipeline.config import load_pipeline
    from krllm.pipeline.runner import Pipeline

    cfg = load_pipeline(args.config, args.overrides)
    if getattr(args, "isolation", None):
        cfg.isolation = args.isolation
    command = "krllm pipeline run " + shlex.join([args.config] + [f"--set={o}" for o in args.overrides])
    console = Console()
    if not console.is_terminal:
        console.soft_wrap = True  # logs and CI: whole lines, no wrapping at 80 columns
    pipe = Pipeline(cfg, config_path=args.config, command=command)
    if args.action == "status":
        return _status(pipe, args, console)
    pipe.run(from_stage=args.from_stage, until=args.until)
    _closing_note(pipe, console)
    return 0


def _status(pipe, args, console) -> int:
    from rich.table import Table

    from krllm.pipeline.display import fmt_mb, fmt_s
    from krllm.pipeline.state import read_state

    plans = pipe.run(from_stage=args.from_stage, until=args.until, dry_run=True)
    table = Table(title=f"pipeline {pipe.cfg.name} ({pipe.run_dir})")
    for col in ("stage", "kind", "last status", "wall", "peak RSS", "next run", "why"):
        table.add_column(col)
    for p in plans:
        st = read_state(pipe.run_dir, p.name) or {}
        table.add_row(p.name, p.kind.name, st.get("status", "—"), fmt_s(st.get("wall_s")),
                      fmt_mb(st.get("peak_rss_mb")), p.action, p.reason)
    console.print(table)
    return 0


def _closing_note(pipe, console) -> None:
    from krllm.pipeline.display import fmt_mb, fmt_s
    from krllm.pipeline.state import read_all_states
    from krllm.pipeline.report import final_model

    states = read_all_states(pipe.run_dir)
    wall = sum(s.get("wall_s") or 0 for s in states.values())
    peak = max((s.get("peak_rss_mb") or 0 for s in states.values()), default=0)
    console.print(f"\n[bold]pipeline {pipe.cfg.name} done[/bold] in {fmt_s(pipe.last_wall_s)}; recorded stage "
                  f"wall times add up to {fmt_s(wall)}; largest stage peak RSS {fmt_mb(peak)}")
    report = pipe.run_dir / "report.md"
    if report.exists():
        console.print(f"report card: {report}" + (f"  (and {report.with_suffix('.html')})"
                                                  if report.with_suffix(".html").exists() else ""))
    model = final_model(pipe.run_dir)
    if model is not None:
        console.print(f"chat with it:  krllm chat {model}")
        console.print(f"serve it:      krllm serve {model} --port 8000   # OpenAI API at /v1, web chat at /")
    sys.stdout.flush()
