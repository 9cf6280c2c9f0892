"""Continuous batching for the server: one background thread runs `Engine.step()` in a loop.

Requests arrive from any thread (the HTTP event loop) through an inbox; between two decode steps
the loop takes new requests and cancellations from it, so a new request joins the running batch
at the next step instead of waiting for the batch to finish, and a cancelled one (client gone,
stop string seen) frees its cache slot at once. Each request reports its tokens through its own
callback, called on the engine thread.

    sched = Scheduler(engine)
    h = sched.submit(prompt_ids, params, max_new_tokens=64, on_token=lambda tok, finish: ...)
    sched.cancel(h)
    sched.close()
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from krllm.infer.engine import Engine, Sequence
from krllm.infer.sampling import SamplingParams

log = logging.getLogger("krllm.infer")

# on_token(token_id or None, finish_reason or None, error message or None)
TokenCallback = Callable[[int | None, str | None, str | None], None]


@dataclass(eq=False)
class Handle:
    """A submitted request as the caller sees it."""

    prompt: list[int]
    sampling: SamplingParams
    max_new_tokens: int
    stop_ids: frozenset[int] | None
    on_token: TokenCallback
    seq: Sequence | None = None
    done: bool = False
    submitted: float = field(default_factory=time.perf_counter)


class Scheduler:
    """Owns the engine thread. `submit`, `cancel` and `stats` are safe from any thread."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._inbox: list[tuple[str, Handle, str]] = []
        self._cv = threading.Condition()
        self._closed = False
        self._pending = 0  # submitted and not yet finished (waiting + running)
        self.steps = 0
        self.tokens_out = 0
        self.peak_running = 0  # most sequences decoded together so far (shows batching happened)
        self.busy_s = 0.0  # seconds spent inside Engine.step (vs wall time: how loaded the engine is)
        # dispatch(list of (callback, token, finish, error)): called once per engine step with every
        # callback of that step (None = call each callback directly on the engine thread). The server
        # uses it to wake its event loop once per step instead of once per token per request.
        self.dispatch: Callable[[list], None] | None = None
        self._out: list = []
        engine.before_forward = self._flush  # tokens of step N go out while step N + 1 computes
        self._thread = threading.Thread(target=self._loop, name="krllm-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread
    def submit(self, prompt: list[int], sampling: SamplingParams, max_new_tokens: int,
               on_token: TokenCallback, stop_ids: Iterable[int] | None = None) -> Handle:
        h = Handle(list(prompt), sampling, max_new_tokens, frozenset(stop_ids) if stop_ids is not None else None,
                   on_token)
        with self._cv:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            self._inbox.append(("add", h, ""))
            self._pending += 1
            self._cv.notify()
        return h

    def cancel(self, handle: Handle, reason: str = "cancelled") -> None:
        """Stop a request (no-op when it already finished); its slot is free before the next step."""
        with self._cv:
            if not handle.done:
                self._inbox.append(("cancel", handle, reason))
                self._cv.notify()

    @property
    def pending(self) -> int:
        """Requests accepted and not finished (running + waiting): what the server's limit counts."""
        return self._pending

    def stats(self) -> dict:
        running = len(self.engine.running)
        return {"running": running, "waiting": self._pending - running, "slots": self.engine.max_batch,
                "steps": self.steps, "tokens_generated": self.tokens_out, "peak_running": self.peak_running,
                "engine_busy_s": round(self.busy_s, 3)}

    def close(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    # ------------------------------------------------------------------ engine thread
    def _emit(self, h: Handle, token: int | None, reason: str | None, error: str | None) -> None:
        if self.dispatch is None:
            h.on_token(token, reason, error)
        else:
            self._out.append((h.on_token, token, reason, error))

    def _flush(self) -> None:
        if self._out:
            out, self._out = self._out, []
            self.dispatch(out)

    def _finish(self, h: Handle, token: int | None, reason: str | None, error: str | None = None) -> None:
        if h.done:
            return
        h.done = True
        with self._cv:
            self._pending -= 1
        self._emit(h, token, reason, error)

    def _loop(self) -> None:
        engine = self.engine
        by_seq: dict[int, Handle] = {}
        while True:
            with self._cv:
                while not self._closed and not self._inbox and not engine.has_work():
                    self._cv.wait()
                if self._closed:
                    break
                inbox, self._inbox = self._inbox, []
            for kind, h, reason in inbox:
                if kind == "add":
                    try:
                        h.seq = engine.add(h.prompt, h.sampling, h.max_new_tokens, h.stop_ids)
                    except Exception as e:  # a bad request must not take the engine down: report it
                        self._finish(h, None, None, str(e))
                        continue
                    by_seq[h.seq.id] = h
                elif h.seq is not None and not h.done:
                    engine.cancel(h.seq, reason)
                    by_seq.pop(h.seq.id, None)
                    self._finish(h, None, reason)
            if not engine.has_work():
                self._flush()
                continue
            t0 = time.perf_counter()
            try:
                events = engine.step()
            except Exception as e:  # e.g. out of memory: fail the running requests loudly, keep serving
                log.exception("engine step failed")
                for seq in engine.running + list(engine.waiting):
                    engine.cancel(seq, "error")
                    if (h := by_seq.pop(seq.id, None)) is not None:
                        self._finish(h, None, None, f"engine error: {e}")
                self._flush()
                continue
            self.steps += 1
            self.busy_s += time.perf_counter() - t0
            self.peak_running = max(self.peak_running, len(engine.running) + sum(ev.finished for ev in events))
            for ev in events:
                h = by_seq.get(ev.seq.id)
                if h is None:
                    continue
                if ev.token is not None:
                    self.tokens_out += 1
                if ev.finished:
                    by_seq.pop(ev.seq.id, None)
                    self._finish(h, ev.token, ev.seq.finish_reason)
                else:
                    self._emit(h, ev.token, None, None)
            if not engine.has_work():  # else the next step flushes before its forward (Engine.before_forward)
                self._flush()
        # closing: tell everyone still waiting
        for h in list(by_seq.values()):
            self._finish(h, None, None, "server is shutting down")
        self._flush()
