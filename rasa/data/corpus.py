"""The pre-training corpus: a large SynthPEDES image–caption set, pairs only (issue #12).

RaSa starts every run from ALBEF, pre-trained on millions of web image–text pairs; this module
gives the synthetic world its stand-in. ``rasa data corpus --params params.yaml --out DIR``
plans SynthPEDES identities in the caption styles of every preset (``pretrain.corpus.ids``:
identities per preset, drawn with the corpus's own ``seed``), draws their images and writes
one canonical annotation table (:mod:`rasa.data.annotations`):

- ``DIR/annotations.json``: one record per image, ``pid`` = the image's own number: nothing
  ties two images of one synthetic person together (a web corpus has pairs, not identities),
  so the contrastive targets of pre-training treat every image as its own "identity"; split
  ``train`` or ``val`` (``pretrain.corpus.heldout``: a fraction of the images, with all their
  captions, held out for the pre-training curves);
- ``DIR/imgs/<preset>/...``: the images, drawn exactly as :mod:`rasa.data.synth` draws them;
- ``DIR/corpus_meta.json``: the spec, per-preset counts and what the disjointness filter
  removed.

Disjoint from fine-tuning: separate seeds do not guarantee it (a 2,000-identity set already
repeats captions of synth-cuhk-300), so every SynthPEDES dataset of ``data.datasets`` is
planned too (cheap: no drawing) and the corpus drops every image whose drawing inputs (the
identity's attributes and the image's condition: the same inputs draw the same picture) match
a fine-tuning image, and every caption whose cleaned text (:func:`rasa.data.text.clean_caption`)
is a fine-tuning caption; an image left without a caption is dropped with them. Datasets that
are not SynthPEDES (real releases) cannot be planned and are not filtered against.

Deterministic: the same spec gives the same bytes (:mod:`rasa.data.synth`'s guarantees).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rasa.data.annotations import Annotations, Record
from rasa.data.synth import _PRESET_CODE, PRESETS, SynthConfig, _plan, draw_images
from rasa.data.text import clean_caption
from rasa.errors import ConfigError, DataError
from rasa.io import write_json

META_FILE = "corpus_meta.json"
ANNOTATIONS = "annotations.json"
IMAGE_DIR = "imgs"
DATASET_NAME = "synthpedes-corpus"


@dataclass(frozen=True)
class CorpusSpec:
    """What the corpus holds: identities per preset, its seed, the held-out share of images and
    the fine-tuning sets it must be disjoint from (``(name, preset, ids, seed)`` each)."""

    ids: dict[str, int]
    seed: int = 1000
    heldout: float = 0.05
    exclude: tuple[tuple[str, str, int, int], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.ids:
            raise ConfigError("pretrain.corpus.ids: expected at least one preset: identities.")
        for preset, n in self.ids.items():
            if preset not in PRESETS:
                raise ConfigError(
                    f"pretrain.corpus.ids.{preset}: unknown SynthPEDES preset; known: "
                    f"{', '.join(PRESETS)}."
                )
            if int(n) < 3:
                raise ConfigError(f"pretrain.corpus.ids.{preset} = {n}; expected at least 3.")
        if not 0.0 < self.heldout < 0.5:
            raise ConfigError(
                f"pretrain.corpus.heldout = {self.heldout}; expected a fraction in (0, 0.5)."
            )

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CorpusSpec:
        """The ``pretrain.corpus`` section; every SynthPEDES set of ``data.datasets`` excluded."""
        section = (params.get("pretrain") or {}).get("corpus")
        if not section:
            raise ConfigError("params: no `pretrain.corpus` section (identities per preset).")
        exclude = tuple(
            (name, d["preset"], int(d["ids"]), int(d.get("seed", 0)))
            for name, d in sorted(params["data"]["datasets"].items())
            if d.get("source") == "synth"
        )
        return cls(
            ids={k: int(v) for k, v in section["ids"].items()},
            seed=int(section.get("seed", 1000)),
            heldout=float(section.get("heldout", 0.05)),
            exclude=exclude,
        )


def image_key(attributes: dict, condition: dict) -> str:
    """sha256 of what draws an image: the identity's attributes and the image's condition."""
    doc = json.dumps({"a": attributes, "c": condition}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode("utf-8")).hexdigest()


def plan_keys(plan: dict) -> tuple[set[str], set[str]]:
    """(image keys, cleaned captions) of a SynthPEDES plan."""
    attrs = {i["id"]: i["attributes"] for i in plan["identities"]}
    images = {image_key(attrs[img["id"]], img["condition"]) for img in plan["images"]}
    captions = {clean_caption(c["text"]) for c in plan["captions"]}
    return images, captions


def fine_tuning_keys(
    exclude: tuple[tuple[str, str, int, int], ...], cfg: SynthConfig
) -> tuple[set[str], set[str]]:
    """Image keys and cleaned captions of every fine-tuning set (planned, not drawn)."""
    images: set[str] = set()
    captions: set[str] = set()
    for _, preset, n, seed in exclude:
        i, c = plan_keys(_plan(preset, n, seed, cfg))
        images |= i
        captions |= c
    return images, captions


def plan_corpus(spec: CorpusSpec, cfg: SynthConfig | None = None) -> dict[str, Any]:
    """Every corpus image (drawing task and captions) after the disjointness filter; no drawing.

    Returns ``{"items": [...], "removed": {...}, "per_preset": {...}}``; an item is
    ``{"preset", "index", "path", "attributes", "condition", "captions", "key"}``.
    """
    cfg = cfg or SynthConfig()
    ft_images, ft_captions = fine_tuning_keys(spec.exclude, cfg)
    items: list[dict[str, Any]] = []
    removed = {"images": 0, "captions": 0, "images_without_captions": 0}
    per_preset: dict[str, dict[str, int]] = {}
    for preset in sorted(spec.ids):
        plan = _plan(preset, spec.ids[preset], spec.seed, cfg)
        attrs = {i["id"]: i["attributes"] for i in plan["identities"]}
        caps: dict[int, list[str]] = {}
        for c in plan["captions"]:
            caps.setdefault(c["image"], []).append(c["text"])
        kept_images = kept_captions = 0
        for img in plan["images"]:
            key = image_key(attrs[img["id"]], img["condition"])
            texts = caps.get(img["index"], [])
            if key in ft_images:
                removed["images"] += 1
                removed["captions"] += len(texts)
                continue
            keep = [t for t in texts if clean_caption(t) not in ft_captions]
            removed["captions"] += len(texts) - len(keep)
            if not keep:
                removed["images_without_captions"] += 1
                continue
            items.append({
                "preset": preset, "index": img["index"], "path": f"{preset}/{img['path']}",
                "attributes": attrs[img["id"]], "condition": img["condition"],
                "captions": keep, "key": key,
            })  # fmt: skip
            kept_images += 1
            kept_captions += len(keep)
        per_preset[preset] = {
            "identities": spec.ids[preset],
            "images": kept_images,
            "captions": kept_captions,
        }
    if not items:
        raise DataError("the pre-training corpus is empty after removing fine-tuning duplicates.")
    return {"items": items, "removed": removed, "per_preset": per_preset}


def heldout_mask(n: int, fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` images are held out: ``round(fraction * n)`` (at least 2) drawn with
    ``numpy.random.default_rng(seed)``."""
    k = max(2, round(fraction * n))
    if k >= n:
        raise DataError(f"corpus of {n} images: cannot hold out {k} and still train.")
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(seed).choice(n, size=k, replace=False)] = True
    return mask


def build_corpus(
    spec: CorpusSpec,
    out: str | Path,
    workers: int = 1,
    config: SynthConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Draw the corpus into ``out`` (see the module docstring); returns its meta (statistics)."""
    cfg = config or SynthConfig()
    out = Path(out)
    ours = (ANNOTATIONS, META_FILE, IMAGE_DIR)  # and the corpus's token caches (tokens-*)
    others = [p.name for p in out.iterdir() if p.name not in ours and not
              p.name.startswith("tokens-")] if out.is_dir() else []  # fmt: skip
    if others and not (out / META_FILE).is_file():
        raise DataError(
            f"{out}: directory holds {', '.join(sorted(others)[:3])} and no {META_FILE}; "
            "refusing to write a corpus into it. Choose an empty or new --out directory."
        )
    planned = plan_corpus(spec, cfg)
    items = planned["items"]
    held = heldout_mask(len(items), spec.heldout, spec.seed)
    shutil.rmtree(out / IMAGE_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [
        (it["index"], out / IMAGE_DIR / it["path"], it["attributes"], it["condition"],
         spec.seed, _PRESET_CODE[it["preset"]], cfg, PRESETS[it["preset"]].ext)
        for it in items
    ]  # fmt: skip
    draw_images(tasks, workers, "corpus", progress)
    records = [
        Record(it["path"], n, "val" if held[n] else "train", tuple(it["captions"]))
        for n, it in enumerate(items)
    ]
    ann = Annotations(
        DATASET_NAME,
        IMAGE_DIR,
        records,
        {"format": "synthpedes-corpus", "spec": _spec_dict(spec), "notes": "pid = image"},
    )
    ann.save(out / ANNOTATIONS)
    meta = {
        "generator": "synthpedes-corpus",
        "version": 1,
        "spec": _spec_dict(spec),
        "synth_config": asdict(cfg),
        "per_preset": planned["per_preset"],
        "removed_as_fine_tuning_duplicates": planned["removed"],
        "splits": ann.stats(),
        "image_keys_sha256": hashlib.sha256(
            "\n".join(it["key"] for it in items).encode("utf-8")
        ).hexdigest(),
    }
    write_json(out / META_FILE, meta)
    if progress:
        s = meta["splits"]
        print(
            f"corpus {out}: {s['train']['images']} train images / {s['train']['captions']} "
            f"captions, {s['val']['images']} held-out images / {s['val']['captions']} captions; "
            f"removed as fine-tuning duplicates: {planned['removed']}"
        )
    return meta


def _spec_dict(spec: CorpusSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["exclude"] = [list(e) for e in spec.exclude]
    return d
