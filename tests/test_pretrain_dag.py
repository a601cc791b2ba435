"""Pre-training as a step of both runners (issue #12): corpus -> its token cache -> `rasa
pretrain` -> the export (model.safetensors + tokenizer.json + metrics.json) that fine-tuning
starts from.

- `dvc repro` builds the chain and the fine-tuning runs from the export, pins it in dvc.lock,
  does nothing a second time, and a forced rebuild of the pretrain stage gives the same bytes;
- Snakemake treats a committed export as a source: a copy of the project with the export but
  no corpus fine-tunes without pre-training again, and `--forcerun pretrain` rebuilds it.

The project is a copy of the repository's tracked files whose params.yaml pre-trains a tiny
model for a few steps on a small corpus and fine-tunes one `cl` run from it.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from test_pipeline import BIN, commit_project, copy_tracked, run

EXPORT = "pretrained/test-tiny"
FILES = ("model.safetensors", "tokenizer.json")


def make_project(dest: Path) -> Path:
    params = copy_tracked(dest, skip=("tests/", "results/", "pretrained/"))
    params["data"]["datasets"]["synth-cuhk"]["ids"] = 12
    pre = params["pretrain"]
    pre.update(out=EXPORT, tokenizer="wordpiece:300", threads=1)
    pre["corpus"] = {"ids": {"cuhk": 12, "coco": 12}, "seed": 5, "heldout": 0.1}
    pre["model"] = {"image_size": [32, 16], "queue_size": 32}
    pre["train"].update(epochs=1, batch_size=8, max_steps=4, ckpt_every_steps=0, num_workers=0)
    pre["eval"] = {"k_test": 8, "k_test_fraction": 0.04, "batch_size": 32}
    tiny = params["backbones"]["tiny"]
    tiny["pretrained"] = f"{EXPORT}/model.safetensors"
    tiny["tokenizer"] = f"checkpoint:{EXPORT}/model.safetensors"
    params["experiments"]["ci-cl"] = {
        "dataset": "synth-cuhk", "backbone": "tiny", "variant": "cl", "seed": 0,
        "overrides": {"train.epochs": 1, "train.max_steps": 2, "train.batch_size": 8,
                      "model.image_size": [32, 16], "model.queue_size": 32, "eval.k_test": 8},
    }  # fmt: skip
    params["suites"]["ci"] = ["ci-cl"]
    params["suite"] = "ci"
    return commit_project(dest, params)


def export_bytes(project: Path) -> dict[str, bytes]:
    return {f: (project / EXPORT / f).read_bytes() for f in FILES}


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("pretrain-dag"))
    run(["dvc", "repro"], project, timeout=900)
    return project


def test_dvc_repro_pretrains_then_fine_tunes_from_the_export(dvc_project):
    project = dvc_project
    for f in (*FILES, "metrics.json", "config.yaml"):
        assert (project / EXPORT / f).is_file(), f
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    stage = lock["stages"]["pretrain@test-tiny"]
    assert {o["path"] for o in stage["outs"]} >= {f"{EXPORT}/{f}" for f in FILES}
    # the fine-tuning run started from the export and tokenized with its tokenizer
    config = yaml.safe_load((project / "checkpoints" / "ci-cl" / "config.yaml").read_text())
    assert config["pretrained"]["path"] == f"{EXPORT}/model.safetensors"
    assert config["tokenizer"] == f"checkpoint:{EXPORT}/model.safetensors"
    log = (project / "checkpoints" / "ci-cl" / "train_log.txt").read_text()
    assert "loaded" in log and "itm_head" in log
    # the report shows the pre-training's held-out figures and curves
    readme = (project / "results" / "ci" / "README.md").read_text()
    assert "## Pre-training" in readme and "curves-pretraining.png" in readme
    assert "## First stage vs re-ranked" not in readme  # cl has one stage


def test_dvc_repro_twice_is_a_no_op_and_a_forced_rebuild_is_bit_identical(dvc_project):
    project = dvc_project
    before = export_bytes(project)
    again = run(["dvc", "repro"], project, timeout=900).stdout
    assert "Running stage" not in again, again
    shutil.rmtree(project / "checkpoints" / "pretrain")  # not resumed: built afresh
    run(["dvc", "repro", "--force", "--single-item", "pretrain@test-tiny"], project)
    assert export_bytes(project) == before
    # neither the stage nor the fine-tuning that reads its export is out of date (the report
    # is: it reads checkpoints/, where the pre-training run was rebuilt)
    status = run(["dvc", "status", "pretrain@test-tiny", "train@ci-cl"], project).stdout
    assert "changed" not in status, status


def test_snakemake_uses_a_committed_export_without_pretraining(dvc_project, tmp_path):
    """A fresh clone: the export is there (committed), the corpus is not; every file's time
    is the checkout's."""
    project = make_project(tmp_path / "clone")
    shutil.copytree(dvc_project / EXPORT, project / EXPORT)
    jobs = planned_jobs(project)
    assert "train" in jobs and not any(j.startswith("pretrain") for j in jobs), jobs
    # forced, the rule rebuilds the corpus and pre-trains again
    jobs = planned_jobs(project, "--forcerun", "pretrain")
    assert {"pretrain_corpus", "pretrain_tokens", "pretrain", "train"} <= set(jobs), jobs


def planned_jobs(project: Path, *args: str) -> dict[str, int]:
    """The job counts of a Snakemake dry run (its "Job stats" table)."""
    proc = run([str(BIN / "snakemake"), "-n", "--cores", "1", *args], project)
    rows = re.findall(r"^(\w+)\s+(\d+)$", proc.stdout + proc.stderr, re.MULTILINE)
    return {job: int(n) for job, n in rows if job != "total"}
