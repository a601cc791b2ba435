"""Shared checks for the raw-format parsers: reading JSON safely, typed field access with
clear messages, and a :class:`Collector` that turns raw entries into canonical records.

Policy (what stops the parse, what is counted and dropped) is documented in
:mod:`rasa.data.formats`; this module implements it once for every format:

* a missing or ill-typed field, an unknown split, an unsafe image path, an identity that
  appears in two splits, or the same image listed twice with different content raise
  :class:`~rasa.errors.DataError` naming file, record, key and what was expected;
* a caption that is empty after ``strip()`` is dropped and counted; an image left with no
  caption is dropped and counted; an exact repeat of an earlier entry is dropped and counted.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rasa.data.annotations import SPLITS, Annotations, Record
from rasa.errors import DataError, where

# Human wording of each counted warning (key in ``source["warnings"]``).
WARNING_TEXT = {
    "empty_captions_dropped": "empty caption(s) dropped",
    "images_without_captions_dropped": "image(s) with no caption left dropped",
    "duplicate_entries_dropped": "exact repeat(s) of an earlier entry dropped",
    "undecodable_text_files": "text file(s) with bytes that are not UTF-8 (replaced)",
    "unlisted_classes_ignored": "class folder(s) in no split list ignored",
}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_json(path: Path) -> tuple[Any, str]:
    """Parse a JSON file (never ``eval``/unpickle); return ``(object, sha256 of its bytes)``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    data = path.read_bytes()
    try:
        obj = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte {exc.start}); expected a JSON file."
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "is the file complete (not truncated by an interrupted download)?"
        ) from exc
    return obj, hashlib.sha256(data).hexdigest()


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def expect_list(obj: Any, path: Path, what: str) -> list:
    if not isinstance(obj, list):
        raise DataError(
            f"{path}: expected a JSON list of {what} at the top level, got {type_name(obj)}."
        )
    return obj


def expect_record(entry: Any, path: Path, index: int, what: str = "an object") -> dict:
    if not isinstance(entry, dict):
        raise DataError(f"{where(path, index)}: expected {what}, got {type_name(entry)}.")
    return entry


def get_field(entry: dict, key: str, path: Path, index: int, expected: str) -> Any:
    if key not in entry:
        raise DataError(
            f"{where(path, index, key)}: key missing; expected {expected}. "
            f"The record has keys {sorted(entry)}."
        )
    return entry[key]


def get_int(entry: dict, key: str, path: Path, index: int, expected: str = "an integer") -> int:
    value = get_field(entry, key, path, index, expected)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataError(f"{where(path, index, key)}: expected {expected}, got {value!r}.")
    return value


def get_str(entry: dict, key: str, path: Path, index: int, expected: str = "a string") -> str:
    value = get_field(entry, key, path, index, expected)
    if not isinstance(value, str):
        raise DataError(
            f"{where(path, index, key)}: expected {expected}, got {type_name(value)} {value!r}."
        )
    return value


def get_str_list(entry: dict, key: str, path: Path, index: int) -> list[str]:
    value = get_field(entry, key, path, index, "a list of caption strings")
    if not isinstance(value, list):
        raise DataError(
            f"{where(path, index, key)}: expected a list of caption strings, "
            f"got {type_name(value)}."
        )
    for j, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(
                f"{where(path, index, key)}: item {j} should be a caption string, "
                f"got {type_name(item)} {item!r}."
            )
    return value


def safe_relpath(value: str, path: Path, index: int | str, key: str) -> str:
    """Normalise a relative image path to POSIX form; refuse absolute paths and ``..``."""
    text = value.replace("\\", "/")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts or ":" in parts[0]:
        raise DataError(
            f"{where(path, index, key)}: expected a relative image path inside the image "
            f"folder, got {value!r}."
        )
    return "/".join(parts)


class Collector:
    """Validate raw entries one by one and collect canonical records.

    ``path`` is the raw file (for messages); ``splits`` maps each raw split value to a
    canonical one (e.g. Karpathy's ``restval`` → ``train``).
    """

    def __init__(
        self,
        path: Path,
        splits: dict[str, str] | None = None,
        image_key: str = "file_path",
        split_key: str = "split",
    ):
        self.path = path
        self.image_key = image_key
        self.splits = splits or {s: s for s in SPLITS}
        self.split_key = split_key
        self.records: list[Record] = []
        self.warnings: Counter[str] = Counter()
        self.first_warning: dict[str, str] = {}
        self.notes: list[str] = []
        self._image_pos: dict[str, tuple[int, int | str]] = {}  # image -> (record pos, origin)
        self._pid_split: dict[int, tuple[str, int | str]] = {}  # pid -> (split, origin)

    def at(self, origin: int | str, key: str | None = None) -> str:
        """Where a raw entry is: ``file, record i`` or, for one file per image, its path."""
        if isinstance(origin, str):
            return where(self.path / origin, key=key)
        return where(self.path, origin, key)

    def warn(self, kind: str, origin: int | str, n: int = 1) -> None:
        self.warnings[kind] += n
        self.first_warning.setdefault(kind, self.at(origin))

    def split(self, value: Any, index: int | str) -> str:
        if not isinstance(value, str) or value not in self.splits:
            raise DataError(
                f"{self.at(index, self.split_key)}: unknown split {value!r}; expected "
                f"one of {', '.join(repr(s) for s in self.splits)}."
            )
        return self.splits[value]

    def add(
        self, origin: int | str, image: str, pid: int, split: str, captions: Iterable[str]
    ) -> None:
        """Add one image; ``origin`` is its record index (or file) in the raw data."""
        raw = list(captions)
        kept = tuple(c.strip() for c in raw if c.strip())
        if len(kept) < len(raw):
            self.warn("empty_captions_dropped", origin, len(raw) - len(kept))
        if not kept:
            self.warn("images_without_captions_dropped", origin)
            return
        if image in self._image_pos:
            pos, first = self._image_pos[image]
            if self.records[pos] == Record(image, pid, split, kept):
                self.warn("duplicate_entries_dropped", origin)
                return
            raise DataError(
                f"{self.at(origin, self.image_key)}: image {image!r} is listed again with a "
                f"different id, split or captions (first at {self.at(first)}); expected "
                "each image once."
            )
        if pid in self._pid_split and self._pid_split[pid][0] != split:
            other, first = self._pid_split[pid]
            raise DataError(
                f"{self.at(origin, self.split_key)}: id {pid} is in split {split!r} "
                f"here but in {other!r} at {self.at(first)}; expected every identity "
                "in exactly one split (the splits are by identity)."
            )
        self._pid_split.setdefault(pid, (split, origin))
        self._image_pos[image] = (len(self.records), origin)
        self.records.append(Record(image, pid, split, kept))

    def annotations(self, dataset: str, image_root: Path, source: dict) -> Annotations:
        if not self.records:
            raise DataError(
                f"{self.path}: no usable records (every entry was empty or dropped); expected "
                "images with at least one non-empty caption."
            )
        source = dict(source)
        source["image_key"] = self.image_key
        source["warnings"] = dict(sorted(self.warnings.items()))
        source["warning_details"] = {
            k: f"{n} {WARNING_TEXT.get(k, k)} (first at {self.first_warning[k]})"
            for k, n in sorted(self.warnings.items())
        }
        source["notes"] = list(self.notes)
        return Annotations(dataset, str(image_root.resolve()), self.records, source)
