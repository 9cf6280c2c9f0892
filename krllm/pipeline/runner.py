"""The pipeline runner: wire stages, decide skip / resume / run from lineage, run each in a child.

    runner = Pipeline(load_pipeline("configs/pipelines/demo_ko.yaml"), config_path=...)
    runner.run(from_stage="sft")          # re-run sft and everything after it

Why a child process per stage: the kernel's high-water mark of that process (VmHWM, reported by
the child; see child.peak_rss) is the stage's exact peak RSS, memory is returned between stages,
and a crash (or a kill -9) of a stage cannot take the runner or the other stages' records down.
The runner also samples the RSS of the stage's whole process tree every POLL_S seconds; the larger
of the two is recorded. The cost is one Python start-up per stage (~2 s with torch).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from krllm.config import ConfigError, atomic_write_text, write_resolved
from krllm.errors import KrllmError
from krllm.pipeline.config import PipelineConfig, StageSpec, stage_config_dict
from krllm.pipeline.display import Display
from krllm.pipeline.kinds import StageContext, StageKind
from krllm.pipeline.stages import get_kind
from krllm.pipeline.state import (book_dir, changed_keys, external_inputs, fingerprint, log_path,
                                  output_record, read_state, verify_output, write_state)
from krllm.runs import write_json

DONE, RUNNING, FAILED, INTERRUPTED = "done", "running", "failed", "interrupted"
POLL_S = 0.5
STOP_GRACE_S = 120.0  # time a stage gets to save a checkpoint after Ctrl-C


@dataclass
class StagePlan:
    """One stage, wired and with its config prepared; `action` is filled in when its turn comes."""

    name: str
    kind: StageKind
    spec: StageSpec
    ctx: StageContext
    estimate_s: float = 30.0
    action: str = "pending"  # skip | resume | run
    reason: str = ""
    parts: dict = field(default_factory=dict)  # what the fingerprint is made of
    cfg: Any = None  # ctx.config validated into the kind's schema (the dict for a kind without one); None = invalid


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class Pipeline:
    def __init__(self, cfg: PipelineConfig, config_path: str | Path | None = None,
                 command: str | None = None, display: Display | None = None):
        self.cfg = cfg
        self.config_path = str(config_path) if config_path else None
        self.command = command or "krllm pipeline run " + (self.config_path or "<config>")
        self.run_dir = cfg.run_dir
        self.display = display
        self.last_wall_s: float | None = None  # wall time of the last run() (skipped stages cost ~0)
        self.plans = self._build()

    # ---- wiring ----------------------------------------------------------------------------
    def _build(self) -> list[StagePlan]:
        """Resolve kinds, wire each role to an earlier stage, prepare configs; every problem at once."""
        problems: list[str] = []
        plans: list[StagePlan] = []
        by_name: dict[str, StagePlan] = {}
        for name, spec in self.cfg.stages.items():
            kind_name = self.cfg.kind_of(name)
            try:
                kind = get_kind(kind_name)
            except KrllmError as e:
                problems.append(f"stages.{name}.kind: {e}")
                continue
            upstream: dict[str, str] = {}
            for role in spec.inputs:
                if role not in kind.needs:
                    problems.append(f"stages.{name}.inputs.{role}: a {kind.name} stage has no input {role!r} "
                                    f"(its inputs: {', '.join(kind.needs) or 'none'})")
            for role, kinds in kind.needs.items():
                if role in spec.inputs:
                    src = spec.inputs[role]
                    if src not in by_name:
                        problems.append(f"stages.{name}.inputs.{role}: {src!r} is not a stage defined before {name}")
                    elif by_name[src].kind.name not in kinds:
                        problems.append(f"stages.{name}.inputs.{role}: {src!r} is a {by_name[src].kind.name} stage; "
                                        f"{role} needs one of: {', '.join(kinds)}")
                    else:
                        upstream[role] = src
                    continue
                if role in kind.explicit:
                    continue  # wired only by name (stages.<name>.inputs)
                found = [p for p in plans if p.kind.name in kinds]
                if found:
                    best = min(found, key=lambda p: (kinds.index(p.kind.name), -plans.index(p)))
                    upstream[role] = best.name
                elif role not in kind.optional:
                    problems.append(f"stages.{name}: a {kind.name} stage needs an earlier stage of kind "
                                    f"{' or '.join(kinds)} for its {role!r} input (add one, or set "
                                    f"stages.{name}.inputs.{role})")
            try:
                config = stage_config_dict(spec)
            except ConfigError as e:
                problems.extend(f"stages.{name}.config: {p}" for p in e.problems)
                continue
            where = spec.config or "inline config"
            # an upstream whose config did not validate (reported there) may not know its outputs
            outputs = {role: self._outputs(by_name[src]) for role, src in upstream.items()}
            upstream_invalid = any(by_name[src].cfg is None for src in upstream.values())
            stage_dir = self.run_dir / name
            ctx = StageContext(
                pipeline=self.cfg.name, stage=name, kind=kind_name, run_dir=str(self.run_dir),
                stage_dir=str(stage_dir), config=config,
                inputs={role: {out: str(self.run_dir / upstream[role] / rel) for out, rel in m.items()}
                        for role, m in outputs.items() if m is not None},
                upstream=upstream, upstream_config={role: by_name[src].ctx.config for role, src in upstream.items()
                                                     if by_name[src].cfg is not None},
                config_file=str(book_dir(self.run_dir) / "configs" / f"{name}.yaml"))
            plan = StagePlan(name=name, kind=kind, spec=spec, ctx=ctx)
            plans.append(plan)
            by_name[name] = plan
            try:
                if kind.prepare is not None:
                    ctx.config = kind.prepare(config, ctx)
                plan.cfg = kind.typed(ctx.config, where)  # now, not after an hour of the stages before it
            except ConfigError as e:
                problems.extend(f"stages.{name} ({where}): {p}" for p in e.problems)
                continue
            except KrllmError as e:
                if not upstream_invalid:  # else a consequence of the upstream's problem, reported there
                    problems.append(f"stages.{name} ({where}): {e}")
                continue
            plan.estimate_s = kind.estimate(plan.cfg)
            prev = read_state(self.run_dir, name)
            if prev and prev.get("wall_s"):
                plan.estimate_s = float(prev["wall_s"])  # measured last time beats the guess
        if problems:
            raise ConfigError(self.config_path or "<pipeline>", problems)
        return plans

    @staticmethod
    def _outputs(plan: StagePlan) -> dict[str, str] | None:
        """An upstream plan's output map; None when it depends on a config that did not validate."""
        if plan.cfg is None and callable(plan.kind.outputs):
            return None
        return plan.kind.output_map(plan.cfg)

    def plan(self, name: str) -> StagePlan:
        for p in self.plans:
            if p.name == name:
                return p
        raise KrllmError(f"no stage named {name!r}; stages: {', '.join(p.name for p in self.plans)}")

    # ---- decisions -------------------------------------------------------------------------
    def _parts(self, plan: StagePlan) -> dict | None:
        """What the fingerprint hashes; None while an upstream stage has no finished outputs."""
        inputs = {}
        for role, src in plan.ctx.upstream.items():
            st = read_state(self.run_dir, src)
            if not st or st.get("status") != DONE:
                return None
            inputs[role] = {out: rec.get("sha256") for out, rec in st.get("outputs", {}).items()}
        return {"kind": plan.kind.name, "config": plan.ctx.config, "inputs": inputs,
                "external": external_inputs(plan.ctx.config, self.run_dir)}

    def decide(self, plan: StagePlan, forced_by: str | None = None) -> StagePlan:
        """Fill plan.action/reason: skip (unchanged), resume (interrupted, same inputs) or run."""
        parts = self._parts(plan)
        plan.parts = parts or {}
        if forced_by:
            plan.action, plan.reason = "run", f"forced by --from {forced_by}"
            return plan
        if plan.kind.always_run:
            plan.action, plan.reason = "run", "always runs (cheap, reads every stage)"
            return plan
        if parts is None:
            plan.action, plan.reason = "run", "after its upstream stages run"
            return plan
        fp = fingerprint(**parts)
        prev = read_state(self.run_dir, plan.name)
        if prev is None:
            plan.action, plan.reason = "run", "no previous run"
        elif prev.get("fingerprint") != fp:
            plan.action, plan.reason = "run", self._why_changed(prev.get("parts") or {}, parts)
        elif prev.get("status") == DONE:
            bad = [o for o, rec in prev.get("outputs", {}).items() if not verify_output(rec)]
            if bad:
                plan.action, plan.reason = "run", f"output {', '.join(bad)} missing or modified"
            else:
                plan.action, plan.reason = "skip", "inputs and config unchanged"
        elif plan.kind.resumable and Path(plan.ctx.stage_dir).exists():
            plan.action, plan.reason = "resume", f"previous attempt {prev.get('status')}; same inputs"
        else:
            plan.action, plan.reason = "run", f"previous attempt {prev.get('status')}"
        return plan

    @staticmethod
    def _why_changed(old: dict, new: dict) -> str:
        keys = changed_keys(old.get("config"), new["config"])
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            return "config changed: " + ", ".join(keys[:3]) + more
        roles = [r for r in new["inputs"] if (old.get("inputs") or {}).get(r) != new["inputs"][r]]
        if roles:
            return "input changed: " + ", ".join(roles)
        files = [f for f in new["external"] if (old.get("external") or {}).get(f) != new["external"][f]]
        if files:
            return "file changed: " + ", ".join(files[:3])
        return "stage kind changed"

    # ---- running ---------------------------------------------------------------------------
    def run(self, from_stage: str | None = None, until: str | None = None, dry_run: bool = False) -> list[StagePlan]:
        """Run the stages in order (from `from_stage` forced, up to `until` inclusive)."""
        names = [p.name for p in self.plans]
        for opt, val in (("--from", from_stage), ("--until", until)):
            if val is not None and val not in names:
                raise KrllmError(f"{opt} {val}: no such stage; stages: {', '.join(names)}")
        last = names.index(until) if until else len(names) - 1
        first_forced = names.index(from_stage) if from_stage else len(names)
        todo = self.plans[: last + 1]
        if dry_run:
            for i, plan in enumerate(todo):
                self.decide(plan, forced_by=from_stage if i >= first_forced else None)
            return todo
        book = book_dir(self.run_dir)
        book.mkdir(parents=True, exist_ok=True)
        write_resolved(self.cfg, book / "pipeline.yaml")
        started = time.time()
        self._record_invocation({"command": self.command, "cwd": os.getcwd(), "started": now(),
                                 "from": from_stage, "until": until})
        display = self.display or Display()
        display.start(self.cfg.name, todo)
        try:
            for i, plan in enumerate(todo):
                self.decide(plan, forced_by=from_stage if i >= first_forced else None)
                display.stage_start(plan)
                if plan.action == "skip":
                    display.stage_end(plan, read_state(self.run_dir, plan.name) or {})
                    continue
                state = self._execute(plan, display)
                display.stage_end(plan, state)
                if state["status"] != DONE:
                    raise KrllmError(f"stage {plan.name} failed: {state.get('error')}\n"
                                     f"  log: {log_path(self.run_dir, plan.name)}\n"
                                     f"  fix the cause and re-run the same command: finished stages are skipped"
                                     + (", this one resumes" if plan.kind.resumable else ""))
        finally:
            display.stop()
            self.last_wall_s = time.time() - started
            self._record_invocation({"finished": now(), "wall_s": round(self.last_wall_s, 2),
                                     "stages": {p.name: {"action": p.action, "reason": p.reason} for p in todo}})
        return todo

    def _record_invocation(self, rec: dict) -> None:
        """Append to _pipeline/invocations.jsonl: a line when a run starts (its command) and when it ends."""
        import json

        with open(book_dir(self.run_dir) / "invocations.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")

    def _execute(self, plan: StagePlan, display: Display) -> dict:
        stage_dir = Path(plan.ctx.stage_dir)
        resume = plan.action == "resume"
        prev = read_state(self.run_dir, plan.name) or {}
        if not resume and stage_dir.exists():
            shutil.rmtree(stage_dir)  # a fresh run never mixes with a stale one's files
        plan.ctx.resume = resume
        attempts = list(prev.get("attempts", [])) if resume else []
        atomic_write_text(plan.ctx.config_file, yaml.safe_dump(plan.ctx.config, sort_keys=False, allow_unicode=True))
        fp = fingerprint(**plan.parts) if plan.parts else None
        state = {"stage": plan.name, "kind": plan.kind.name, "status": RUNNING, "fingerprint": fp,
                 "parts": plan.parts, "stage_dir": str(stage_dir), "upstream": plan.ctx.upstream,
                 "config_file": plan.spec.config, "started": now(), "attempts": attempts,
                 "command": plan.kind.command.format(config=plan.ctx.config_file) if plan.kind.command else None,
                 "log": str(log_path(self.run_dir, plan.name))}
        write_state(self.run_dir, plan.name, state)
        t0 = time.time()

        self._cpu_s = None

        def record(outcome: str, peak_mb: float | None) -> None:
            attempts.append({"started": state["started"], "wall_s": round(time.time() - t0, 2),
                             "cpu_s": self._cpu_s, "peak_rss_mb": peak_mb, "mode": "resume" if resume else "fresh",
                             "outcome": outcome})
            peaks = [a["peak_rss_mb"] for a in attempts if a["peak_rss_mb"]]
            cpus = [a.get("cpu_s") for a in attempts]
            state.update(attempts=attempts, finished=now(), status=outcome,
                         wall_s=round(sum(a["wall_s"] for a in attempts), 2),
                         cpu_s=round(sum(cpus), 2) if all(c is not None for c in cpus) else None,
                         peak_rss_mb=max(peaks) if peaks else None,
                         peak_rss_scope="stage process (VmHWM) / process tree (sampled)" if self.cfg.isolation == "process"
                         else "runner process high-water mark (inline)")

        try:
            if self.cfg.isolation == "process":
                ok, error, summary, peak_mb = self._run_child(plan, display)
            else:
                ok, error, summary, peak_mb = self._run_inline(plan)
        except KeyboardInterrupt:
            record(INTERRUPTED, None)
            state["error"] = "interrupted (Ctrl-C); re-run the same command to " + (
                "resume" if plan.kind.resumable else "start this stage again")
            write_state(self.run_dir, plan.name, state)
            raise
        record(DONE if ok else FAILED, peak_mb)
        if ok:
            out_map = plan.kind.output_map(plan.cfg)
            outputs = {o: output_record(stage_dir / rel) for o, rel in out_map.items()}
            missing = [o for o, rec in outputs.items() if not rec["exists"]]
            if missing:
                ok, error = False, (f"finished but did not write {', '.join(missing)} "
                                    f"({', '.join(str(stage_dir / out_map[m]) for m in missing)})")
            state.update(outputs=outputs, summary=summary or {})
        state.update(status=DONE if ok else FAILED, error=None if ok else error)
        attempts[-1]["outcome"] = state["status"]
        write_state(self.run_dir, plan.name, state)
        return state

    def _run_inline(self, plan: StagePlan) -> tuple[bool, str | None, dict, float | None]:
        import resource

        log = log_path(self.run_dir, plan.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        try:
            summary = plan.kind.run_function()(plan.ctx) or {}
            ok, error = True, None
        except (ConfigError, KrllmError) as e:
            summary, ok, error = {}, False, str(e)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return ok, error, summary, round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10), 1)

    def _run_child(self, plan: StagePlan, display: Display) -> tuple[bool, str | None, dict, float | None]:
        import json

        book = book_dir(self.run_dir)
        job = book / "jobs" / f"{plan.name}.json"
        result = book / "jobs" / f"{plan.name}.result.json"
        result.unlink(missing_ok=True)
        write_json(job, {"context": json.loads(plan.ctx.to_json()), "result": str(result)})
        log = log_path(self.run_dir, plan.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("COLUMNS", "120")
        cmd = [sys.executable, "-m", "krllm.pipeline.child", str(job)]
        with open(log, "a", encoding="utf-8") as logf:
            logf.write(f"\n===== {now()} {plan.name} ({plan.action}: {plan.reason})\n$ {shlex.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
            try:
                status, peak_mb = self._wait(proc, plan, display, log)
            except KeyboardInterrupt:
                self._stop(proc)
                raise
        if result.exists():
            res = json.loads(result.read_text(encoding="utf-8"))
            own = [res.get("peak_rss_mb"), res.get("children_peak_rss_mb"), peak_mb]
            peak_mb = max((v for v in own if v), default=None)
            self._cpu_s = res.get("cpu_s")
            return bool(res.get("ok")), res.get("error"), res.get("summary") or {}, peak_mb
        if status < 0:
            name = signal.Signals(-status).name if -status in signal.valid_signals() else str(-status)
            return False, f"killed by signal {name}" + (" (out of memory?)" if name == "SIGKILL" else ""), {}, peak_mb
        return False, f"exited with code {status} without a result (see the log)", {}, peak_mb

    def _wait(self, proc: subprocess.Popen, plan: StagePlan, display: Display, log: Path) -> tuple[int, float | None]:
        """Poll the child, feeding the display; return (exit status, peak RSS sampled from outside, MB).

        The sampled peak (RSS of the child and all its descendants, every POLL_S) is the fallback when a
        stage dies without reporting its own high-water mark, and catches multi-process stages whose
        workers together hold more than any one of them.
        """
        t0 = time.time()
        sampled_peak = 0.0
        while proc.poll() is None:
            rss = tree_rss_mb(proc.pid)
            sampled_peak = max(sampled_peak, rss or 0)
            progress = None
            if plan.kind.progress is not None:
                try:
                    progress = plan.kind.progress(plan.ctx, plan.cfg)
                except (OSError, ValueError, KeyError, TypeError):
                    progress = None
            display.stage_tick(plan, time.time() - t0, progress, rss, last_line(log))
            time.sleep(POLL_S)
        return proc.returncode, round(sampled_peak, 1) or None

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        """Ctrl-C: forward one SIGINT (the stage saves a checkpoint and exits), wait, then escalate.

        The child runs in its own session, so the terminal's Ctrl-C reaches only the runner and the
        stage sees exactly one SIGINT (a second one means "abort without saving" to our trainers).
        A second Ctrl-C here kills the stage's whole process group at once.
        """
        def kill_group(sig: int) -> None:
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

        kill_group(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            kill_group(signal.SIGTERM)
        except KeyboardInterrupt:
            pass
        try:
            proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            kill_group(signal.SIGKILL)
            proc.wait()


def tree_rss_mb(pid: int) -> float | None:
    """Current RSS of a process and its descendants (for the live display; psutil)."""
    import psutil

    try:
        p = psutil.Process(pid)
        total = p.memory_info().rss
        for c in p.children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:  # a worker exited between the listing and the read
                pass
        return total / (1 << 20)
    except psutil.Error:  # the stage exited between polls: no sample, not an error
        return None


def last_line(path: Path, size: int = 4096) -> str:
    """The last non-empty line of a log (after the last carriage return), ANSI codes stripped."""
    import re

    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - size))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    tail = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", tail)
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in tail.splitlines()]
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def log_tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])
