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


# ---- shared set-ups ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and fair to a shared CPU. Use it per module
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def micro_sets() -> list[str]:
    """``--set`` items that make the ``tiny`` backbone of params.yaml the registered ``micro``
    one (its model fields that differ from tiny's, and those params.yaml sets for tiny), from
    random weights (params' tiny starts from the pre-trained export, of tiny's sizes)."""
    import json
    from dataclasses import fields

    import yaml

    from rasa.models.registry import MICRO, TINY

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    set_by_params = set(params["backbones"]["tiny"].get("model", {}))
    out = ["pretrained=none"]
    for f in fields(MICRO):
        value = getattr(MICRO, f.name)
        if f.name != "name" and (value != getattr(TINY, f.name) or f.name in set_by_params):
            out.append(
                f"model.{f.name}={json.dumps(list(value) if isinstance(value, tuple) else value)}"
            )
    return out


def synth_set(root: Path, n_ids: int, vocab: int, seed: int = 0) -> tuple[Path, Path]:
    """A SynthPEDES CUHK-PEDES set of ``n_ids`` identities in ``root``, parsed and tokenized
    (``wordpiece:<vocab>``): (annotations.json, tokens.npz)."""
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache

    generate("cuhk", n_ids=n_ids, seed=seed, out=root / "raw", progress=False)
    parse_to_file("auto", root / "raw", root / "annotations.json")
    build_cache(root / "annotations.json", f"wordpiece:{vocab}", root / "tokens.npz")
    return root / "annotations.json", root / "tokens.npz"


def micro_config(ann: Path, tok: Path, variant: str = "m-rtd", extra: tuple[str, ...] = ()):
    """An experiment of params.yaml on the ``micro`` model and the given data, ``extra`` sets
    applied last."""
    from rasa.config import load_params, resolve_experiment

    sets = [*micro_sets(), f"variant={variant}", f"annotations={ann}", f"tokens={tok}", *extra]
    return resolve_experiment(load_params(ROOT / "params.yaml"), "synth-cuhk-tiny-cl", sets)
