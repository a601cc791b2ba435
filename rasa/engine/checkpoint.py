"""Checkpoints: everything needed to resume a run exactly, written atomically.

One dict (nanoGPT style) holds the model state (momentum encoders and queues are buffers or
parameters of the model, so they come along), the optimizer, the scheduler position, the step,
epoch and position inside the epoch, every random state (Python, NumPy, torch CPU/CUDA and the
step's own generator) of every process, the resolved config, the best-validation record and
the curves so far. A checkpoint saved mid-epoch and loaded by ``rasa train --resume`` continues
with the same batches and the same random draws, so a killed and resumed run ends with the same
metrics, also under DDP: ``rng_per_rank[r]`` holds rank ``r``'s states and each rank restores
its own (``rng`` = rank 0's, the only one that checkpoints of one process or of older versions
hold).

Every checkpoint we write also holds ``"tokenizer"``: the record of the tokenizer the model's
embeddings were trained with (:func:`rasa.data.tokenizer.tokenizer_record`; by default the
model's ``tokenizer_record``, set by :func:`rasa.engine.runtime.build_model` from the token
cache). :func:`checkpoint_tokenizer` reads it back.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rasa.errors import DataError
from rasa.io import torch_save

CHECKPOINT_VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture every random state a training step can draw from."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    step_in_epoch: int,
    config: dict[str, Any],
    generator: torch.Generator | None = None,
    extra: dict[str, Any] | None = None,
    rng_per_rank: list[dict[str, Any]] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint atomically (a kill mid-write leaves the old one).

    ``rng_per_rank``: the :func:`rng_state` of every process, in rank order (gathered by the
    caller under DDP); by default this process's states, with ``generator``'s. ``tokenizer``:
    the tokenizer record (default: the model's ``tokenizer_record``).
    """
    if rng_per_rank is None:
        rng_per_rank = [rng_state(generator)]
    inner = unwrap(model)
    state = {
        "version": CHECKPOINT_VERSION,
        "model": inner.state_dict(),
        "model_config": inner.config.to_dict() if hasattr(inner, "config") else None,
        "optimizer": optimizer.state_dict(),
        "step": step,
        "epoch": epoch,
        "step_in_epoch": step_in_epoch,
        "rng": rng_per_rank[0],
        "rng_per_rank": rng_per_rank,
        "config": config,
        "tokenizer": _tokenizer_of(inner, tokenizer),
        **(extra or {}),
    }
    torch_save(state, path)


def save_model_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    record: Any = None,
    tokenizer: dict[str, Any] | None = None,
) -> None:
    """Weights only (no optimizer or random state): the selected model, e.g. best on val."""
    inner = unwrap(model)
    state = {
        "version": CHECKPOINT_VERSION,
        "model": inner.state_dict(),
        "model_config": inner.config.to_dict() if hasattr(inner, "config") else None,
        "config": config,
        "record": record,
        "tokenizer": _tokenizer_of(inner, tokenizer),
    }
    torch_save(state, path)


def _tokenizer_of(model: torch.nn.Module, tokenizer: dict[str, Any] | None) -> dict | None:
    """The tokenizer record to save: the one given, else the model's (plain data)."""
    record = tokenizer if tokenizer is not None else getattr(model, "tokenizer_record", None)
    return dict(record) if record else None


def checkpoint_tokenizer(state: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer record of a checkpoint dict, or None (written before records existed)."""
    record = state.get("tokenizer") if isinstance(state, dict) else None
    return record if isinstance(record, dict) and record.get("sha256") else None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise DataError(
            f"{path}: not a rasa training checkpoint (expected a dict with version "
            f"{CHECKPOINT_VERSION}); official checkpoints load through rasa.models loaders."
        )
    return state


def restore(
    state: dict[str, Any],
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    rank: int = 0,
) -> None:
    """Load model/optimizer/random states from a checkpoint dict (in place).

    The random states are those of process ``rank`` when the checkpoint holds them; a
    checkpoint of one process (or of a smaller world) gives the others rank 0's.
    """
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(rank_rng_state(state, rank), generator)


def rank_rng_state(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The random states of process ``rank`` in a checkpoint (rank 0's when it has none)."""
    per_rank = state.get("rng_per_rank") or []
    return per_rank[rank] if rank < len(per_rank) else state["rng"]
