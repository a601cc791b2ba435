"""Where a run executes: the device it asks for, its seeds, and its batches on that device.

Shared by the training loops (:mod:`rasa.engine.train`, :mod:`rasa.weak.train`), evaluation
(:mod:`rasa.engine.evaluate`) and the benches (:mod:`rasa.engine.bench`). ``--device auto``
takes CUDA when there is one; an unknown or unavailable device is a :class:`ConfigError`.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from rasa.errors import ConfigError


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; an unknown or unavailable device raises."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    return dev


def numerics() -> dict[str, Any]:
    """What a run's floats depend on beyond its inputs: the thread count, the torch version and
    the CPU vector ISA torch's kernels dispatch to (AVX2 and AVX512 kernels round differently:
    the same seed trains to other weights on another CPU; notes/pretrain_recipe.md)."""
    return {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__.split("+")[0],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of a collated batch on ``device`` (other values unchanged)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }
