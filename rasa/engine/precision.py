"""Numeric precision of training and evaluation: ONE function picks the autocast dtype.

Settings (``train.bf16`` in params.yaml, the ``dtype`` of ``rasa evaluate`` and the benches):

* ``"fp32"`` (``train.bf16: false``): no autocast;
* ``"auto"`` (``train.bf16: true``, the paper setting): bf16 autocast on CUDA, fp32 elsewhere —
  on most CPUs bf16 matrix multiplies are slower than fp32;
* ``"bf16"`` (``train.bf16: always``): bf16 autocast on whatever device runs, the CPU included
  (``torch.autocast("cpu", dtype=torch.bfloat16)``). This is how the GPU's bf16 code path is
  exercised on a machine without one (tests, ``rasa bench ... --dtype bf16``).

Under autocast, matrix multiplies run in bf16 while reductions, norms and the losses stay in
float32 (PyTorch's autocast op lists); the losses in :mod:`rasa.objectives` cast their logits
to float32 explicitly.
"""

from __future__ import annotations

import contextlib

import torch

from rasa.errors import ConfigError

PRECISIONS = ("fp32", "auto", "bf16")
# train.bf16 values (params.yaml) -> precision
_TRAIN_BF16 = {False: "fp32", True: "auto", "always": "bf16"}


def precision_of(setting: str | bool) -> str:
    """A precision name from a ``train.bf16`` value (``False``/``True``/``"always"``) or a name."""
    if isinstance(setting, bool) or setting == "always":
        return _TRAIN_BF16[setting]
    if setting not in PRECISIONS:
        raise ConfigError(
            f"dtype (precision) {setting!r}: expected one of {list(PRECISIONS)} (or train.bf16 = "
            "true, false or always)."
        )
    return setting


def autocast_dtype(
    setting: str | bool, device: torch.device | str | None = None
) -> torch.dtype | None:
    """The autocast dtype of ``setting`` on ``device`` (None = plain float32; device None =
    CUDA when available, else the CPU)."""
    precision = precision_of(setting)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if precision == "bf16" or (precision == "auto" and torch.device(device).type == "cuda"):
        return torch.bfloat16
    return None


def autocast(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type with ``dtype``, or a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
