"""Console view of a pipeline run: a live table of stages with progress, memory and an overall ETA.

On a terminal it redraws in place (rich Live); elsewhere (CI logs, files) it prints one line when a
stage starts or ends and a progress line every 30 s. The overall ETA adds the current stage's
remaining time (from its progress rate, or its estimate) to the estimates of the stages after it;
an estimate is the stage's measured wall time from the last run, or its kind's first-run guess.
"""

from __future__ import annotations

import time

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

ICONS = {"pending": "·", "running": "▶", "done": "✓", "skipped": "↷", "failed": "✗", "interrupted": "■"}
PLAIN_EVERY_S = 30.0


def fmt_s(s: float | None) -> str:
    if s is None:
        return "—"
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def fmt_mb(mb: float | None) -> str:
    if not mb:
        return "—"
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


class Display:
    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.console = console or Console()
        if not self.console.is_terminal:
            self.console.soft_wrap = True  # log files and CI: one line per message, no wrapping at 80 columns
        self.use_live = self.console.is_terminal if live is None else live
        self.rows: dict[str, dict] = {}
        self.name = ""
        self.t0 = time.time()
        self._live: Live | None = None
        self._last_plain = 0.0

    # ---- state -----------------------------------------------------------------------------
    def start(self, name: str, plans) -> None:
        self.name, self.t0 = name, time.time()
        self.rows = {p.name: {"kind": p.kind.name, "status": "pending", "estimate": p.estimate_s, "elapsed": 0.0,
                              "progress": None, "rss": None, "line": "", "reason": ""} for p in plans}
        if self.use_live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=2, transient=False)
            self._live.start()
        else:
            total = sum(r["estimate"] for r in self.rows.values())
            self.console.print(f"pipeline {name}: {len(self.rows)} stages, first-guess total ~{fmt_s(total)}")

    def stage_start(self, plan) -> None:
        row = self.rows[plan.name]
        row.update(status="running" if plan.action != "skip" else "skipped", reason=plan.reason, started=time.time())
        if not self.use_live:
            idx = list(self.rows).index(plan.name) + 1
            verb = {"skip": "skip", "resume": "resume", "run": "run"}.get(plan.action, plan.action)
            self.console.print(f"[{idx}/{len(self.rows)}] {plan.name} ({row['kind']}): {verb} — {plan.reason}"
                               + (f"; estimate {fmt_s(row['estimate'])}" if plan.action != "skip" else ""))
        self._refresh()

    def stage_tick(self, plan, elapsed: float, progress, rss: float | None, line: str) -> None:
        row = self.rows[plan.name]
        row.update(elapsed=elapsed, progress=progress, line=line)
        if rss:
            row["rss"] = max(row["rss"] or 0, rss)
        if self.use_live:
            self._refresh()
        elif time.time() - self._last_plain >= PLAIN_EVERY_S:
            self._last_plain = time.time()
            pct = ""
            if progress and progress[1]:
                pct = f" {100 * progress[0] / progress[1]:.0f}% ({progress[0]:g}/{progress[1]:g})"
            self.console.print(f"    {plan.name}{pct} {fmt_s(elapsed)} elapsed, RSS {fmt_mb(rss)}, "
                               f"stage ETA {fmt_s(self._stage_remaining(row))}, overall ETA {fmt_s(self.eta())}")

    def stage_end(self, plan, state: dict) -> None:
        row = self.rows[plan.name]
        if plan.action == "skip":
            row.update(status="skipped", elapsed=0.0, wall=state.get("wall_s"), rss=state.get("peak_rss_mb"))
        else:
            row.update(status=state.get("status", "failed"), wall=state.get("wall_s"),
                       rss=state.get("peak_rss_mb") or row["rss"], elapsed=time.time() - row.get("started", time.time()))
        if not self.use_live:
            if plan.action == "skip":
                self.console.print(f"    ↷ {plan.name} skipped (last run took {fmt_s(row.get('wall'))})")
            else:
                self.console.print(f"    {ICONS.get(row['status'], '?')} {plan.name} {row['status']} in "
                                   f"{fmt_s(row['elapsed'])}, peak RSS {fmt_mb(row['rss'])}")
        self._refresh()

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    # ---- ETA -------------------------------------------------------------------------------
    @staticmethod
    def _stage_remaining(row: dict) -> float:
        elapsed, prog = row["elapsed"], row["progress"]
        if prog and prog[1] and prog[0] > 0 and elapsed > 3:
            frac = min(1.0, prog[0] / prog[1])
            return elapsed * (1 - frac) / frac
        return max(row["estimate"] - elapsed, 0.0)

    def eta(self) -> float:
        """Seconds until the whole pipeline is done (current stage's rate + later stages' estimates)."""
        total = 0.0
        for row in self.rows.values():
            if row["status"] == "pending":
                total += row["estimate"]
            elif row["status"] == "running":
                total += self._stage_remaining(row)
        return total

    # ---- rendering -------------------------------------------------------------------------
    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("", "stage", "kind", "time", "peak RSS", "progress / note"):
            table.add_column(col, no_wrap=col != "progress / note", overflow="ellipsis")
        for name, row in self.rows.items():
            status = row["status"]
            style = {"done": "green", "skipped": "dim", "failed": "red", "interrupted": "yellow",
                     "running": "bold cyan"}.get(status, "")
            if status == "running":
                prog = row["progress"]
                bar = ProgressBar(total=prog[1] if prog and prog[1] else None,
                                  completed=prog[0] if prog and prog[1] else 0, width=24)
                pct = f"{100 * prog[0] / prog[1]:3.0f}% " if prog and prog[1] else ""
                note = Group(bar, Text(f"{pct}{row['line'][:100]}", style="dim"))
                time_s = f"{fmt_s(row['elapsed'])} / ~{fmt_s(row['elapsed'] + self._stage_remaining(row))}"
            elif status == "pending":
                note, time_s = Text(row.get("reason", ""), style="dim"), f"~{fmt_s(row['estimate'])}"
            elif status == "skipped":
                note, time_s = Text(row.get("reason") or "unchanged", style="dim"), "skip"
            else:
                note, time_s = Text(row.get("reason", ""), style="dim"), fmt_s(row.get("elapsed"))
            table.add_row(Text(ICONS.get(status, "?"), style=style), Text(name, style=style), row["kind"], time_s,
                          fmt_mb(row["rss"]), note)
        footer = Text(f"{self.name}: elapsed {fmt_s(time.time() - self.t0)} · overall ETA ~{fmt_s(self.eta())}",
                      style="bold")
        return Group(table, footer)
