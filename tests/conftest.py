"""Shared fixtures: a running single-node SLURM (scripts/slurm_up.sh) for the tests that need it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def missing_tool(reason: str) -> None:
    """Fail under CI (the CI script installs every tool), skip on a developer machine."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs `bash scripts/install.sh --test` as root first)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm():
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        missing_tool("SLURM is not installed (bash scripts/slurm_up.sh installs it)")
    if os.geteuid() != 0:
        missing_tool("bringing up SLURM needs root")
    was_up = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm_up.sh"), "--no-install"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    if "UP" not in was_up.stdout:  # leave a cluster we found running as it was
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_down.sh")], timeout=60)
