"""The whole pipeline on a tiny suite, through both runners (issue 5):

- Snakemake with the local profile, and with the SLURM profile against the single-node SLURM
  of scripts/slurm_up.sh: jobs go through sbatch and the results equal the local run's;
- the Snakemake run's outputs brought under dvc.lock with ``dvc commit`` (then ``dvc status``
  is clean);
- ``dvc repro`` of the same suite, a no-op second time; one experiment's parameter changed
  re-runs only what depends on it; ``dvc metrics diff`` / ``dvc params diff`` show it;
  ``dvc exp run -S`` works; ``dvc push``/``pull`` restores a deleted checkpoint.

Each project is a copy of the repository's tracked files (tests and the committed results
excluded) whose params.yaml
gets a suite ``ci``: SynthPEDES-CUHK with 12 identities, `cl` and `m-rtd`, a few steps each;
the m-rtd run is also tested on SynthPEDES-ICFG (Table 7's transfer: the target's captions
tokenized with the source run's tokenizer).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXPERIMENTS = ("ci-cl", "ci-m-rtd")
TINY = {
    "train.epochs": 1,
    "train.max_steps": 3,
    "train.batch_size": 8,
    "train.num_workers": 0,
    "eval.k_test": 8,
}


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )  # fmt: skip
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def copy_tracked(dest: Path, skip: tuple[str, ...] = ("tests/", "results/")) -> dict:
    """Copy the repository's tracked files (but ``skip``) into ``dest``; its params."""
    files = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    for f in files:
        if f.startswith(skip) or not (REPO / f).exists():
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)
    return yaml.safe_load((dest / "params.yaml").read_text())


def commit_project(dest: Path, params: dict) -> Path:
    """Write ``params``, regenerate the DVC grid and commit everything in a new git repo."""
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "rasa", "workflow", "dvc-grid"], dest)
    run(["git", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "ci project"], dest)
    return dest


def make_project(dest: Path) -> Path:
    params = copy_tracked(dest)
    params["data"]["datasets"]["synth-cuhk"]["ids"] = 12
    params["data"]["datasets"]["synth-icfg"]["ids"] = 12
    for name, variant in zip(EXPERIMENTS, ("cl", "m-rtd"), strict=True):
        # from scratch, with their own vocabulary: this suite tests the runners, and a run from
        # the committed pre-trained export would bring the pre-training stages into its DAG
        # (test_pretrain_dag.py covers those)
        params["experiments"][name] = {
            "dataset": "synth-cuhk", "backbone": "tiny", "variant": variant, "seed": 0,
            "pretrained": "none", "tokenizer": "wordpiece:2000", "overrides": dict(TINY),
        }  # fmt: skip
    params["experiments"]["ci-m-rtd"]["test_on"] = ["synth-icfg"]
    params["suites"]["ci"] = list(EXPERIMENTS)
    params["suite"] = "ci"
    return commit_project(dest, params)


def metrics(project: Path) -> dict[str, dict]:
    """Test metrics per experiment, without the fields that differ between equal runs."""
    out = {}
    for name in EXPERIMENTS:
        doc = json.loads((project / "results" / "metrics" / f"{name}.json").read_text())
        doc.pop("timing", None)
        doc.pop("meta", None)
        out[name] = doc
    return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("local"))
    run([str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "--cores", "2"], project)
    return project


def test_local_snakemake_run_builds_the_suite(local_run):
    for name in EXPERIMENTS:
        assert (local_run / "checkpoints" / name / "checkpoint_best.pt").is_file()
        assert (local_run / "results" / "topk" / f"{name}.json").is_file()
    assert set(metrics(local_run)) == set(EXPERIMENTS)
    assert (local_run / "results" / "ci" / "README.md").is_file()  # the suite's report
    assert list((local_run / "results" / "ci" / "tables").glob("table4*.tex"))
    transfer = json.loads(
        (local_run / "results" / "metrics" / "ci-m-rtd--on-synth-icfg.json").read_text()
    )
    assert transfer["meta"]["dataset"] == "synth-icfg"
    assert transfer["meta"]["source_dataset"] == "synth-cuhk"
    assert list((local_run / "results" / "ci" / "tables").glob("table7*.tex"))
    cross = local_run / "data" / "synth-icfg" / "tokens-synth-cuhk-wordpiece-2000.npz"
    own = local_run / "data" / "synth-cuhk" / "tokens-wordpiece-2000.npz"
    with np.load(cross) as a, np.load(own) as b:
        assert (
            json.loads(str(a["meta"]))["tokenizer_json"]
            == json.loads(str(b["meta"]))["tokenizer_json"]
        )
    # a second run has nothing to do
    proc = run([str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "-n"], local_run)
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_snakemake_outputs_brought_under_dvc_lock(local_run):
    run(["dvc", "commit", "--force"], local_run)
    status = run(["dvc", "status"], local_run).stdout
    assert "up to date" in status, status


# The inner `timeout 900` (then the subprocess's 960 s) must cut first: pytest's default 600 s
# would kill the whole session without Snakemake's log.
@pytest.mark.timeout(1200)
def test_slurm_profile_runs_jobs_through_sbatch_with_equal_results(slurm, local_run, tmp_path):
    project = make_project(tmp_path)
    proc = run(
        ["timeout", "-k", "10", "900", str(BIN / "snakemake"),
         "--profile", "workflow/profiles/slurm", "--slurm-no-account", "--slurm-keep-successful-logs",
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
         "--seconds-between-status-checks", "2", "--latency-wait", "5", "--jobs", "2"],
        project, timeout=960,
    )  # fmt: skip
    submitted = (proc.stdout + proc.stderr).count("submitted with SLURM jobid")
    assert submitted >= 1 + 1 + 1 + 2 * 2 + 1, proc.stderr[
        -3000:
    ]  # synth parse tokenize 2x(train evaluate) report
    logs = list((project / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert any("rule_train" in str(p) for p in logs), logs
    assert metrics(project) == metrics(local_run)


def test_dvc_repro_params_metrics_experiments_and_remote(tmp_path):
    project = make_project(tmp_path / "proj")
    dvc = ["dvc"]
    run(dvc + ["repro"], project)
    for name in EXPERIMENTS:
        assert (project / "results" / "metrics" / f"{name}.json").is_file()
    again = run(dvc + ["repro"], project).stdout
    assert "didn't change" in again or "up to date" in again
    assert "up to date" in run(dvc + ["status"], project).stdout
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], project)

    # change one experiment's parameter: only its stages (and the report) are stale
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["experiments"]["ci-cl"]["overrides"]["train.max_steps"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = run(dvc + ["status"], project).stdout
    assert "train@ci-cl" in stale and "train@ci-m-rtd" not in stale, stale
    assert "synth@" not in stale and "tokenize@" not in stale, stale
    run(dvc + ["repro"], project)
    assert "ci-cl" in run(dvc + ["params", "diff"], project).stdout
    assert "results/metrics/ci-cl.json" in run(dvc + ["metrics", "diff"], project).stdout
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "steps 2"], project)

    # an experiment with a --set-style override
    run(dvc + ["exp", "run", "-S", "experiments.ci-cl.seed=1"], project)
    assert "ci-cl" in run(dvc + ["exp", "show", "--no-pager", "--csv"], project).stdout

    # share through a remote; a deleted checkpoint comes back
    remote = tmp_path / "remote"
    run(dvc + ["remote", "add", "-d", "local", str(remote)], project)
    run(dvc + ["push"], project)
    ckpt = project / "checkpoints" / "ci-cl" / "checkpoint_best.pt"
    digest = ckpt.read_bytes()
    shutil.rmtree(project / "checkpoints")
    run(dvc + ["pull"], project)
    assert ckpt.read_bytes() == digest
