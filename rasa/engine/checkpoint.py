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
model's ``tokenizer_record``, set by :func:`rasa.engine.build.build_model` from the token
cache). :func:`checkpoint_tokenizer` reads it back.

Checkpoints travel (DVC remotes, shared cluster folders, downloads), so they are read with
``torch.load(weights_only=True)`` only: a file holding anything but tensors and plain data
(dict, list, tuple, str, int, float, bool, None) is refused, never unpickled into code. Every
value written here is such plain data (NumPy's random state is stored as a tensor); a value
that is not raises ``TypeError`` when the checkpoint is written, not when it is read back.

``--resume`` continues only the run that wrote the checkpoint: :func:`resume_changes` lists
the keys of the resolved config (and the data's fingerprint) that differ from the current
ones; only the settings in :data:`RESUME_FREE` (paths, logging, workers) may change.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rasa.errors import ConfigError, DataError
from rasa.io import torch_save

CHECKPOINT_VERSION = 1
LAST = "checkpoint_last.pt"
BEST = "checkpoint_best.pt"
# Resolved-config keys that may differ between a checkpoint and the run that resumes it:
# where files are, how often to log or checkpoint, how many loader workers, compilation,
# the evaluation batch. Any other change (model, objectives, data, optimisation) is refused.
RESUME_FREE = frozenset({
    "name", "data_root", "annotations", "tokens", "train.num_workers", "train.log_every_steps",
    "train.ckpt_every_steps", "train.compile", "eval.batch_size",
})  # fmt: skip


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Capture every random state a training step can draw from."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # plain data: the key array as an int64 tensor (weights_only loads no ndarray)
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore what :func:`rng_state` captured (states loaded onto a GPU are moved back: the
    setters take CPU byte tensors)."""
    random.setstate(state["python"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        keys = np.asarray(npy["keys"].cpu().numpy(), dtype=np.uint32)
        npy = (npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"])
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    if generator is not None and state.get("generator") is not None:
        generator.set_state(state["generator"].cpu())


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
    check_plain(state)
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
    check_plain(state)
    torch_save(state, path)


def _tokenizer_of(model: torch.nn.Module, tokenizer: dict[str, Any] | None) -> dict | None:
    """The tokenizer record to save: the one given, else the model's (plain data)."""
    record = tokenizer if tokenizer is not None else getattr(model, "tokenizer_record", None)
    return dict(record) if record else None


def checkpoint_tokenizer(state: dict[str, Any]) -> dict[str, Any] | None:
    """The tokenizer record of a checkpoint dict, or None (written before records existed)."""
    record = state.get("tokenizer") if isinstance(state, dict) else None
    return record if isinstance(record, dict) and record.get("sha256") else None


def check_plain(obj: Any, key: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the key of the first value that ``weights_only`` cannot load
    (anything but tensors, dict/list/tuple and str/int/float/bool/None)."""
    if obj is None or type(obj) in (str, int, float, bool) or isinstance(obj, torch.Tensor):
        return  # exact types: NumPy's float64 is a float subclass that weights_only refuses
    if isinstance(obj, dict):
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{key}: key {k!r} is a {type(k).__name__}, not str or int.")
            check_plain(v, f"{key}.{k}")
        return
    if type(obj) in (list, tuple, torch.Size):
        for i, v in enumerate(obj):
            check_plain(v, f"{key}[{i}]")
        return
    raise TypeError(
        f"{key}: a {type(obj).__module__}.{type(obj).__name__} cannot go into a checkpoint "
        "(torch.load(weights_only=True) reads only tensors and plain data); convert it."
    )


def read_safely(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain data, never code.

    A file that holds other objects (a pickle payload, a checkpoint of an older rasa that
    stored NumPy arrays, someone else's model object) or that is truncated raises
    :class:`DataError` and nothing of it is executed.
    """
    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not found"
        raise DataError(f"{path}: checkpoint {what}; expected a .pt file.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        refused = [ln for ln in lines if "global" in ln.lower()]  # an object it would import
        other = [ln for ln in lines if "Unsupported" in ln] or lines[:1]
        detail = (refused or other or [""])[0]
        if not refused:  # no object refused: a file of another kind
            raise DataError(
                f"{path}: not a readable checkpoint ({detail}); expected a .pt file written by "
                "torch.save."
            ) from exc
        raise DataError(
            f"{path}: refused: the file holds objects other than tensors and plain data, which "
            f"torch.load(weights_only=True) will not unpickle (it could run code) [{detail}]. "
            "Checkpoints of rasa versions before weights-only loading must be re-made (train "
            "again); never turn weights-only loading off for a checkpoint of unknown origin."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated zip, not a torch file, ...
        raise DataError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc}); is it "
            "complete (not truncated by an interrupted copy)?"
        ) from exc


def is_rasa_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is one of our checkpoints (not an official/foreign one)."""
    return (
        isinstance(obj, dict)
        and obj.get("version") == CHECKPOINT_VERSION
        and isinstance(obj.get("model"), dict)
        and "model_config" in obj
    )


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (weights only, see the module doc)."""
    state = read_safely(path, map_location)
    if not is_rasa_checkpoint(state):
        raise DataError(
            f"{path}: not a rasa training checkpoint (expected a dict with version "
            f"{CHECKPOINT_VERSION}); official checkpoints load through rasa.models loaders."
        )
    return state


def _flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict) and doc:
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: doc}


def resume_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (or data fingerprints),
    leaving out :data:`RESUME_FREE`; tuples and lists compare equal."""

    def norm(v: Any) -> Any:
        return [norm(x) for x in v] if isinstance(v, (list, tuple)) else v

    a, b = _flat(saved), _flat(current)
    return sorted(
        k for k in set(a) | set(b)
        if k not in RESUME_FREE and norm(a.get(k, "<unset>")) != norm(b.get(k, "<unset>"))
    )  # fmt: skip


def describe_changes(saved: dict[str, Any], current: dict[str, Any], keys: list[str]) -> str:
    """``'variant: cl -> m-rtd; loss.lambda_cl: 0.5 -> 1.0'`` (the first few)."""
    a, b = _flat(saved), _flat(current)
    parts = [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys[:6]]
    more = f"; and {len(keys) - 6} more" if len(keys) > 6 else ""
    return "; ".join(parts) + more


def model_mismatch(model: torch.nn.Module, weights: dict[str, Any]) -> list[str]:
    """How a checkpoint's state dict does not fit ``model``: missing and unexpected keys, and
    tensors of another shape ('key: (4, 8) in the checkpoint, (4, 16) in the model')."""
    own = unwrap(model).state_dict()
    out = []
    for k, v in own.items():
        w = weights.get(k)
        if isinstance(w, torch.Tensor) and w.shape != v.shape:
            out.append(f"{k}: {tuple(w.shape)} in the checkpoint, {tuple(v.shape)} in the model")
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    if missing:
        out.append(f"missing in the checkpoint: {', '.join(missing[:5])}")
    if unexpected:
        out.append(f"not in the model: {', '.join(unexpected[:5])}")
    return out


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
    mismatch = model_mismatch(model, state["model"])
    if mismatch:  # checked first: a failed load_state_dict leaves the model half-loaded
        raise ConfigError(
            "the checkpoint's weights do not fit the model built from the current config "
            f"(the model changed since it was written): {'; '.join(mismatch[:3])}"
            f"{' ...' if len(mismatch) > 3 else ''}. Start the run afresh in an empty --out."
        )
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise ConfigError(
                f"the checkpoint's optimizer state does not fit the current model ({exc}); "
                "start the run afresh in an empty --out."
            ) from exc
    set_rng_state(rank_rng_state(state, rank), generator)


def rank_rng_state(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The random states of process ``rank`` in a checkpoint (rank 0's when it has none)."""
    per_rank = state.get("rng_per_rank") or []
    return per_rank[rank] if rank < len(per_rank) else state["rng"]
