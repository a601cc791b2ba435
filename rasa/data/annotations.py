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

from rasa.errors import DataError
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
        path = Path(path)
        if not path.is_file():
            raise DataError(
                f"{path}: annotation file not found; create it with `rasa data parse` "
                "or `rasa data synth`."
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
        if not isinstance(raw, dict) or raw.get("format_version") != FORMAT_VERSION:
            raise DataError(
                f"{path}: not a rasa annotation table (expected an object with "
                f"format_version={FORMAT_VERSION}); was it written by `rasa data parse`?"
            )
        records = []
        for i, r in enumerate(raw["records"]):
            try:
                records.append(
                    Record(str(r["image"]), int(r["pid"]), str(r["split"]), tuple(r["captions"]))
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(
                    f"{path}, record {i}: expected keys image, pid, split, captions ({exc})."
                ) from exc
        return cls(raw["dataset"], raw["image_root"], records, raw.get("source", {}))


def person_index(records: Iterable[Record]) -> dict[int, int]:
    """Map each person id to a dense index 0..n-1 in order of first appearance."""
    index: dict[int, int] = {}
    for r in records:
        index.setdefault(r.pid, len(index))
    return index
