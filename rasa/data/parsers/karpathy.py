"""Parser for the Karpathy splits of Flickr30K and COCO (RaSa Appendix A.3, Table 5).

``dataset_flickr30k.json`` / ``dataset_coco.json`` (Karpathy and Fei-Fei, 2015) hold
``{"dataset": ..., "images": [{"filename", "filepath"?, "split", "imgid", "sentences":
[{"raw", ...}], ...}]}``. Images are under ``images/`` (COCO: ``images/<filepath>/``; the
usual ``flickr30k-images/`` folder, or COCO's ``train2014/``/``val2014/`` directly in the root,
are accepted too). Each image is its own class, so the person id is ``imgid``; ``restval``
images count as training images, as in the paper (113K COCO training images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rasa.data.annotations import Annotations
from rasa.data.formats import register_format
from rasa.data.parsers.common import (
    Collector,
    expect_record,
    get_field,
    get_int,
    get_str,
    load_json,
    safe_relpath,
    type_name,
)
from rasa.errors import DataError, where

KARPATHY_FILES = ("dataset_flickr30k.json", "dataset_coco.json")
SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


def sniff(obj: Any) -> bool:
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        return False
    first = obj["images"][:1]
    return bool(first) and isinstance(first[0], dict) and "sentences" in first[0]


def _image_dir(root: Path, dataset: str) -> tuple[Path, str | None]:
    if (root / "images").is_dir():
        return root / "images", None
    if dataset == "flickr30k" and (root / "flickr30k-images").is_dir():
        return root / "flickr30k-images", "images found under flickr30k-images/"
    if (root / "train2014").is_dir() or (root / "val2014").is_dir():
        return root, "COCO image folders found directly in the root"
    return root / "images", None


def _captions(img: dict, path: Path, i: int) -> list[str]:
    sentences = get_field(img, "sentences", path, i, "a list of {'raw': caption} objects")
    if not isinstance(sentences, list):
        raise DataError(
            f"{where(path, i, 'sentences')}: expected a list of {{'raw': caption}} objects, "
            f"got {type_name(sentences)}."
        )
    out = []
    for j, sent in enumerate(sentences):
        if not isinstance(sent, dict) or not isinstance(sent.get("raw"), str):
            raise DataError(
                f"{where(path, i, 'sentences')}: item {j} should be an object with a string "
                f"'raw' caption, got {sent!r:.80}."
            )
        out.append(sent["raw"])
    return out


@register_format(
    "karpathy",
    files=KARPATHY_FILES,
    sniff=sniff,
    description="Flickr30K/COCO Karpathy split dataset_*.json + images/",
)
def parse_karpathy(root: Path, file: Path | None = None) -> Annotations:
    if file is None:
        present = [root / n for n in KARPATHY_FILES if (root / n).is_file()]
        if not present:
            raise DataError(
                f"{root}: no Karpathy split file; expected {' or '.join(KARPATHY_FILES)} here "
                "(images under images/)."
            )
        if len(present) > 1:
            raise DataError(
                f"{root}: both {present[0].name} and {present[1].name} are here; expected one "
                "dataset per folder (point --root at a folder with one of them)."
            )
        file = present[0]
    path = file
    obj, digest = load_json(path)
    if not isinstance(obj, dict) or not isinstance(obj.get("images"), list):
        raise DataError(
            f"{where(path, key='images')}: expected a JSON object with an 'images' list "
            f"(Karpathy split format), got {type_name(obj)}"
            + (f" with keys {sorted(obj)}" if isinstance(obj, dict) else "")
            + "."
        )
    dataset = obj.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        dataset = path.stem.removeprefix("dataset_")
    col = Collector(path, SPLITS, "filename")
    seen_ids: dict[int, int] = {}
    restval = 0
    for i, img in enumerate(obj["images"]):
        img = expect_record(img, path, i, "an image object")
        filename = get_str(img, "filename", path, i, "the image file name")
        filepath = img.get("filepath", "")
        if not isinstance(filepath, str):
            raise DataError(
                f"{where(path, i, 'filepath')}: expected a folder name string, got {filepath!r}."
            )
        image = safe_relpath(
            f"{filepath}/{filename}" if filepath else filename, path, i, "filename"
        )
        imgid = get_int(img, "imgid", path, i, "an integer image id")
        if imgid in seen_ids:
            raise DataError(
                f"{where(path, i, 'imgid')}: image id {imgid} already used by record "
                f"{seen_ids[imgid]}; expected a unique imgid per image."
            )
        seen_ids[imgid] = i
        raw_split = get_field(img, "split", path, i, "'train', 'restval', 'val' or 'test'")
        split = col.split(raw_split, i)
        restval += raw_split == "restval"
        col.add(i, image, imgid, split, _captions(img, path, i))
    image_dir, note = _image_dir(root, dataset)
    if note:
        col.notes.append(note)
    if restval:
        col.notes.append(f"{restval} 'restval' images counted as train (Karpathy split)")
    source = {"format": "karpathy", "file": path.name, "sha256": digest, "restval": restval}
    return col.annotations(dataset, image_dir, source)
