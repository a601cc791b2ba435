"""Download (or copy) a dataset file, verify its sha256, and unpack archives safely.

Real datasets come from the user as a URL with a sha256 or a local path (DESIGN: data flow).
``fetch(url, sha256, out)`` streams ``http(s)://``, ``file://`` or a plain path in chunks to a
temporary file beside ``out`` while hashing it, checks the size announced by the server and the
sha256, then renames it into place: a wrong checksum or an interrupted transfer leaves nothing
at ``out``. A destination that already has the right sha256 is left alone.

With ``extract=True`` the archive (tar, tar.gz/bz2/xz, zip) is unpacked into the directory
``out``: every member is checked first (no absolute paths, no ``..``, no links leading outside,
no device files or fifos; tar members additionally pass ``tarfile``'s ``"data"`` filter), the
archive is extracted into a temporary directory beside ``out`` and that directory is renamed
into place. A marker file ``.rasa_fetch.json`` records the archive's sha256, so a second fetch
of the same archive is a no-op.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from tqdm import tqdm

from rasa.errors import ChecksumError, ConfigError, DataError
from rasa.io import atomic_path, write_json

CHUNK = 1 << 20
MARKER = ".rasa_fetch.json"
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def check_sha256(sha256: str) -> str:
    """Validate a sha256 hex digest; return it in lower case."""
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256.strip()):
        raise ConfigError(
            f"sha256 {sha256!r} is not a sha256 digest (expected 64 hexadecimal characters, "
            "e.g. from `sha256sum FILE`)."
        )
    return sha256.strip().lower()


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- sources ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _open_source(url: str, timeout: float) -> Iterator[tuple[IO[bytes], int | None]]:
    """Open ``url`` for reading; yield (stream, expected size or None)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        try:
            resp = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - scheme checked
        except urllib.error.HTTPError as exc:
            raise DataError(f"{url}: download failed: HTTP {exc.code} {exc.reason}.") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"{url}: download failed: {reason}.") from exc
        with resp:
            length = resp.headers.get("Content-Length")
            yield resp, int(length) if length and length.isdigit() else None
        return
    if scheme == "file":
        path = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
    elif scheme == "" or len(scheme) == 1:  # a plain path (a Windows drive letter too)
        path = Path(url)
    else:
        raise ConfigError(
            f"{url}: unsupported URL scheme {scheme!r}; expected http://, https://, file:// "
            "or a local path."
        )
    if not path.is_file():
        raise DataError(f"{path}: source file not found (from {url!r}).")
    with open(path, "rb") as fh:
        yield fh, path.stat().st_size


def _download(url: str, dest: Path, timeout: float) -> str:
    """Stream ``url`` into ``dest`` (an existing temp file); return its sha256."""
    h = hashlib.sha256()
    got = 0
    with _open_source(url, timeout) as (src, size), open(dest, "wb") as fh:
        name = Path(urllib.parse.urlsplit(url).path).name or "download"
        bar = tqdm(total=size, unit="B", unit_scale=True, desc=name, leave=False)
        try:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                fh.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"{url}: transfer interrupted after {got} bytes ({type(exc).__name__}: {exc}); "
                "nothing was written, try again."
            ) from exc
        finally:
            bar.close()
        fh.flush()
        os.fsync(fh.fileno())
    if size is not None and got != size:
        raise DataError(
            f"{url}: transfer interrupted: expected {size} bytes, got {got}; nothing was "
            "written, try again."
        )
    return h.hexdigest()


def _fetch_verified(url: str, sha256: str, tmp: Path, timeout: float) -> None:
    got = _download(url, tmp, timeout)
    if got != sha256:
        raise ChecksumError(
            f"{url}: sha256 mismatch: expected {sha256}, got {got}; the file was not kept "
            "(a changed or corrupted download, or a wrong sha256 in params.yaml)."
        )


# ---- archives --------------------------------------------------------------------------------
def _unsafe_name(name: str) -> str | None:
    """Why an archive member name is unsafe, or None."""
    if not name or "\x00" in name:
        return "an empty name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return "an absolute path"
    if ".." in norm.split("/"):
        return "a '..' component"
    return None


def _link_escapes(member_name: str, target: str, relative_to_member: bool) -> bool:
    """Whether a link target leads outside the extraction root."""
    target = target.replace("\\", "/")
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target):
        return True
    base = posixpath.dirname(member_name) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    return resolved == ".." or resolved.startswith("../")


def _check_tar(tf: tarfile.TarFile, archive: str) -> list[tarfile.TarInfo]:
    members = tf.getmembers()
    for m in members:
        why = _unsafe_name(m.name)
        if why is None and (m.ischr() or m.isblk() or m.isfifo()):
            why = "a device file or fifo"
        if why is None and m.issym() and _link_escapes(m.name, m.linkname, True):
            why = f"a symlink to {m.linkname!r} outside the archive"
        if (
            why is None
            and m.islnk()
            and (_unsafe_name(m.linkname) or _link_escapes(m.name, m.linkname, False))
        ):
            why = f"a hard link to {m.linkname!r} outside the archive"
        if why:
            raise DataError(f"{archive}: refusing to extract member {m.name!r}: {why}.")
    return members


def _check_zip(zf: zipfile.ZipFile, archive: str) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for m in members:
        why = _unsafe_name(m.filename)
        mode = m.external_attr >> 16
        if why is None and (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)):
            why = "a device file or fifo"
        if why is None and stat.S_ISLNK(mode):
            target = zf.read(m).decode("utf-8", "replace")
            if _link_escapes(m.filename, target, True):
                why = f"a symlink to {target!r} outside the archive"
        if why:
            raise DataError(f"{archive}: refusing to extract member {m.filename!r}: {why}.")
    return members


def extract_archive(archive: str | os.PathLike, dest: str | os.PathLike, label: str = "") -> None:
    """Check every member of a tar/zip archive, then extract it into the directory ``dest``."""
    archive, dest = Path(archive), Path(dest)
    label = label or str(archive)
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = _check_tar(tf, label)
            try:
                for m in tqdm(members, desc="extract", unit="file", leave=False):
                    tf.extract(m, dest, filter="data")
            except tarfile.FilterError as exc:
                raise DataError(f"{label}: refusing to extract: {exc}.") from exc
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            members = _check_zip(zf, label)
            for m in tqdm(members, desc="extract", unit="file", leave=False):
                zf.extract(m, dest)
    else:
        raise DataError(f"{label}: not a tar or zip archive, so it cannot be extracted.")


def _read_marker(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _replace_dir(new: Path, out: Path) -> None:
    """Move directory ``new`` onto ``out`` (an existing ``out`` is swapped out, then removed)."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, old / "d")
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old / "d", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _scratch_file(folder: Path, prefix: str, suffix: str) -> Iterator[Path]:
    """A temporary file in ``folder``, removed when the block ends (success or not)."""
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


# ---- entry point -----------------------------------------------------------------------------
def fetch(
    url: str,
    sha256: str,
    out: str | os.PathLike,
    extract: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``url`` to ``out`` (a file; with ``extract`` a directory) and return ``out``."""
    sha256 = check_sha256(sha256)
    out = Path(out)
    if not extract:
        if out.is_file() and file_sha256(out) == sha256:
            print(f"{out}: up to date (sha256 {sha256[:12]})")
            return out
        if out.is_dir():
            raise DataError(f"{out}: is a directory; give a file name (or use --extract).")
        with atomic_path(out, suffix=".part") as tmp:
            _fetch_verified(url, sha256, tmp, timeout)
        print(f"{out}: fetched ({out.stat().st_size} bytes, sha256 {sha256[:12]})")
        return out

    marker = _read_marker(out) if out.is_dir() else None
    if marker is not None and marker.get("sha256") == sha256:
        print(f"{out}: up to date (extracted from sha256 {sha256[:12]})")
        return out
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory; --extract unpacks into one.")
    if out.is_dir() and marker is None and any(out.iterdir()):
        raise DataError(
            f"{out}: exists, is not empty and was not made by `rasa data fetch`; remove it or "
            "choose another --out (refusing to replace files it did not write)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with _scratch_file(out.parent, f".{out.name}.", ".archive.part") as tmp:
        _fetch_verified(url, sha256, tmp, timeout)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            extract_archive(tmp, staging, label=url)
            write_json(staging / MARKER, {"url": url, "sha256": sha256})
            staging.chmod(0o755)  # mkdtemp made it private
            _replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    print(f"{out}: extracted (sha256 {sha256[:12]})")
    return out
