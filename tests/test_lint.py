"""Lint is part of the test command: ruff (lint and format) over the Python code, snakefmt
over the Snakefile and the rules, with the settings in pyproject.toml.

The tools come with the ``test`` extra (``bash scripts/install.sh --test``); they are looked
up beside the running Python first, so the project's virtual environment is used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNAKE_FILES = ("Snakefile", "workflow")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it is in the `test` extra (install.sh --test)")
    return found


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} found problems:\n{proc.stdout}{proc.stderr}"


def test_ruff_check():
    _run([_tool("ruff"), "check", "--no-cache", "."])


def test_ruff_format():
    _run([_tool("ruff"), "format", "--check", "--no-cache", "."])


def test_snakefmt():
    _run([_tool("snakefmt"), "--check", *SNAKE_FILES])
