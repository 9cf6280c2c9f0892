"""Progress and console output for datatrove stages running in worker processes.

Workers can't draw on the parent's terminal, so each task writes a tiny counter file
(`<dir>/<rank>`, replaced atomically at most twice a second) and the parent sums them into a rich
progress bar with rate and ETA. datatrove's own per-task INFO logs still go to
`<out>/logs/<stage>/logs/task_NNNNN.log`; the console only shows warnings (or everything with
`verbose=True`), and expected `KrllmError`s are left to the CLI's one-line message.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from datatrove.executor import LocalPipelineExecutor

from krllm.errors import KrllmError

GUARD_HELP = (
    "krllm data prepare starts worker processes, which re-import the script that started them. "
    "Put the call under `if __name__ == \"__main__\":` in your script (or use workers: 1)."
)


class ProgressCounter:
    """Worker side: `add(n)` as work is done; the total so far reaches the parent through a file."""

    def __init__(self, folder: str | None, rank: int, interval: float = 0.5):
        self.path = Path(folder) / f"{rank:05d}" if folder else None
        self.interval = interval
        self.value = 0.0
        self._last = 0.0
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, n: float) -> None:
        self.value += n
        if self.path and time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if not self.path:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(repr(self.value))
        os.replace(tmp, self.path)
        self._last = time.monotonic()


def read_progress(folder: str | Path, count_files: bool = False) -> float:
    """Parent side: the sum of every worker's counter (missing or half-made files count as 0), or
    with `count_files` the number of files (datatrove's per-task completion markers)."""
    total = 0.0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0.0
    if count_files:
        return float(len(entries))
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            total += float(Path(e.path).read_text() or 0)
        except (OSError, ValueError):
            pass
    return total


@contextlib.contextmanager
def stage_progress(progress, label: str, folder: str | Path, total: float, unit: str,
                   count_files: bool = False) -> Iterator[None]:
    """Show one stage as a bar fed from the counter files in `folder` while the body runs."""
    if progress is None:
        yield
        return
    scale = 1e6 if unit == "MB" else 1.0
    task = progress.add_task(label, total=max(total / scale, 1e-9), unit=unit)
    stop = threading.Event()

    def poll():
        while not stop.wait(0.25):
            progress.update(task, completed=min(read_progress(folder, count_files), total) / scale)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield
        progress.update(task, completed=total / scale)
    finally:
        stop.set()
        thread.join()


def make_progress(console):
    """A rich Progress with rate and ETA columns (units per stage: MB, docs or tasks)."""
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            unit = task.fields.get("unit", "")
            if not speed:
                return Text(f"? {unit}/s", style="progress.data.speed")
            return Text(f"{speed:,.1f} {unit}/s", style="progress.data.speed")

    return Progress(
        TextColumn("{task.description:<25}"), BarColumn(bar_width=20),
        TextColumn("{task.completed:>8,.1f}/{task.total:,.1f} {task.fields[unit]}"),
        Rate(), TextColumn("ETA"), TimeRemainingColumn(compact=True),
        console=console, transient=False,
    )


_STATE: dict = {"depth": 0, "console": None}  # nesting, our stderr sink id, id(task log file) -> sink id


@contextlib.contextmanager
def datatrove_console(level: str) -> Iterator[None]:
    """Route datatrove's loguru output: everything to the task log files, only `level`+ to stderr.

    datatrove's executor installs a stderr sink at INFO for every task (`add_task_logger`) and
    re-installs a DEBUG stderr sink after it (`close_task_logger`); both are swapped for the
    duration of a stage run so the console stays readable. Sinks are added as rarely as possible
    (each loguru `add` costs ~10 ms). KrllmErrors (bad input) are not printed here: the CLI prints
    them once, without a traceback. datatrove's tqdm bars are switched off too.
    """
    import datatrove.executor.base as base
    import multiprocess
    import tqdm.std as tqdm_std
    from datatrove.utils import logging as dt_logging
    from loguru import logger

    def console_filter(record) -> bool:
        exc = record["exception"]
        if exc is not None and isinstance(exc.value, KrllmError):
            return False
        # expected, not a problem: a task whose documents had no near-duplicates
        return not record["message"].startswith("No .remove file")

    def add_task_logger(logging_dir, rank, local_rank=0, node_rank=-1):
        logfile = logging_dir.open(f"logs/task_{rank:05d}.log", "w")
        _STATE[id(logfile)] = logger.add(
            logfile, colorize=False, level="DEBUG",
            format="{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <8} | {name}:{function}:{line} - {message}")
        logger.info(f"Launching pipeline for {rank=}")
        return logfile

    def close_task_logger(logfile):
        logger.complete()
        logger.remove(_STATE.pop(id(logfile)))
        logfile.close()

    outer = _STATE["depth"] == 0
    saved = base.add_task_logger, base.close_task_logger
    tqdm_init = tqdm_std.tqdm.__init__
    base.add_task_logger, base.close_task_logger = add_task_logger, close_task_logger
    if outer:
        if level != "INFO":
            tqdm_std.tqdm.__init__ = functools.partialmethod(tqdm_init, disable=True)
        if _STATE["console"] is None:  # (a worker process keeps its sink between tasks)
            logger.remove()
            _STATE["console"] = logger.add(sys.stderr, level=level, filter=console_filter,
                                           colorize=dt_logging.DATATROVE_COLORIZE_LOGS,
                                           format="<level>{level}</level> datatrove: {message}")
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _STATE["depth"] -= 1
        base.add_task_logger, base.close_task_logger = saved
        tqdm_std.tqdm.__init__ = tqdm_init
        if outer and multiprocess.parent_process() is None:
            logger.remove(_STATE["console"])  # give the caller's process datatrove's default back
            _STATE["console"] = None
            dt_logging.setup_default_logger()


class QuietLocalExecutor(LocalPipelineExecutor):
    """datatrove's LocalPipelineExecutor with the console routing of `datatrove_console`."""

    def __init__(self, *args, console_level: str = "WARNING", **kwargs):
        super().__init__(*args, **kwargs)
        self.console_level = console_level

    def run(self):
        with datatrove_console(self.console_level):
            return super().run()

    def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
        with datatrove_console(self.console_level):
            return super()._run_for_rank(rank, local_rank, node_rank)


def _probe() -> None:
    """Runs in a fresh worker: importing the parent's __main__ must not start another prepare."""


def check_worker_start(start_method: str, preload: list[str]) -> None:
    """Fail fast, with advice, when worker processes can't start.

    A script without an `if __name__ == "__main__":` guard re-runs `prepare()` in every worker it
    spawns; multiprocessing pools then respawn dying workers forever and the parent hangs. One
    probe process shows whether a worker starts cleanly before any pool exists.
    """
    import multiprocess

    refuse_in_worker()
    if start_method == "fork":
        return
    ctx = multiprocess.get_context(start_method)
    if start_method == "forkserver":
        ctx.set_forkserver_preload(preload)
    p = ctx.Process(target=_probe, name="krllm-probe")
    p.start()
    p.join(120)
    if p.exitcode != 0:
        if p.exitcode is None:
            p.terminate()
        raise KrllmError(f"a {start_method} worker process failed to start (exit code {p.exitcode}; its "
                         f"traceback is above). {GUARD_HELP}")


class WorkerStartCheck:
    """`check_worker_start` in a background thread, so the worker server imports its modules on one
    core while the caller builds the plan (hashing sources, loading the tokenizer) on the other.
    `wait()` joins it and raises what the check raised."""

    def __init__(self, start_method: str, preload: list[str]):
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._check, args=(start_method, preload), name="krllm-worker-check",
                                        daemon=True)
        self._thread.start()

    def _check(self, start_method: str, preload: list[str]) -> None:
        try:
            check_worker_start(start_method, preload)
        except BaseException as e:  # handed to the caller by wait()
            self._error = e

    def wait(self, raise_error: bool = True) -> None:
        self._thread.join()
        if raise_error and self._error is not None:
            raise self._error


def refuse_in_worker() -> None:
    """Raise when called while a worker process is importing the parent's main module."""
    import multiprocessing

    import multiprocess

    for mp in (multiprocess, multiprocessing):
        if getattr(mp.current_process(), "_inheriting", False):
            raise KrllmError(f"prepare() was called while a worker process imported the main script. {GUARD_HELP}")
