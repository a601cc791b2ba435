"""Atomic file writes: write to a temporary file in the same directory, then rename.

A crash or kill mid-write never leaves a truncated file at the destination: readers see the
old file or the complete new one. A failed write (disk full, read-only folder, a folder where
the file should go) raises ``OSError`` naming the destination, which the CLI turns into a
one-line message (:func:`rasa.cli.os_error_message`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
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
    if dest.is_dir():
        raise IsADirectoryError(errno.EISDIR, "a folder is there where a file should go", str(dest))
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix + ".tmp", dir=dest.parent)
    except OSError as exc:
        raise _named(exc, dest) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 & ~umask)
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.errno is not None:
            raise _named(exc, dest) from exc
        raise


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it and setting it back: not
    done on every write, where another thread could create a file in between)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _named(exc: OSError, dest: Path) -> OSError:
    """The same error (same errno, so the same OSError subclass) naming ``dest``; the
    temporary file's name would only confuse."""
    if exc.errno is None:
        return exc
    named = Path(str(exc.filename)) if exc.filename else None
    if named is not None and named != dest and named in dest.parents:
        return exc  # a folder on the way (not a folder, read-only, ...): that one is the news
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(dest))


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
    """``torch.save`` atomically. Through a file object, so the archive's inner folder is
    always ``archive/`` (a path would name it after the temporary file): the same object gives
    the same bytes."""
    import torch

    with atomic_open(dest, "wb") as fh:
        try:
            torch.save(obj, fh)
        except RuntimeError as exc:  # torch reports a failed write (e.g. disk full) this way
            st = os.statvfs(Path(dest).parent)
            if st.f_bfree * st.f_frsize < 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest)) from exc
            raise
