"""Parsers for the three text-based person search datasets of the RaSa paper (Appendix A.1).

* CUHK-PEDES (Li et al., 2017): ``reid_raw.json``, a list of ``{"split", "captions",
  "file_path", "processed_tokens", "id"}``, one entry per image, images under ``imgs/``. The
  older ``caption_all.json`` has the same entries without ``split``: the standard split by
  identity is then generated (:func:`standard_identity_split`) and recorded in ``source``.
* ICFG-PEDES (Ding et al., 2021): ``ICFG-PEDES.json`` (alias ``ICFG_PEDES.json``), same
  entries with one caption each and only train/test (no validation split in the release: kept
  as released, the engine carves validation out of train).
* RSTPReid (Zhu et al., 2021): ``data_captions.json``, a list of ``{"id", "img_path",
  "captions", "split"}``, images under ``imgs/``.

``processed_tokens`` is ignored: captions are cleaned and tokenized by our own pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rasa.data.annotations import Annotations
from rasa.data.formats import register_format
from rasa.data.parsers.common import (
    Collector,
    expect_list,
    expect_record,
    get_field,
    get_int,
    get_str,
    get_str_list,
    load_json,
    safe_relpath,
)
from rasa.errors import DataError, where

CUHK_FILES = ("reid_raw.json", "caption_all.json")  # the release, then its older alias
ICFG_FILES = ("ICFG-PEDES.json", "ICFG_PEDES.json")
RSTP_FILES = ("data_captions.json",)
IMAGE_DIR = "imgs"

# The standard CUHK-PEDES identity split (Li et al., 2017; RaSa Appendix A.1).
CUHK_SPLIT_IDS = {"train": 11003, "val": 1000, "test": 1000}


def standard_identity_split(pids: list[int]) -> dict[int, str]:
    """Split identities by sorted id: first 11,003 train, next 1,000 val, last 1,000 test.

    With a different number of identities the same proportions are used (val and test each
    ``round(n * 1000 / 13003)``, at least one when there are three or more ids).
    """
    ids = sorted(set(pids))
    n = len(ids)
    if n < 3:
        raise DataError(
            f"cannot generate the standard identity split from {n} identities; expected at "
            "least 3 (one each for train, val and test)."
        )
    total = sum(CUHK_SPLIT_IDS.values())
    n_val = max(1, round(n * CUHK_SPLIT_IDS["val"] / total))
    n_test = max(1, round(n * CUHK_SPLIT_IDS["test"] / total))
    n_train = n - n_val - n_test
    out = {pid: "train" for pid in ids[:n_train]}
    out.update({pid: "val" for pid in ids[n_train : n_train + n_val]})
    out.update({pid: "test" for pid in ids[n_train + n_val :]})
    return out


def find_file(root: Path, names: tuple[str, ...], dataset: str) -> Path:
    for name in names:
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"{root}: no {dataset} annotation file; expected {' or '.join(names)} in this folder "
        f"(images under {IMAGE_DIR}/)."
    )


def _read(
    path: Path, image_key: str, split_optional: bool
) -> tuple[list[tuple[int, str, int, str | None, list[str]]], str]:
    """Validate the entries' fields; return rows ``(index, image, id, split or None,
    captions)`` and the file's sha256."""
    obj, digest = load_json(path)
    entries = expect_list(obj, path, "image entries")
    if not entries:
        raise DataError(f"{path}: the list is empty; expected one entry per image.")
    rows = []
    for i, entry in enumerate(entries):
        entry = expect_record(entry, path, i, f"an object with keys {image_key}, id, captions")
        image = safe_relpath(
            get_str(entry, image_key, path, i, "a relative image path"), path, i, image_key
        )
        pid = get_int(entry, "id", path, i, "an integer person id")
        captions = get_str_list(entry, "captions", path, i)
        if split_optional and "split" not in entry:
            split = None
        else:
            split = get_field(entry, "split", path, i, "'train', 'val' or 'test'")
        rows.append((i, image, pid, split, captions))
    missing = [r[0] for r in rows if r[3] is None]
    if missing and len(missing) < len(rows):
        has = next(r[0] for r in rows if r[3] is not None)
        raise DataError(
            f"{where(path, missing[0], 'split')}: key missing, but record {has} has one; "
            "expected a split in every entry or in none (then the standard identity split "
            "is generated)."
        )
    return rows, digest


def _collect(path: Path, rows: list, image_key: str, splits: tuple[str, ...]) -> Collector:
    col = Collector(path, {s: s for s in splits}, image_key)
    for i, image, pid, split, captions in rows:
        col.add(i, image, pid, col.split(split, i), captions)
    return col


def _source(fmt: str, path: Path, digest: str, aliases: tuple[str, ...]) -> dict[str, Any]:
    source = {"format": fmt, "file": path.name, "sha256": digest}
    if path.name != aliases[0]:
        source["alias"] = path.name
    return source


def sniff(obj: Any) -> str | None:
    """Which person-search format a parsed JSON object looks like (None if none)."""
    if not isinstance(obj, list) or not obj or not all(isinstance(e, dict) for e in obj):
        return None
    if all({"img_path", "id", "captions"} <= e.keys() for e in obj):
        return "rstpreid"
    if not all({"file_path", "id", "captions"} <= e.keys() for e in obj):
        return None
    splits = {e.get("split") for e in obj}
    one_caption = all(isinstance(e["captions"], list) and len(e["captions"]) == 1 for e in obj)
    if splits <= {"train", "test"} and one_caption:
        return "icfg-pedes"
    return "cuhk-pedes"


@register_format(
    "cuhk-pedes",
    files=CUHK_FILES[:1],
    aliases=CUHK_FILES[1:],
    sniff=lambda o: sniff(o) == "cuhk-pedes",
    description="CUHK-PEDES reid_raw.json (or caption_all.json) + imgs/",
)
def parse_cuhk(root: Path, file: Path | None = None) -> Annotations:
    path = file or find_file(root, CUHK_FILES, "CUHK-PEDES")
    rows, digest = _read(path, "file_path", split_optional=True)
    notes = []
    if path.name == CUHK_FILES[0] and (root / CUHK_FILES[1]).is_file():
        notes.append(f"{CUHK_FILES[1]} also present: ignored (reid_raw.json has the splits)")
    if path.name == CUHK_FILES[1]:
        notes.append(f"read {path.name} (the older release's name for reid_raw.json)")
    elif path.name != CUHK_FILES[0]:
        notes.append(f"read {path.name} in place of reid_raw.json")
    generated = rows[0][3] is None
    if generated:
        split_of = standard_identity_split([r[2] for r in rows])
        rows = [(i, im, pid, split_of[pid], caps) for i, im, pid, _, caps in rows]
        counts = {s: sum(1 for v in split_of.values() if v == s) for s in ("train", "val", "test")}
        notes.append(
            f"{path.name} has no split field: generated the standard identity split by sorted "
            f"id (train/val/test = {counts['train']}/{counts['val']}/{counts['test']} ids; "
            "11,003/1,000/1,000 for the full 13,003 ids)"
        )
    col = _collect(path, rows, "file_path", ("train", "val", "test"))
    col.notes[:0] = notes
    source = _source("cuhk-pedes", path, digest, CUHK_FILES)
    source["split_generated"] = generated
    return col.annotations("cuhk-pedes", root / IMAGE_DIR, source)


@register_format(
    "icfg-pedes",
    files=ICFG_FILES[:1],
    aliases=ICFG_FILES[1:],
    sniff=lambda o: sniff(o) == "icfg-pedes",
    description="ICFG-PEDES ICFG-PEDES.json (or ICFG_PEDES.json) + imgs/",
)
def parse_icfg(root: Path, file: Path | None = None) -> Annotations:
    path = file or find_file(root, ICFG_FILES, "ICFG-PEDES")
    rows, digest = _read(path, "file_path", split_optional=False)
    col = _collect(path, rows, "file_path", ("train", "val", "test"))
    notes = []
    if path.name != ICFG_FILES[0]:
        notes.append(f"read {path.name} in place of {ICFG_FILES[0]}")
    if not any(r.split == "val" for r in col.records):
        notes.append(
            "the release has no validation split: train/test kept as released (the engine "
            "carves validation out of train)"
        )
    col.notes[:0] = notes
    source = _source("icfg-pedes", path, digest, ICFG_FILES)
    return col.annotations("icfg-pedes", root / IMAGE_DIR, source)


@register_format(
    "rstpreid",
    files=RSTP_FILES,
    sniff=lambda o: sniff(o) == "rstpreid",
    description="RSTPReid data_captions.json + imgs/",
)
def parse_rstp(root: Path, file: Path | None = None) -> Annotations:
    path = file or find_file(root, RSTP_FILES, "RSTPReid")
    rows, digest = _read(path, "img_path", split_optional=False)
    col = _collect(path, rows, "img_path", ("train", "val", "test"))
    return col.annotations(
        "rstpreid", root / IMAGE_DIR, _source("rstpreid", path, digest, RSTP_FILES)
    )
