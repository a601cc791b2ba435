"""CMMT training end to end on a micro model: no identity label reaches training.

Shuffling the person ids of the TRAIN records (same images, same captions, same order; other
persons grouped together) must leave a short CMMT run bit-identical: losses, weights,
checkpoint tensors and validation/test metrics. Only the pseudo-label report (ARI against the
true ids) may differ, since it reads the ids after clustering.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import micro_config, micro_sets, synth_set

from rasa.weak.train import train_cmmt

ROOT = Path(__file__).resolve().parent.parent

TRAIN = [
    "model.queue_size=16", "train.batch_size=16", "train.epochs=2", "train.num_workers=0",
    "train.log_every_steps=1", "train.ckpt_every_steps=0", "train.max_steps=4", "eval.k_test=4",
    "loss.alpha=0.4",
]  # fmt: skip
MICRO = [*micro_sets(), *TRAIN]  # the micro model (rasa.models.registry) and a short run
CMMT = {"min_samples": 2, "k1": 4, "k2": 2, "eps": 0.7, "feature_batch_size": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A 12-identity SynthPEDES set + a copy whose train person ids are shuffled."""
    from rasa.data.annotations import Annotations

    root = tmp_path_factory.mktemp("weak")
    synth_set(root, n_ids=12, vocab=200)
    ann = Annotations.load(root / "annotations.json")
    train = [i for i, r in enumerate(ann.records) if r.split == "train"]
    pids = np.asarray([ann.records[i].pid for i in train])
    shuffled = np.random.default_rng(1).permutation(pids)
    assert (shuffled != pids).any()
    records = list(ann.records)
    for i, p in zip(train, shuffled, strict=True):
        records[i] = replace(records[i], pid=int(p) + 1000)
    replace(ann, records=records).save(root / "annotations_shuffled.json")
    return root / "annotations.json", root / "annotations_shuffled.json", root / "tokens.npz"


def _run(ann: Path, tok: Path, out: Path) -> dict:
    cfg = micro_config(ann, tok, "cl", tuple(TRAIN))
    return train_cmmt(cfg, out, device="cpu", progress=False, dvclive=False, cmmt=CMMT)


def _losses(out: Path) -> list[str]:
    lines = (out / "train_log.txt").read_text().splitlines()
    return [line.split(" ", 2)[2] for line in lines if " step " in line and "loss" in line]


def test_cmmt_uses_no_identity_label(data, tmp_path):
    ann, shuffled, tok = data
    m1 = _run(ann, tok, tmp_path / "a")
    m2 = _run(shuffled, tok, tmp_path / "b")
    for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
        s1 = torch.load(tmp_path / "a" / name, weights_only=True)["model"]
        s2 = torch.load(tmp_path / "b" / name, weights_only=True)["model"]
        assert s1.keys() == s2.keys()
        for k in s1:
            assert torch.equal(s1[k], s2[k]), k
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and _losses(tmp_path / "a")
    for key in ("r1", "r5", "mAP", "first_stage", "val_curve", "selected"):
        assert m1[key] == m2[key], key
    # the same pseudo labels (clusters, outliers, rescues); only the ARI may differ
    strip = [
        {mod: {k: v for k, v in e[mod].items() if k != "ari"} for mod in ("image", "text", "pair")}
        for e in m1["pseudo_labels"]
    ]
    assert strip == [
        {mod: {k: v for k, v in e[mod].items() if k != "ari"} for mod in ("image", "text", "pair")}
        for e in m2["pseudo_labels"]
    ]
    # outputs in the supervised schema + the pseudo-label report
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["meta"]["method"] == "cmmt" and len(saved["pseudo_labels"]) == 2
    assert {"clusters", "outliers", "ari", "mplr_rescued"} <= set(
        saved["pseudo_labels"][0]["image"]
    )
    assert (tmp_path / "a" / "curve" / "train.csv").is_file()


def test_cmmt_cli_trains_and_rejects_unknown_settings(data, tmp_path, capsys):
    import argparse

    from rasa.cli import COMMAND_MODULES
    from rasa.errors import ConfigError
    from rasa.weak import cli

    assert "rasa.weak.cli" in COMMAND_MODULES  # `rasa cmmt train`

    ann, _, tok = data
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    base = ["cmmt", "train", "--experiment", "synth-cuhk-tiny-cl", "--params",
            str(ROOT / "params.yaml"), "--annotations", str(ann), "--tokens", str(tok),
            "--no-progress", "--no-dvclive", "--out", str(tmp_path / "run")]  # fmt: skip
    sets = [x for s in MICRO if not s.startswith("train.epochs") for x in ("--set", s)]
    sets += ["--set", "train.epochs=1", "--set", "train.max_steps=1"]
    cm = [x for k, v in CMMT.items() for x in ("--cmmt", f"{k}={v}")] + [
        "--cmmt",
        "metric=cosine",
        "--cmmt",
        "instance_epochs=1",
    ]
    args = parser.parse_args([*base, *sets, *cm])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "first_stage" in printed
    saved = json.loads((tmp_path / "run" / "cmmt_config.json").read_text())
    assert saved["metric"] == "cosine" and saved["min_samples"] == 2
    # one epoch, all of it instance warm-up: no clustering yet
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["pseudo_labels"] == []
    bad = parser.parse_args([*base, *sets, "--cmmt", "nope=1"])
    with pytest.raises(ConfigError, match="nope"):
        bad.func(bad)


def test_rasa_train_runs_a_method_cmmt_experiment(data, tmp_path, capsys):
    """`method: cmmt` in params.yaml makes `rasa train` (hence Snakemake and DVC) run CMMT."""
    from rasa.cli import main

    ann, _, tok = data
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["experiments"]["synth-cuhk-tiny-cmmt"]["method"] == "cmmt"
    params["cmmt"] = dict(CMMT, metric="cosine", instance_epochs=1)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    sets = [x for s in MICRO if not s.startswith("train.epochs") for x in ("--set", s)]
    argv = ["train", "--experiment", "synth-cuhk-tiny-cmmt", "--params",
            str(tmp_path / "params.yaml"), "--annotations", str(ann), "--tokens", str(tok),
            "--no-progress", "--no-dvclive", "--out", str(tmp_path / "run"),
            *sets, "--set", "train.epochs=1", "--set", "train.max_steps=1"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "run" / "cmmt_config.json").read_text())
    assert saved["metric"] == "cosine"  # the params file's `cmmt:` section was used
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["meta"]["method"] == "cmmt" and "pseudo_labels" in metrics


@pytest.mark.slow
def test_cmmt_resume_after_an_epoch_is_bit_identical(data, tmp_path):
    ann, _, tok = data
    cfg = micro_config(ann, tok, "cl", (*TRAIN, "train.max_steps=null"))
    kw = {"device": "cpu", "progress": False, "dvclive": False, "cmmt": CMMT}
    full = train_cmmt(cfg, tmp_path / "full", **kw)

    def stop_after_epoch_1(step: int) -> None:
        if step == 3:  # 2 steps per epoch: mid-epoch 2, after the epoch-1 checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cmmt(cfg, tmp_path / "cut", on_step=stop_after_epoch_1, **kw)
    resumed = train_cmmt(cfg, tmp_path / "cut", resume=True, **kw)
    s1 = torch.load(tmp_path / "full" / "checkpoint_last.pt", weights_only=True)["model"]
    s2 = torch.load(tmp_path / "cut" / "checkpoint_last.pt", weights_only=True)["model"]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert full["first_stage"] == resumed["first_stage"]


@pytest.mark.slow
def test_control_supervised_training_does_see_the_shuffled_ids(data, tmp_path):
    """The perturbation of the no-identity test is visible to a method that reads ids."""
    from rasa.engine.train import train

    ann, shuffled, tok = data
    states = []
    for path, name in ((ann, "a"), (shuffled, "b")):
        cfg = micro_config(path, tok, "cl", tuple(TRAIN))
        train(cfg, tmp_path / name, device="cpu", progress=False, dvclive=False)
        states.append(torch.load(tmp_path / name / "checkpoint_last.pt", weights_only=True))
    assert not all(
        torch.equal(states[0]["model"][k], states[1]["model"][k]) for k in states[0]["model"]
    )
