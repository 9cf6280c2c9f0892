"""`krllm serve` in a real process for the slow CLI tests: started on a free port, ready, then stopped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager

import httpx


@contextmanager
def serve_process(model_dir, *args: str, timeout: float = 120):
    """`krllm serve MODEL --port 0 ARGS` -> (process, base URL such as http://127.0.0.1:PORT) once /health
    answers; terminated (and waited for) on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "krllm", "serve", str(model_dir), "--port", "0", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300", "KRLLM_API_KEY": ""})
    try:
        out, deadline = "", time.time() + timeout
        while not (m := re.search(r"OpenAI API (http://127\.0\.0\.1:\d+)/v1", out)):
            assert time.time() < deadline and proc.poll() is None, out
            out += proc.stdout.readline()
        url = m.group(1)
        while True:  # the line is printed just before uvicorn starts serving on the bound socket
            try:
                assert httpx.get(url + "/health", timeout=5).json()["status"] == "ok"
                break
            except httpx.ConnectError:
                assert time.time() < deadline
                time.sleep(0.1)
        yield proc, url
    finally:
        proc.terminate()
        proc.wait(30)
