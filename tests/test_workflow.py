"""The two runners describe one DAG: Snakemake's outputs equal DVC's, the grid file is in sync
with params.yaml, the Snakefile lints clean, and a bad params value stops with its key path."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rasa.config import load_params
from rasa.workflow import GRID_FILE, grid_text, make_plan

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _normalise(path: str) -> str:
    """Compare at the level both runners share: a run's whole checkpoint directory."""
    parts = Path(path).parts
    return str(Path(*parts[:2])) if parts[0] == "checkpoints" else path


def snakemake_outputs(cwd: Path = REPO, *config: str) -> set[str]:
    args = ["--summary", "--cores", "1"] + (["--config", *config] if config else [])
    proc = _snakemake(*args, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln.split("\t") for ln in proc.stdout.splitlines()]
    header = rows.index(next(r for r in rows if r[0] == "output_file"))
    return {_normalise(r[0]) for r in rows[header + 1 :] if r and r[0]}


def dvc_outputs(cwd: Path = REPO) -> set[str]:
    code = (
        "from dvc.repo import Repo\n"
        "r = Repo('.')\n"
        "print('\\n'.join(str(o.def_path) for s in r.index.stages for o in s.outs))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(proc.stdout.split())


def test_dvc_grid_is_up_to_date():
    assert (REPO / GRID_FILE).read_text(encoding="utf-8") == grid_text(REPO / "params.yaml"), (
        "workflow/dvc_grid.yaml is stale: run `rasa workflow dvc-grid`"
    )


def test_snakemake_and_dvc_build_the_same_outputs():
    plan = make_plan(load_params(REPO / "params.yaml"))
    expected = plan.outputs()
    assert snakemake_outputs() == expected
    assert dvc_outputs() == expected


@pytest.mark.parametrize("suite", ["quick", "synth"])
def test_every_synthetic_suite_builds_a_dag(suite):
    params = load_params(REPO / "params.yaml")
    assert snakemake_outputs(REPO, f"suite={suite}") == make_plan(params, suite).outputs()


def test_dvc_declares_the_synth_suite_too(tmp_path):
    """The synth suite has the stages quick lacks (f-RTD generator, Table 7 transfers)."""
    files = subprocess.run(
        ["git", "ls-files", "dvc.yaml", "params.yaml", ".dvc", "workflow"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, tmp_path / f)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["suite"] = "synth"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / GRID_FILE).write_text(grid_text(tmp_path / "params.yaml"))
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    outputs = dvc_outputs(tmp_path)
    assert outputs == make_plan(params, "synth").outputs()
    assert any(o.endswith(".rtd_generator.pt") for o in outputs)
    assert any("--on-" in o for o in outputs)


def test_paper_suite_without_data_says_where_to_put_it():
    proc = _snakemake("-n", "--forceall", "--cores", "1", "--config", "suite=paper")
    assert proc.returncode != 0
    assert "not found. Real datasets are given on request" in proc.stdout + proc.stderr


def test_snakemake_lint_is_clean():
    proc = _snakemake("--lint")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "good condition" in proc.stdout + proc.stderr


def test_bad_params_value_names_its_key(tmp_path):
    for name in ("Snakefile", "workflow", "params.yaml"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["train"]["epochs"] = "many"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = _snakemake("-n", "--forceall", "--cores", "1", cwd=tmp_path)
    assert proc.returncode != 0
    assert "epochs" in proc.stdout + proc.stderr


def test_unknown_suite_is_a_clear_error():
    proc = _snakemake("-n", "--forceall", "--cores", "1", "--config", "suite=nope")
    assert proc.returncode != 0
    assert "suite 'nope' is not defined" in proc.stdout + proc.stderr


def test_job_resources_come_from_params():
    params = load_params(REPO / "params.yaml")
    proc = _snakemake("-n", "--forceall", "--cores", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = (proc.stdout + proc.stderr).split("\nrule ")
    train = next(b for b in blocks if b.startswith("train:"))
    res = params["resources"]["train"] | params["backbones"]["tiny"].get("resources", {})
    assert f"runtime={res['runtime']}" in train and f"mem_mb={res['mem_mb']}" in train
    assert f"gpu={res['gpus']}" in train
