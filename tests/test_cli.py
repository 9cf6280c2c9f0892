"""The CLI dispatcher: every registered command has a module with add_arguments/run and a usable --help."""

import importlib
import subprocess
import sys

import pytest

from krllm.cli import COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    module = importlib.import_module(COMMANDS[name][0])
    assert callable(module.add_arguments) and callable(module.run)
    out = subprocess.run([sys.executable, "-m", "krllm", name, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: krllm" in out.stdout


def test_no_command_prints_help_and_fails():
    out = subprocess.run([sys.executable, "-m", "krllm"], capture_output=True, text=True)
    assert out.returncode == 2 and "COMMAND" in out.stdout
