"""benchmarks/serve_soak.py, small: good and abusive requests mixed, every answer the expected one."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_small_soak_has_no_unexpected_outcome():
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serve_soak.py"), "--clients", "8",
                           "--requests-per-client", "6", "--max-tokens", "4", "--seed", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "unexpected outcomes: 0" in done.stdout and "tracebacks in the server log: 0" in done.stdout
    assert "malformed" in done.stdout and "half_body" in done.stdout  # abuse was mixed in
