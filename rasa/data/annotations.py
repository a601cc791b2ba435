"""The canonical annotation table: every dataset, whatever its raw format, becomes this.

One record per image: ``image`` (path relative to ``image_root``), ``pid`` (person id, or class
id for CUB/Flowers, or image id for Flickr30K/COCO), ``split`` (train/val/test) and
``captions`` (raw text; cleaning happens at tokenization). Stored as one JSON file, written
atomically with sorted keys, so the same input gives the same bytes.

Captions are numbered in record order (record 0's captions first): that flat caption index is
what the token cache and the evaluation use.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rasa.errors import DataError, where
from rasa.io import write_json

SPLITS = ("train", "val", "test")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Record:
    image: str
    pid: int
    split: str
    captions: tuple[str, ...]


@dataclass
class Annotations:
    """A parsed dataset. ``image_root`` is relative to the annotation file when not absolute."""

    dataset: str
    image_root: str
    records: list[Record]
    source: dict = field(default_factory=dict)  # what was parsed: format, file, sha256, notes

    # ---- views -------------------------------------------------------------------------
    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    def captions(self, split: str | None = None) -> Iterator[tuple[int, int, str]]:
        """Yield ``(caption_index, record_index, caption)`` in the flat caption order."""
        k = 0
        for i, rec in enumerate(self.records):
            for cap in rec.captions:
                if split is None or rec.split == split:
                    yield k, i, cap
                k += 1

    def num_captions(self) -> int:
        return sum(len(r.captions) for r in self.records)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per split: number of identities, images and captions."""
        out: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            recs = self.split(name)
            if recs:
                out[name] = {
                    "ids": len({r.pid for r in recs}),
                    "images": len(recs),
                    "captions": sum(len(r.captions) for r in recs),
                }
        return out

    def resolve_image_root(self, annotations_path: str | Path) -> Path:
        root = Path(self.image_root)
        return root if root.is_absolute() else (Path(annotations_path).parent / root)

    # ---- IO ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "image_root": self.image_root,
            "source": self.source,
            "records": [dict(asdict(r), captions=list(r.captions)) for r in self.records],
        }

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: str | Path) -> Annotations:
        """Read a table written by :meth:`save`, checking every field as the raw parsers do:
        types (pid an integer, captions a list of strings), values (split one of
        :data:`SPLITS`, no empty caption) and each image listed once; a problem raises
        :class:`DataError` naming the file, record and key."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "not found"
            raise DataError(
                f"{path}: annotation file {what}; create it with `rasa data parse` "
                "or `rasa data synth`."
            )
        data = path.read_bytes()
        try:
            raw = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not UTF-8 text (byte {exc.start}); expected the JSON table written "
                "by `rasa data parse`."
            ) from exc
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); is it complete?"
            ) from exc
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: not a rasa annotation table (expected an object with "
                f"format_version={FORMAT_VERSION}); was it written by `rasa data parse`?"
            )
        for key in ("dataset", "image_root"):
            if not isinstance(raw.get(key), str):
                raise DataError(f"{where(path, key=key)}: expected a string, got {raw.get(key)!r}.")
        if not isinstance(raw.get("records"), list):
            got = "nothing" if "records" not in raw else type(raw["records"]).__name__
            raise DataError(
                f"{where(path, key='records')}: expected a list of records (image, pid, "
                f"split, captions), got {got}."
            )
        records = [_record(r, path, i) for i, r in enumerate(raw["records"])]
        first: dict[str, int] = {}
        for i, rec in enumerate(records):
            if rec.image in first:
                raise DataError(
                    f"{where(path, i, 'image')}: image {rec.image!r} is listed again (first "
                    f"as record {first[rec.image]}); expected each image once."
                )
            first[rec.image] = i
        source = raw.get("source", {})
        return cls(raw["dataset"], raw["image_root"], records, source)


def _record(r: object, path: Path, i: int) -> Record:
    """One checked record of a table (see :meth:`Annotations.load`)."""
    if not isinstance(r, dict):
        raise DataError(f"{where(path, i)}: expected an object, got {type(r).__name__}.")
    missing = [k for k in ("image", "pid", "split", "captions") if k not in r]
    if missing:
        raise DataError(
            f"{where(path, i, missing[0])}: key missing; expected keys image, pid, split, "
            f"captions (the record has {sorted(r)})."
        )
    image, pid, split, caps = r["image"], r["pid"], r["split"], r["captions"]
    if not isinstance(image, str) or not image:
        raise DataError(f"{where(path, i, 'image')}: expected an image path, got {image!r}.")
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise DataError(f"{where(path, i, 'pid')}: expected an integer id, got {pid!r}.")
    if split not in SPLITS:
        raise DataError(
            f"{where(path, i, 'split')}: unknown split {split!r}; expected one of "
            f"{', '.join(SPLITS)}."
        )
    if not isinstance(caps, list) or not caps:
        raise DataError(
            f"{where(path, i, 'captions')}: expected a non-empty list of caption strings, "
            f"got {caps!r:.60}."
        )
    for j, cap in enumerate(caps):
        if not isinstance(cap, str) or not cap.strip():
            raise DataError(
                f"{where(path, i, 'captions')}: item {j} should be a non-empty caption "
                f"string, got {cap!r:.60}."
            )
    return Record(image, pid, split, tuple(caps))


def person_index(records: Iterable[Record]) -> dict[int, int]:
    """Map each person id to a dense index 0..n-1 in order of first appearance."""
    index: dict[int, int] = {}
    for r in records:
        index.setdefault(r.pid, len(index))
    return index
