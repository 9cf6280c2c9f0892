"""Entry point of a stage's child process: `python -m krllm.pipeline.child JOB.json`.

Reads the StageContext from the job file, runs the stage, and writes {"ok", "error", "summary"}
to the job's result file (atomically). Errors a user can act on (ConfigError, KrllmError) become a
one-line `error`; anything else also prints its traceback to the stage log.
"""

from __future__ import annotations

import json
import sys
import traceback

from krllm.config import ConfigError
from krllm.errors import KrllmError
from krllm.pipeline.kinds import StageContext
from krllm.pipeline.stages import get_kind
from krllm.runs import write_json


def peak_rss() -> dict:
    """This process's own high-water RSS and the largest of its finished children's, in MB; CPU seconds.

    Linux: VmHWM of /proc/self/status belongs to the address space made by exec, so it does not
    include the parent's memory that `ru_maxrss` inherits across fork + exec (the runner has torch
    loaded; every child would otherwise "peak" at the runner's size).
    """
    import resource

    out = {}
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:  # not Linux: ru_maxrss (bytes on macOS) is the best there is
        scale = 1 << 20 if sys.platform == "darwin" else 1 << 10
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    out["cpu_s"] = round(me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime, 2)  # all cores, all workers
    kids = ch.ru_maxrss
    if kids:
        out["children_peak_rss_mb"] = round(kids / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)
    return out


def main(argv: list[str]) -> int:
    job = json.loads(open(argv[0], encoding="utf-8").read())
    ctx = StageContext(**job["context"])
    try:
        summary = get_kind(ctx.kind).run_function()(ctx) or {}
        res = {"ok": True, "error": None, "summary": summary}
    except (ConfigError, KrllmError) as e:
        print(f"error: {e}", file=sys.stderr)
        res = {"ok": False, "error": str(e), "summary": {}}
    except KeyboardInterrupt:
        res = {"ok": False, "error": "interrupted", "summary": {}}
    except Exception as e:  # noqa: BLE001 - reported with its traceback, then the runner stops the pipeline
        traceback.print_exc()
        res = {"ok": False, "error": f"{type(e).__name__}: {e}", "summary": {}}
    res.update(peak_rss())
    write_json(job["result"], res)
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
