"""SynthPEDES in the raw layouts of the Appendix A.3 benchmarks (RaSa Tables 5 and 6).

The presets ``flickr`` and ``coco`` write the Karpathy split JSON of Flickr30K / COCO
(``dataset_flickr30k.json`` / ``dataset_coco.json``: ``{"dataset", "images": [{"filename",
"filepath"?, "imgid", "split", "sentids", "sentences": [{"raw", "tokens", "imgid", "sentid"}],
"cocoid"?}]}``) with the images where the releases put them (``flickr30k-images/``; COCO's
``train2014/`` and ``val2014/`` in the root). One image per "identity" (each image is its own
class, as the paper says), five captions each, splits in the Karpathy proportions (Flickr30K
29,000 / 1,014 / 1,000; COCO 113,287 / 5,000 / 5,000 with 30,504 of the training images
``restval`` from ``val2014``).

The presets ``cub`` and ``flowers`` write the layout of Reed et al. (2016)'s ``cvpr2016_cub`` /
``cvpr2016_flowers``: ``text_c10/<class>/<image>.txt`` (ten captions, one per line, lower
case), ``trainclasses.txt``, ``valclasses.txt``, ``trainvalclasses.txt``, ``testclasses.txt``,
``allclasses.txt``, and the images ``images/<class>/<image>.jpg`` (CUB) or
``jpg/image_NNNNN.jpg`` (Flowers). A class is one synthetic identity with many images
(CUB 41-60 per class, mean ~56, real 58.9; Flowers 40-120, mean ~80, real 80.3); classes are
split disjointly in the paper's proportions (CUB 100 / 50 / 50, Flowers 62 / 20 / 20).

:mod:`rasa.data.synth` plans identities, images and captions for every preset; this module
only names the files and writes the annotation files (the images are drawn by the generator).
"""

from __future__ import annotations

import re
from pathlib import Path

from rasa.io import atomic_path, write_json

KARPATHY = {"flickr": "dataset_flickr30k.json", "coco": "dataset_coco.json"}
KARPATHY_DATASET = {"flickr": "flickr30k", "coco": "coco"}
REED = ("cub", "flowers")
LAYOUT_PRESETS = (*KARPATHY, *REED)
# where the images go, relative to the output folder ("." = COCO's train2014/, val2014/)
IMAGE_DIRS = {"flickr": "flickr30k-images", "coco": ".", "cub": "images", "flowers": "jpg"}
TEXT_DIR = "text_c10"
CLASS_FILES = (
    "trainclasses.txt",
    "valclasses.txt",
    "trainvalclasses.txt",
    "testclasses.txt",
    "allclasses.txt",
)
# COCO Karpathy split: 82,783 train + 30,504 restval = 113,287 training images
COCO_RESTVAL_SHARE = 30504 / 113287
# everything a layout preset may write (an earlier output is replaced: rasa.data.synth)
OUTPUT_DIRS = ("flickr30k-images", "train2014", "val2014", "images", "jpg", TEXT_DIR)
OUTPUT_FILES = (*KARPATHY.values(), *CLASS_FILES)


def raw_file(preset: str) -> str:
    """The annotation file (or folder) a layout preset writes, for the metadata."""
    return KARPATHY.get(preset, f"{TEXT_DIR}/")


def raw_splits(preset: str, splits: list[str]) -> list[str]:
    """Split value per identity as the raw file writes it: COCO's last training identities
    (the Karpathy share) are ``restval``; every other preset writes ``splits`` unchanged."""
    if preset != "coco":
        return list(splits)
    n_train = splits.count("train")
    n_rest = round(n_train * COCO_RESTVAL_SHARE) if n_train > 1 else 0
    return [
        "restval" if i >= n_train - n_rest and s == "train" else s for i, s in enumerate(splits)
    ]


def class_name(preset: str, pid: int, ident: dict, n_ids: int) -> str:
    """Reed-style class folder: ``007.Navy_Hoodie`` (CUB), ``class_00007`` (Flowers)."""
    if preset == "flowers":
        return f"class_{pid:05d}"
    up = ident["upper"]
    words = re.findall(r"[A-Za-z0-9]+", f"{up['colour']} {up['type']}")
    return f"{pid:0{max(3, len(str(n_ids)))}d}." + "_".join(w.capitalize() for w in words)


def image_path(preset: str, pid: int, k: int, raw_split: str, serial: int, cls: str) -> str:
    """File name in the style of the real release, relative to ``IMAGE_DIRS[preset]``."""
    if preset == "flickr":
        return f"{1000000000 + pid}.jpg"
    if preset == "coco":
        folder = "train2014" if raw_split == "train" else "val2014"
        return f"{folder}/COCO_{folder}_{pid + 1:012d}.jpg"
    if preset == "cub":
        return f"{cls}/{cls.partition('.')[2]}_{k + 1:04d}_{pid}.jpg"
    return f"image_{serial:05d}.jpg"


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", caption.lower())


def _captions_by_image(plan: dict) -> dict[int, list[dict]]:
    caps: dict[int, list[dict]] = {}
    for c in plan["captions"]:
        caps.setdefault(c["image"], []).append(c)
    return caps


def write_karpathy(preset: str, out: Path, plan: dict) -> None:
    """``dataset_flickr30k.json`` / ``dataset_coco.json`` (imgid = identity = image)."""
    caps = _captions_by_image(plan)
    images = []
    for img in plan["images"]:
        folder, _, filename = img["path"].rpartition("/")
        sentences = [
            {
                "imgid": img["id"],
                "raw": c["text"],
                "sentid": c["index"],
                "tokens": _tokens(c["text"]),
            }
            for c in caps[img["index"]]
        ]
        rec = {
            "filename": filename,
            "imgid": img["id"],
            "sentences": sentences,
            "sentids": [s["sentid"] for s in sentences],
            "split": img["raw_split"],
        }
        if preset == "coco":
            rec.update(filepath=folder, cocoid=img["id"] + 1)
        images.append(rec)
    doc = {"dataset": KARPATHY_DATASET[preset], "images": images}
    write_json(out / KARPATHY[preset], doc, indent=None)


def write_reed(preset: str, out: Path, plan: dict) -> None:
    """``text_c10/<class>/<image>.txt`` and the class split files of Reed et al."""
    caps = _captions_by_image(plan)
    for img in plan["images"]:
        stem = img["path"].rpartition("/")[2].rpartition(".")[0]
        dest = out / TEXT_DIR / img["class"] / f"{stem}.txt"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(dest) as tmp:
            tmp.write_bytes("".join(c["text"] + "\n" for c in caps[img["index"]]).encode())
    classes: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for ident in plan["identities"]:
        classes[ident["split"]].append(ident["class"])
    lists = {
        "trainclasses.txt": classes["train"],
        "valclasses.txt": classes["val"],
        "trainvalclasses.txt": classes["train"] + classes["val"],
        "testclasses.txt": classes["test"],
        "allclasses.txt": classes["train"] + classes["val"] + classes["test"],
    }
    for name, names in lists.items():
        with atomic_path(out / name) as tmp:
            tmp.write_bytes("".join(n + "\n" for n in names).encode())


def write_raw(preset: str, out: Path, plan: dict) -> None:
    """Write the annotation files of a layout preset (images are written by the generator)."""
    if preset in KARPATHY:
        write_karpathy(preset, out, plan)
    else:
        write_reed(preset, out, plan)
