"""The gallery of ``rasa search``: which images, and their embeddings, cached on disk.

A gallery is either a folder of images (``.jpg``/``.jpeg``/``.png`` at any depth, in the order
of their relative paths; hidden folders are skipped) or the records of one split of an
annotation table (table order: the gallery of ``rasa evaluate`` for that split).

Embeddings are the evaluation's (:func:`rasa.engine.evaluate.embed_images`, the transform of
:class:`rasa.data.transforms.ImageTransform` with the run's resize mode): each image's tokens
(needed by the ITM re-ranking) and its projected feature. They are cached in one ``.npz`` per
(model, gallery) in the cache folder, written atomically, no pickles:

- the file name holds the **model key** (sha256 over the checkpoint's sha256, the resize mode,
  the precision of the embeddings and the cache format) and the gallery's identity (its resolved folder, or
  annotation table + split);
- inside, every embedded file's name, size and mtime (ns) beside its rows. A search reuses
  the rows of every file whose (name, size, mtime) is unchanged and embeds only the others; a
  removed file's rows are dropped. Unreadable images are recorded too (with their size and
  mtime), so they are skipped and counted without being re-read until they change.

The checkpoint's sha256 is memoised in ``checkpoints.json`` of the cache folder by (resolved
path, size, mtime), so a repeated search does not re-hash a large checkpoint.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from rasa.data.transforms import ImageTransform, load_image
from rasa.errors import DataError
from rasa.io import atomic_open, write_json

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_FORMAT = 1
CACHE_ENV = "RASA_SEARCH_CACHE"


def default_cache_dir() -> Path:
    """``$RASA_SEARCH_CACHE``, else ``$XDG_CACHE_HOME/rasa/search`` (``~/.cache/rasa/search``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rasa" / "search"


# ---- which images ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GalleryFile:
    name: str  # relative to the gallery root (posix): the file's identity in cache and output
    path: Path  # where to read it
    size: int  # -1: could not be stat'ed (missing)
    mtime_ns: int
    pid: int | None = None  # person id (annotation-table galleries only)

    @property
    def stamp(self) -> tuple[str, int, int]:
        return (self.name, self.size, self.mtime_ns)


@dataclass
class Gallery:
    source: str  # the folder, or "TABLE (split S)"
    identity: str  # what names the cache file: resolved folder, or table + split
    root: Path  # image paths are relative to it
    files: list[GalleryFile]


def _stat(name: str, path: Path, pid: int | None = None) -> GalleryFile:
    try:
        st = path.stat()
        return GalleryFile(name, path, int(st.st_size), int(st.st_mtime_ns), pid)
    except OSError:
        return GalleryFile(name, path, -1, -1, pid)


def list_gallery(gallery: str | os.PathLike, split: str = "test") -> Gallery:
    """The images of a folder (recursive) or of ``split`` of an annotation table (``.json``)."""
    path = Path(gallery)
    if path.is_dir():
        root = path.resolve()
        found: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(root)
            found += [
                (rel / f).as_posix()
                for f in filenames
                if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")
            ]
        files = [_stat(name, root / name) for name in sorted(found)]
        if not files:
            raise DataError(
                f"gallery {path}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files "
                "in the folder or its sub-folders)."
            )
        return Gallery(str(path), str(root), root, files)
    if path.is_file() and path.suffix.lower() == ".json":
        from rasa.data.annotations import Annotations

        ann = Annotations.load(path)
        records = ann.split(split)
        if not records:
            have = sorted({r.split for r in ann.records})
            raise DataError(
                f"gallery {path}: the annotation table has no images in split {split!r} "
                f"(it has {', '.join(have) or 'no records'}); pass --split."
            )
        root = ann.resolve_image_root(path).resolve()
        files = [_stat(r.image, root / r.image, r.pid) for r in records]
        return Gallery(f"{path} (split {split})", f"{path.resolve()}::{split}", root, files)
    if not path.exists():
        raise DataError(f"gallery {path}: not found (expected a folder or an annotation table).")
    raise DataError(
        f"gallery {path}: expected a folder of images or an annotation table (.json written by "
        "`rasa data parse`)."
    )


# ---- checkpoint identity --------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(path: str | os.PathLike, cache_dir: Path | None) -> str:
    """sha256 of a checkpoint file, memoised by (resolved path, size, mtime) in ``cache_dir``."""
    path = Path(path).resolve()
    st = path.stat()
    stamp = {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    memo_file = cache_dir / "checkpoints.json" if cache_dir is not None else None
    memo: dict[str, Any] = {}
    if memo_file is not None and memo_file.is_file():
        try:
            memo = json.loads(memo_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            memo = {}  # a damaged memo only costs a re-hash
        entry = memo.get(str(path)) if isinstance(memo, dict) else None
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
            return str(entry["sha256"])
    digest = file_sha256(path)
    if memo_file is not None:
        memo = memo if isinstance(memo, dict) else {}
        memo[str(path)] = {**stamp, "sha256": digest}
        write_json(memo_file, memo)
    return digest


# ---- embeddings -----------------------------------------------------------------------------
@dataclass
class GalleryEmbeddings:
    """The gallery's readable images (gallery order) with the evaluation's embeddings."""

    files: list[GalleryFile]
    image_tokens: Tensor  # [G, 1+M, Dv] CPU (bf16 under bf16 autocast, else float32)
    image_feats: Tensor  # [G, E] float32 CPU
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    embedded: int = 0  # images embedded by this call (0: everything came from the cache)
    cache_file: Path | None = None

    def __len__(self) -> int:
        return len(self.files)


class _Images(Dataset):
    """Transformed images by position; a file that fails gives its error instead."""

    def __init__(self, files: list[GalleryFile], transform: ImageTransform) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, Tensor | None, str]:
        try:
            return i, self.transform(load_image(self.files[i].path)), ""
        except Exception as exc:  # noqa: BLE001 - one bad file must never abort a gallery
            reason = str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}"
            return i, None, reason


def _collate(items: list[tuple[int, Tensor | None, str]]) -> dict[str, Any]:
    good = [(i, x) for i, x, _ in items if x is not None]
    return {
        "index": [i for i, _ in good],
        "image": torch.stack([x for _, x in good]) if good else None,
        "bad": [(i, err) for i, x, err in items if x is None],
    }


def _embed_files(
    model: nn.Module,
    files: list[GalleryFile],
    transform: ImageTransform,
    device: torch.device,
    amp: torch.dtype | None,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[list[int], Tensor | None, Tensor | None, list[tuple[int, str]]]:
    """Embed ``files``: (positions embedded, tokens, feats, [(position, reason)] of failures)."""
    from rasa.engine.evaluate import embed_images

    loader = DataLoader(
        _Images(files, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    done: list[int] = []
    bad: list[tuple[int, str]] = []

    def batches() -> Iterator[Tensor]:
        for batch in loader:
            bad.extend(batch["bad"])
            if batch["index"]:
                done.extend(batch["index"])
                yield batch["image"]

    it = batches()
    first = next(it, None)
    if first is None:  # nothing readable: embed_images would concatenate no batch
        return done, None, None, bad
    tokens, feats = embed_images(model, itertools.chain([first], it), device, amp, progress)
    return done, tokens, feats, bad


def model_key(checkpoint_sha: str, resize: str, amp: torch.dtype | None = None) -> str:
    """What the embeddings depend on besides the image bytes."""
    head = {"format": CACHE_FORMAT, "checkpoint_sha256": checkpoint_sha, "resize": resize,
            "dtype": _precision(amp)}  # fmt: skip
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode("utf-8")).hexdigest()


def _precision(amp: torch.dtype | None) -> str:
    return "fp32" if amp is None else str(amp).removeprefix("torch.")


def cache_path(cache_dir: Path, key: str, gallery: Gallery) -> Path:
    gid = hashlib.sha256(gallery.identity.encode("utf-8")).hexdigest()
    return cache_dir / f"{key[:16]}-{gid[:16]}.npz"


def _read_cache(path: Path, key: str) -> dict[str, Any] | None:
    """The stored arrays and meta when ``path`` holds embeddings of ``key``, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("key") != key or meta.get("format") != CACHE_FORMAT:
                return None
            out = {
                "meta": meta,
                "names": [str(n) for n in z["names"]],
                "sizes": z["sizes"].tolist(),
                "mtimes": z["mtimes"].tolist(),
                "tokens": z["image_tokens"],
                "feats": z["image_feats"],
            }
        lengths = {len(out[k]) for k in ("names", "sizes", "mtimes", "tokens", "feats")}
        return out if len(lengths) == 1 else None
    except (OSError, ValueError, KeyError):
        return None  # unreadable or foreign: embed again and overwrite


def _write_cache(
    path: Path,
    key: str,
    meta: dict[str, Any],
    files: list[GalleryFile],
    tokens: Tensor,
    feats: Tensor,
    bad: list[dict[str, Any]],
) -> None:
    meta = {**meta, "format": CACHE_FORMAT, "key": key, "bad": bad}
    names = np.array([f.name for f in files], dtype=np.str_) if files else np.zeros(0, "U1")
    with atomic_open(path, "wb") as fh:  # a file object: np.savez adds no ".npz" suffix
        np.savez(
            fh,
            names=names,
            sizes=np.array([f.size for f in files], dtype=np.int64),
            mtimes=np.array([f.mtime_ns for f in files], dtype=np.int64),
            image_tokens=tokens.float().numpy(),
            image_feats=feats.float().numpy(),
            meta=np.array(json.dumps(meta, sort_keys=True)),
        )


def embed_gallery(
    model: nn.Module,
    gallery: Gallery,
    *,
    checkpoint_sha: str,
    resize: str,
    amp: torch.dtype | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 64,
    device: torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> GalleryEmbeddings:
    """Embeddings of every readable image of ``gallery``, from the cache where unchanged.

    ``amp``: the autocast dtype of the embedding (None: float32). ``cache_dir`` None: no
    cache (everything embedded, nothing written). Raises
    :class:`DataError` when no image of the gallery is readable.
    """
    device = device or torch.device("cpu")
    cfg = model.config
    transform = ImageTransform(cfg.image_size, cfg.mean, cfg.std, resize)
    key = model_key(checkpoint_sha, resize, amp)
    path = cache_path(cache_dir, key, gallery) if cache_dir is not None else None
    stored = _read_cache(path, key) if path is not None else None

    rows: dict[tuple[str, int, int], int] = {}
    known_bad: dict[tuple[str, int, int], str] = {}
    if stored is not None:
        stamps = zip(stored["names"], stored["sizes"], stored["mtimes"], strict=True)
        for r, stamp in enumerate(stamps):
            rows[stamp] = r
        for b in stored["meta"].get("bad", []):
            known_bad[(b["name"], b["size"], b["mtime_ns"])] = b["reason"]

    reason: dict[int, str] = {}  # gallery position -> why it is skipped
    todo: list[int] = []
    for i, f in enumerate(gallery.files):
        if f.size < 0:
            reason[i] = f"{f.path}: image not found."
        elif f.stamp in rows:
            continue
        elif f.stamp in known_bad:
            reason[i] = known_bad[f.stamp]
        else:
            todo.append(i)

    new_pos: dict[int, int] = {}
    new_tokens = new_feats = None
    if todo:
        todo_files = [gallery.files[i] for i in todo]
        done, new_tokens, new_feats, failed = _embed_files(
            model, todo_files, transform, device, amp, batch_size, num_workers, progress
        )
        new_pos = {todo[j]: r for r, j in enumerate(done)}
        for j, err in failed:
            reason[todo[j]] = err

    keep = [i for i in range(len(gallery.files)) if i not in reason]
    if not keep:
        shown = "; ".join(list(reason.values())[:3])
        raise DataError(
            f"gallery {gallery.source}: none of its {len(gallery.files)} images is readable "
            f"({shown}{' ...' if len(reason) > 3 else ''})."
        )
    kept_files = [gallery.files[i] for i in keep]
    if stored is not None and not todo and [f.stamp for f in kept_files] == list(rows):
        tokens = torch.from_numpy(stored["tokens"])  # the common case: the cache as it is
        feats = torch.from_numpy(stored["feats"])
    else:
        tokens, feats = _assemble(keep, gallery.files, rows, stored, new_pos, new_tokens, new_feats)
    store = amp or torch.float32
    tokens = tokens.to(store)

    bad_entries = [
        {"name": gallery.files[i].name, "size": gallery.files[i].size,
         "mtime_ns": gallery.files[i].mtime_ns, "reason": reason[i]}
        for i in sorted(reason) if gallery.files[i].size >= 0
    ]  # fmt: skip
    changed = stored is None or bool(todo) or [f.stamp for f in kept_files] != list(rows)
    changed = changed or bad_entries != stored["meta"].get("bad", [])
    if path is not None and changed:
        meta = {"gallery": gallery.source, "checkpoint_sha256": checkpoint_sha,
                "resize": resize, "dtype": _precision(amp)}  # fmt: skip
        _write_cache(path, key, meta, kept_files, tokens, feats, bad_entries)
    skipped = [{"name": gallery.files[i].name, "reason": reason[i]} for i in sorted(reason)]
    return GalleryEmbeddings(
        kept_files, tokens, feats.float(), skipped, embedded=len(new_pos), cache_file=path
    )


def _assemble(
    keep: list[int],
    files: list[GalleryFile],
    rows: dict[tuple[str, int, int], int],
    stored: dict[str, Any] | None,
    new_pos: dict[int, int],
    new_tokens: Tensor | None,
    new_feats: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """Rows in gallery order from the cache (``rows``) and the new embeddings (``new_pos``)."""
    sample_t = new_tokens if new_tokens is not None else torch.from_numpy(stored["tokens"])
    sample_f = new_feats if new_feats is not None else torch.from_numpy(stored["feats"])
    tokens = torch.empty((len(keep), *sample_t.shape[1:]), dtype=torch.float32)
    feats = torch.empty((len(keep), *sample_f.shape[1:]), dtype=torch.float32)
    from_cache = [(o, rows[files[i].stamp]) for o, i in enumerate(keep) if i not in new_pos]
    if from_cache:
        out_rows = torch.tensor([o for o, _ in from_cache])
        src = torch.tensor([r for _, r in from_cache])
        tokens[out_rows] = torch.from_numpy(stored["tokens"])[src].float()
        feats[out_rows] = torch.from_numpy(stored["feats"])[src].float()
    fresh = [(o, new_pos[i]) for o, i in enumerate(keep) if i in new_pos]
    if fresh:
        out_rows = torch.tensor([o for o, _ in fresh])
        src = torch.tensor([r for _, r in fresh])
        tokens[out_rows] = new_tokens[src].float()
        feats[out_rows] = new_feats[src].float()
    return tokens, feats
