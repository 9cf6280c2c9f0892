"""The `report` stage: the report card (report.md + report.html + plots/) of the whole pipeline run.

Stand-alone: `krllm report runs/<p>`. Always runs: it is cheap and reads every stage's files.
"""

from __future__ import annotations

from krllm.pipeline.kinds import StageContext, StageKind


def _run(ctx: StageContext) -> dict:
    from krllm.pipeline.report import build_report

    return {"note": f"wrote {build_report(ctx.run_dir)}"}


KIND = StageKind(
    name="report", run=_run, outputs={}, always_run=True, estimate_s=8.0,
    description="report card: report.md + report.html + plots/ in the pipeline directory")
