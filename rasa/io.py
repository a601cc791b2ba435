"""Atomic file writes: write to a temporary file in the same directory, then rename.

A crash or kill mid-write never leaves a truncated file at the destination: readers see the
old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success rename it onto ``dest``.

    On any exception the temporary file is removed and ``dest`` is untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_open(dest: str | os.PathLike, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``dest`` when the block succeeds."""
    with atomic_path(dest) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_text(dest: str | os.PathLike, text: str) -> None:
    with atomic_open(dest, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_open(dest, "wb") as fh:
        fh.write(data)


def write_json(dest: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically with sorted keys, so equal objects give equal bytes."""
    write_text(dest, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def torch_save(obj: Any, dest: str | os.PathLike) -> None:
    """``torch.save`` atomically."""
    import torch

    with atomic_path(dest) as tmp:
        torch.save(obj, tmp)
