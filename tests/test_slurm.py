"""The single-node SLURM of scripts/slurm_up.sh runs batch jobs, including gpu requests.

Needs slurm-wlm + munge (scripts/slurm_up.sh installs them) and root. Without sbatch the tests
fail under CI (CI set) and are skipped otherwise (the ``slurm`` fixture, tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
}


def _job_state(job_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", job_id, "-o"], capture_output=True, text=True, timeout=20
    ).stdout
    for field in out.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    # not known to the controller any more: ask squeue (empty when gone)
    return (
        subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
        or "UNKNOWN"
    )


def _submit_and_wait(args: list[str], timeout: float = 60.0) -> str:
    proc = subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = _job_state(job_id)
        if state in TERMINAL:
            return state
        time.sleep(0.2)
    subprocess.run(["scancel", job_id], timeout=20)
    pytest.fail(f"job {job_id} not finished after {timeout} s (state {state})")


def test_slurm_up_is_rerunnable(slurm):
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm_up.sh"), "--no-install"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stdout
    info = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %T %G"], capture_output=True, text=True, timeout=20
    ).stdout
    assert "localhost" in info and "gpu:1" in info


def test_batch_job_writes_file(slurm, tmp_path):
    out = tmp_path / "hello.txt"
    state = _submit_and_wait(
        [f"--chdir={tmp_path}", "--output=job.log", "--mem=100", "--time=1",
         "--wrap", f"echo hello from $SLURM_JOB_ID > {out}"]
    )  # fmt: skip
    assert state == "COMPLETED"
    assert out.read_text().startswith("hello from ")


def test_gpu_job_is_scheduled(slurm, tmp_path):
    out = tmp_path / "gpu.txt"
    state = _submit_and_wait(
        [f"--chdir={tmp_path}", "--output=job.log", "--gres=gpu:1", "--mem=100",
         "--wrap", f"echo gpus=$SLURM_JOB_GPUS > {out}"]
    )  # fmt: skip
    assert state == "COMPLETED"
    assert out.read_text().startswith("gpus=")
