"""Parsers for CUB-200-2011 and Oxford Flowers-102 with the captions of Reed et al. (2016)
(RaSa Appendix A.3, Table 6: fine-grained retrieval, split by class).

Layout (as released with Reed et al.'s ``cvpr2016_cub`` / ``cvpr2016_flowers``):
``trainvalclasses.txt`` and ``testclasses.txt`` (one class folder name per line; optionally
``trainclasses.txt`` + ``valclasses.txt`` splitting trainval), ``text_c10/<class>/<image>.txt``
(one caption per line) and the images ``images/<class>/<image>.jpg`` (CUB) or
``jpg/<image>.jpg`` (Flowers). The person id is the class number (``001.Black_footed_Albatross``
→ 1, ``class_00001`` → 1; the 1-based sorted position if names carry no unique number).
Without train/val lists, all trainval classes are train (the engine carves validation).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tqdm import tqdm

from rasa.data.annotations import Annotations
from rasa.data.formats import register_format
from rasa.data.parsers.common import Collector
from rasa.errors import DataError

TEXT_DIR = "text_c10"
TRAINVAL, TEST, TRAIN, VAL = (
    "trainvalclasses.txt",
    "testclasses.txt",
    "trainclasses.txt",
    "valclasses.txt",
)
_NUMBER = re.compile(r"\d+")


def _flavour(root: Path) -> str:
    if (root / "jpg").is_dir():
        return "flowers"
    if (root / "images").is_dir():
        return "cub"
    names = [p.name for p in (root / TEXT_DIR).iterdir()] if (root / TEXT_DIR).is_dir() else []
    return "flowers" if names and all(n.startswith("class_") for n in names) else "cub"


def detect(root: Path, flavour: str) -> str | None:
    if (root / TEXT_DIR).is_dir() and (root / TRAINVAL).is_file() and _flavour(root) == flavour:
        return f"{TEXT_DIR}/"
    return None


def _read_classes(path: Path, digest: hashlib._Hash) -> dict[str, int]:
    """Class name → line number, refusing repeats."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected one class folder name per line.")
    data = path.read_bytes()
    digest.update(path.name.encode() + b"\0" + data + b"\0")
    out: dict[str, int] = {}
    for k, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in out:
            raise DataError(
                f"{path}, line {k}: class {name!r} already listed at line {out[name]}; "
                "expected each class once."
            )
        out[name] = k
    if not out:
        raise DataError(f"{path}: no class names; expected one class folder name per line.")
    return out


def _class_splits(root: Path, digest: hashlib._Hash) -> tuple[dict[str, str], list[str]]:
    trainval = _read_classes(root / TRAINVAL, digest)
    test = _read_classes(root / TEST, digest)
    for name, k in test.items():
        if name in trainval:
            raise DataError(
                f"{root / TEST}, line {k}: class {name!r} is also in {TRAINVAL} (line "
                f"{trainval[name]}); expected disjoint train/test classes."
            )
    split = {name: "test" for name in test}
    have = [(root / n).is_file() for n in (TRAIN, VAL)]
    if all(have):
        train = _read_classes(root / TRAIN, digest)
        val = _read_classes(root / VAL, digest)
        for file, names in ((TRAIN, train), (VAL, val)):
            for name, k in names.items():
                if name not in trainval or (file == VAL and name in train):
                    raise DataError(
                        f"{root / file}, line {k}: class {name!r} "
                        + ("is also in " + TRAIN if name in trainval else "is not in " + TRAINVAL)
                        + f"; expected {TRAIN} and {VAL} to split {TRAINVAL}."
                    )
        for name, k in trainval.items():
            if name not in train and name not in val:
                raise DataError(
                    f"{root / TRAINVAL}, line {k}: class {name!r} is in neither {TRAIN} nor "
                    f"{VAL}; expected them to split {TRAINVAL}."
                )
        split.update({n: "train" for n in train})
        split.update({n: "val" for n in val})
        return split, []
    if any(have):
        missing = TRAIN if not have[0] else VAL
        raise DataError(
            f"{root / missing}: file not found, but its partner is present; expected both "
            f"{TRAIN} and {VAL} (splitting {TRAINVAL}) or neither."
        )
    split.update({n: "train" for n in trainval})
    return split, [
        f"no {TRAIN}/{VAL}: all {len(trainval)} trainval classes are train (the engine carves "
        "validation out of train)"
    ]


def _class_ids(names: list[str]) -> dict[str, int]:
    numbers = [_NUMBER.search(n) for n in names]
    ids = [int(m.group()) if m else None for m in numbers]
    if None not in ids and len(set(ids)) == len(ids):
        return dict(zip(names, ids, strict=True))
    return {n: k for k, n in enumerate(sorted(names), start=1)}


def _parse(root: Path, flavour: str) -> Annotations:
    text_dir = root / TEXT_DIR
    if not text_dir.is_dir():
        raise DataError(
            f"{text_dir}: folder not found; expected the Reed et al. captions "
            f"({TEXT_DIR}/<class>/<image>.txt) with {TRAINVAL} and {TEST} beside it."
        )
    digest = hashlib.sha256()
    split_of, notes = _class_splits(root, digest)
    pid_of = _class_ids(sorted(split_of))
    col = Collector(text_dir, image_key="file")
    col.notes.extend(notes)
    unlisted = sorted(p.name for p in text_dir.iterdir() if p.is_dir() and p.name not in split_of)
    if unlisted:
        col.warn("unlisted_classes_ignored", unlisted[0], len(unlisted))
    for name in tqdm(
        sorted(split_of),
        desc="reading captions",
        unit="class",
        disable=len(split_of) < 50,
        leave=False,
    ):
        class_dir = text_dir / name
        files = sorted(class_dir.glob("*.txt")) if class_dir.is_dir() else []
        if not files:
            raise DataError(
                f"{class_dir}: no caption files; expected {TEXT_DIR}/{name}/<image>.txt for "
                "the class listed in the split files."
            )
        for f in files:
            data = f.read_bytes()
            digest.update(f"{name}/{f.name}".encode() + b"\0" + data + b"\0")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("utf-8", errors="replace")
                col.warn("undecodable_text_files", f"{name}/{f.name}")
            image = f"{name}/{f.stem}.jpg" if flavour == "cub" else f"{f.stem}.jpg"
            col.add(f"{name}/{f.name}", image, pid_of[name], split_of[name], text.splitlines())
    image_dir = root / ("images" if flavour == "cub" else "jpg")
    source = {
        "format": flavour,
        "file": f"{TEXT_DIR}/",
        "sha256": digest.hexdigest(),
        "sha256_of": "split files and every caption file (name and bytes, sorted)",
    }
    return col.annotations(flavour, image_dir, source)


@register_format(
    "cub",
    detect=lambda root: detect(root, "cub"),
    description="CUB-200-2011 with Reed et al. text_c10/ + images/",
)
def parse_cub(root: Path, file: Path | None = None) -> Annotations:
    return _parse(root, "cub")


@register_format(
    "flowers",
    detect=lambda root: detect(root, "flowers"),
    description="Oxford Flowers-102 with Reed et al. text_c10/ + jpg/",
)
def parse_flowers(root: Path, file: Path | None = None) -> Annotations:
    return _parse(root, "flowers")
