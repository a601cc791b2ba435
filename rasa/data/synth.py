"""SynthPEDES: a seeded procedural stand-in for CUHK-PEDES, ICFG-PEDES and RSTPReid (and, in
their layouts, for Flickr30K, COCO, CUB and Flowers: :mod:`rasa.data.synth_layouts`).

``rasa data synth --preset cuhk|icfg|rstp --ids N --seed S --out DIR`` draws pedestrian crops
with Pillow from attribute sets (``synth_attrs``, ``synth_draw``), writes captions from the
attributes each image shows (``synth_caption``), and exports the result in the real dataset's
own raw format (``reid_raw.json`` / ``ICFG-PEDES.json`` / ``data_captions.json`` + ``imgs/``),
so the real parsers read it. ``synthpedes_meta.json`` records every identity's attributes,
every image's view/occlusion/visible attributes, and for every caption the attributes it
mentions and the other images of the same person for which it is a WEAK positive pair (it
mentions something that image does not show: RaSa §1 Fig. 1, §3.2 "strong and weak positive
pairs"). Its own image is always a strong pair.

Presets (paper Appendix A.1 statistics, scaled to ``--ids``):

======  ======================  ================  ===========================  ===========
preset  images per identity     captions / image  split by identity (paper)    caption len
======  ======================  ================  ===========================  ===========
cuhk    2-5, mean 3.1 (real)    2                 11,003 / 1,000 / 1,000       ~23 words
icfg    5-10, mean 7.5 (real    1                 3,102 / 0 / 1,000 (no val)   ~37 words
        13.3: fewer to keep the
        set small)
rstp    5 (5 cameras)           2                 3,701 / 200 / 200            >= 23 words
flickr  1 (an image = a class)  5                 29,000 / 1,014 / 1,000       ~12 words
coco    1 (an image = a class)  5                 113,287 / 5,000 / 5,000      ~10 words
cub     41-60 (real 58.9)       10                100 / 50 / 50 classes        ~15 words
flowers 40-120 (real 80.3)      10                62 / 20 / 20 classes         ~14 words
======  ======================  ================  ===========================  ===========

The last four (paper Appendix A.3, Tables 5-6) write Karpathy JSON and Reed et al.'s
``text_c10`` layout (:mod:`rasa.data.synth_layouts`); ``--ids`` counts images (flickr, coco)
or classes (cub, flowers). Their images are the same pedestrian drawings.

Identities are numbered in split order (train first, then val, then test), as the standard
CUHK-PEDES split by sorted id. Val/test get at least 2 identities each when ``--ids >= 10``
(1 below), so retrieval on a tiny set is still meaningful.

Knobs (see :class:`SynthConfig`): image size (default 96x240, aspect 1:2.5 like re-id crops),
drawing supersampling, palette skew (higher = more identities share colours and garments),
occlusion rate, visibility threshold (an attribute is hidden when less than this fraction of
its box is in the crop and not occluded), sensor noise, JPEG quality. The attribute palettes
and probabilities live in ``synth_attrs``; caption style per preset in :data:`PRESETS`.

Determinism: every identity, image condition and caption comes from a NumPy generator seeded
by ``(seed, preset, id[, image])``, so the output does not depend on ``workers``; JSON is
written with sorted keys, PNG with a fixed compress level, JPEG with fixed quality and 4:2:0
subsampling (byte-identical for one libjpeg build). No timestamps anywhere.
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rasa.data.synth_attrs import CAMERAS, attribute_value, sample_condition, sample_identity
from rasa.data.synth_caption import KEYS, PRIORITY, CaptionStyle, compose, select_mentions
from rasa.data.synth_draw import render, visibility
from rasa.data.synth_layouts import (
    IMAGE_DIRS,
    LAYOUT_PRESETS,
    class_name,
    image_path,
    raw_file,
    raw_splits,
    write_raw,
)
from rasa.errors import ConfigError, DataError
from rasa.io import atomic_path, write_json

META_FILE = "synthpedes_meta.json"
RAW_FILES = {"cuhk": "reid_raw.json", "icfg": "ICFG-PEDES.json", "rstp": "data_captions.json"}
MIN_IDS = 3


@dataclass(frozen=True)
class SynthConfig:
    """Generator knobs shared by all presets."""

    image_size: tuple[int, int] = (96, 240)  # (width, height)
    draw_scale: int = 2  # draw this many times larger, then box-filter down (anti-aliasing)
    palette_skew: float = 1.7  # weights ** skew: > 1 concentrates identities on common items
    occlusion_scale: float = 1.0  # > 1 makes occluders and crops more frequent
    visible_min: float = 0.4  # an attribute counts as shown when >= this fraction is visible
    noise: float = 2.0  # Gaussian sensor noise (grey levels)
    jpeg_quality: int = 90
    png_compress_level: int = 1  # zlib level: 1 is 2-3x faster than 6, files ~15% larger


@dataclass(frozen=True)
class Preset:
    name: str
    images_per_id: tuple[int, ...]
    images_prob: tuple[float, ...]
    captions_per_image: int
    split_sizes: tuple[int, int, int]  # the real dataset's identities per train/val/test
    ext: str
    style: CaptionStyle
    distinct_cameras: bool = False
    view_mention: float = 1.0  # scales the chance of a "walking towards the camera" clause
    notes: str = ""
    extra: dict = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "cuhk": Preset(
        "cuhk",
        (2, 3, 4, 5),
        (0.35, 0.3, 0.25, 0.1),
        2,
        (11003, 1000, 1000),
        "png",
        CaptionStyle(mention_scale=0.9, verbose=0.3, min_words=17),
    ),
    "icfg": Preset(
        "icfg",
        (5, 6, 7, 8, 9, 10),
        (1 / 6,) * 6,
        1,
        (3102, 0, 1000),
        "jpg",
        CaptionStyle(mention_scale=1.4, verbose=0.9, min_words=33),
        notes="images per identity 5-10 (real: 13.3 on average)",
    ),
    "rstp": Preset(
        "rstp",
        (5,),
        (1.0,),
        2,
        (3701, 200, 200),
        "jpg",
        CaptionStyle(mention_scale=1.15, verbose=0.55, min_words=23),
        distinct_cameras=True,
    ),
    "flickr": Preset(
        "flickr",
        (1,),
        (1.0,),
        5,
        (29000, 1014, 1000),
        "jpg",
        CaptionStyle(mention_scale=0.45, verbose=0.1, min_words=8, max_words=30),
        view_mention=0.5,
        notes="one image per identity (each image is its own class, as in Karpathy splits)",
    ),
    "coco": Preset(
        "coco",
        (1,),
        (1.0,),
        5,
        (113287, 5000, 5000),
        "jpg",
        CaptionStyle(mention_scale=0.35, verbose=0.05, min_words=7, max_words=25),
        view_mention=0.5,
        notes="one image per identity; the last training images are 'restval' (val2014)",
    ),
    "cub": Preset(
        "cub",
        (41, 45, 50, 55, 59, 60),
        (0.05, 0.05, 0.1, 0.1, 0.2, 0.5),
        10,
        (100, 50, 50),
        "jpg",
        CaptionStyle(mention_scale=0.7, verbose=0.2, min_words=10, max_words=40),
        notes="a class is one identity; --ids counts classes; captions lower case",
        extra={"lowercase": True},
    ),
    "flowers": Preset(
        "flowers",
        (40, 60, 80, 100, 120),
        (0.2, 0.2, 0.2, 0.2, 0.2),
        10,
        (62, 20, 20),
        "jpg",
        CaptionStyle(mention_scale=0.6, verbose=0.2, min_words=9, max_words=40),
        notes="a class is one identity; --ids counts classes; captions lower case",
        extra={"lowercase": True},
    ),
}
# the `rasa data parse --format` that reads each preset's output ("auto" detects it too)
PARSE_FORMATS = {
    "cuhk": "cuhk-pedes",
    "icfg": "icfg-pedes",
    "rstp": "rstpreid",
    "flickr": "karpathy",
    "coco": "karpathy",
    "cub": "cub",
    "flowers": "flowers",
}
_PRESET_CODE = {"cuhk": 1, "icfg": 2, "rstp": 3, "flickr": 4, "coco": 5, "cub": 6, "flowers": 7}


def split_sizes(preset: str, n_ids: int) -> tuple[int, int, int]:
    """Identities per train/val/test: the paper's proportions, eval splits at least 2 each
    from 10 identities up (1 below), train the rest (at least 1)."""
    if n_ids < MIN_IDS:
        raise ConfigError(
            f"--ids {n_ids}: SynthPEDES needs at least {MIN_IDS} identities (one each for "
            "train, val and test); use e.g. --ids 12 for a tiny set."
        )
    real = PRESETS[preset].split_sizes
    total = sum(real)
    floor = 2 if n_ids >= 10 else 1
    n_val = max(floor, round(n_ids * real[1] / total)) if real[1] else 0
    n_test = max(floor, round(n_ids * real[2] / total))
    return n_ids - n_val - n_test, n_val, n_test


def attribute_keys(ident: dict) -> set[str]:
    """Caption keys this identity has at all (``view`` excluded)."""
    keys = {"hair", "upper", "lower", "shoes"}
    keys |= {k for k in ("hat", "scarf", "carry", "umbrella") if ident[k] is not None}
    if ident["glasses"]:
        keys.add("glasses")
    up = ident["upper"]
    if up["pattern"] != "plain":
        keys.add("upper_pattern")
    keys |= {f"upper_{k}" for k in ("print", "inner") if up[k] is not None}
    return keys


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*", caption.lower())


def _image_path(
    preset: str, pid: int, k: int, split: str, cond: dict, serial: int, source: str
) -> str:
    """File name in the style of the real release (relative to ``imgs/``)."""
    if preset == "cuhk":
        if source == "CUHK01":
            return f"CUHK01/{pid:04d}{k + 1:03d}.png"
        if source == "CUHK03":
            return f"CUHK03/{pid}_{cond['camera']}_{k + 1}.png"
        folder = "train_query" if split == "train" else "test_query"
        return f"{folder}/p{pid}_s{serial}.png"
    if preset == "icfg":
        folder = "train" if split == "train" else "test"
        return (
            f"{folder}/{pid:04d}/{pid:04d}_{cond['camera']:03d}_{k + 1:02d}_0303"
            f"{cond['time']}_{serial % 10000:04d}_1.jpg"
        )
    return f"{pid:04d}_c{cond['camera']}_{serial % 10000:04d}.jpg"


def _plan(preset: str, n_ids: int, seed: int, cfg: SynthConfig) -> dict:
    """Sample every identity, image condition and caption (cheap; no drawing)."""
    p = PRESETS[preset]
    sizes = split_sizes(preset, n_ids)
    splits = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    layout = preset in LAYOUT_PRESETS
    raw_split = raw_splits(preset, splits)
    first_id = 0 if preset in ("rstp", "flickr", "coco") else 1
    identities, images, captions = [], [], []
    serial = 0
    for n, split in enumerate(splits):
        pid = first_id + n
        rng = np.random.default_rng([seed, _PRESET_CODE[preset], pid])
        ident = sample_identity(rng, cfg.palette_skew)
        count = int(rng.choice(p.images_per_id, p=p.images_prob))
        source = str(rng.choice(["CUHK01", "CUHK03", "query", "query"]))
        cams = (
            rng.permutation(CAMERAS)[:count] + 1
            if p.distinct_cameras
            else rng.integers(1, CAMERAS + 1, count)
        )
        identities.append({"id": pid, "split": split, "attributes": ident})
        cls = class_name(preset, pid, ident, n_ids) if preset in ("cub", "flowers") else None
        if cls is not None:
            identities[-1]["class"] = cls
        own = []
        for k in range(count):
            cond = sample_condition(rng, int(cams[k]), cfg.occlusion_scale)
            frac = visibility(ident, cond, cfg.image_size)
            visible = sorted(key for key, f in frac.items() if f >= cfg.visible_min)
            serial += 1
            path = (
                image_path(preset, pid, k, raw_split[n], serial, cls or "")
                if layout
                else _image_path(preset, pid, k, split, cond, serial, source)
            )
            images.append(
                {
                    "index": len(images),
                    "id": pid,
                    "split": split,
                    "condition": cond,
                    "path": path,
                    "visible": visible,
                    "visible_fraction": frac,
                    "hidden": sorted(attribute_keys(ident) - set(visible)),
                }
            )
            if layout:
                images[-1].update(raw_split=raw_split[n], **({"class": cls} if cls else {}))
            own.append(images[-1])
        weak_of = _weak_finder(own)
        for img in own:
            for _ in range(p.captions_per_image):
                vis = set(img["visible"])
                with_view = rng.random() < p.view_mention
                keys = select_mentions(vis, p.style, rng, with_view=with_view)
                spare = [k for k in reversed(PRIORITY) if k in vis and k not in keys]
                text, used = compose(ident, keys, img["condition"]["view"], p.style, rng, spare)
                if p.extra.get("lowercase"):
                    text = text.lower()
                weak = weak_of(used, img)
                captions.append(
                    {
                        "index": len(captions),
                        "image": img["index"],
                        "id": pid,
                        "split": img["split"],
                        "text": text,
                        "mentions": used,
                        "weak_images": weak,
                    }
                )
    return {"identities": identities, "images": images, "captions": captions}


def _weak_finder(own: list[dict]):
    """``weak(mentions, img)``: indices of the other images in ``own`` for which a caption of
    ``img`` mentioning ``mentions`` is weak (:func:`_is_weak`), ascending. Images that show the
    same attributes from the same view are tested once (CUB/Flowers classes have ~60 images)."""
    groups: dict[tuple, list[dict]] = {}
    for o in own:
        groups.setdefault((tuple(o["visible"]), o["condition"]["view"]), []).append(o)

    def weak(mentions: list[str], img: dict) -> list[int]:
        out = [
            o["index"]
            for members in groups.values()
            if _is_weak(mentions, img, members[0])
            for o in members
            if o is not img
        ]
        return sorted(out)

    return weak


def _is_weak(mentions: list[str], own: dict, other: dict) -> bool:
    """A caption of ``own`` is weak for ``other`` if it mentions what ``other`` does not show."""
    shown = set(other["visible"])
    for key in mentions:
        if key == "view":
            if other["condition"]["view"] != own["condition"]["view"]:
                return True
        elif key not in shown:
            return True
    return False


def _draw_one(task: tuple) -> int:
    index, dest, ident, cond, seed, code, cfg, ext = task
    rng = np.random.default_rng([seed, code, cond["camera"], index, 7])
    img = render(ident, cond, cfg.image_size, seed, rng, cfg.draw_scale, cfg.noise)
    buf = BytesIO()
    if ext == "png":
        img.save(buf, format="PNG", compress_level=cfg.png_compress_level)
    else:
        img.save(buf, format="JPEG", quality=cfg.jpeg_quality, subsampling=2, optimize=False)
    with atomic_path(dest) as tmp:
        tmp.write_bytes(buf.getvalue())
    return index


def draw_images(tasks: list[tuple], workers: int, desc: str, progress: bool) -> None:
    """Draw every :func:`_draw_one` task, in ``workers`` spawned processes when > 1, with a
    tqdm bar (images are independent: the same bytes in any order)."""
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=not progress)
    if workers <= 1:
        for t in tasks:
            _draw_one(t)
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_draw_one, tasks, chunksize=16):
                bar.update()
    bar.close()


def _raw_records(preset: str, plan: dict) -> list[dict]:
    caps: dict[int, list[str]] = {}
    for c in plan["captions"]:
        caps.setdefault(c["image"], []).append(c["text"])
    out = []
    for img in plan["images"]:
        texts = caps[img["index"]]
        if preset == "rstp":
            out.append(
                {"id": img["id"], "img_path": img["path"], "captions": texts, "split": img["split"]}
            )
        else:
            out.append(
                {
                    "split": img["split"],
                    "captions": texts,
                    "file_path": img["path"],
                    "processed_tokens": [_tokens(t) for t in texts],
                    "id": img["id"],
                }
            )
    return out


def statistics(plan: dict) -> dict:
    """Per split ids/images/captions, weak-positive share, captions per image, words."""
    out: dict = {"splits": {}}
    for split in ("train", "val", "test"):
        imgs = [i for i in plan["images"] if i["split"] == split]
        if imgs:
            out["splits"][split] = {
                "ids": len({i["id"] for i in imgs}),
                "images": len(imgs),
                "captions": sum(1 for c in plan["captions"] if c["split"] == split),
            }
    per_id: dict[int, int] = {}
    for img in plan["images"]:
        per_id[img["id"]] = per_id.get(img["id"], 0) + 1
    cross = sum(per_id[c["id"]] - 1 for c in plan["captions"])
    weak = sum(len(c["weak_images"]) for c in plan["captions"])
    words = [len(c["text"].split()) for c in plan["captions"]]
    mentions = {k: 0 for k in KEYS}
    for c in plan["captions"]:
        for k in c["mentions"]:
            mentions[k] += 1
    out.update(
        {
            "ids": len(per_id),
            "images": len(plan["images"]),
            "captions": len(plan["captions"]),
            "images_per_id": round(len(plan["images"]) / len(per_id), 3),
            "captions_per_image": round(len(plan["captions"]) / len(plan["images"]), 3),
            "mean_words": round(float(np.mean(words)), 2),
            "max_words": int(max(words)),
            "cross_image_pairs": cross,
            "weak_pairs": weak,
            "weak_share": round(weak / cross, 4) if cross else 0.0,
            "captions_weak_somewhere": round(
                sum(1 for c in plan["captions"] if c["weak_images"]) / len(plan["captions"]), 4
            ),
            "mention_rate": {k: round(v / len(plan["captions"]), 3) for k, v in mentions.items()},
            "eval_ambiguity": _ambiguity(plan),
        }
    )
    return out


def _ambiguity(plan: dict) -> dict[str, float]:
    """Per eval split: mean number of the split's identities whose attributes agree with all
    a caption mentions (1.0 = every caption singles out its person by attributes alone)."""
    out = {}
    attrs = {i["id"]: i["attributes"] for i in plan["identities"]}
    for split in ("val", "test"):
        ids = [i["id"] for i in plan["identities"] if i["split"] == split]
        caps = [c for c in plan["captions"] if c["split"] == split]
        if not caps:
            continue
        counts: dict[tuple[str, ...], Counter] = {}
        total = 0
        for c in caps:
            keys = tuple(k for k in c["mentions"] if k != "view")
            if keys not in counts:
                counts[keys] = Counter(
                    repr([attribute_value(attrs[i], k) for k in keys]) for i in ids
                )
            total += counts[keys][repr([attribute_value(attrs[c["id"]], k) for k in keys])]
        out[split] = round(total / len(caps), 3)
    return out


def _check_out(out: Path) -> None:
    """``out`` may be absent, an empty folder or an earlier SynthPEDES output (replaced);
    anything else is refused."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: --out must be a directory, but a file is there.")
    if out.is_dir() and any(out.iterdir()) and not (out / META_FILE).is_file():
        raise DataError(
            f"{out}: directory is not empty and holds no {META_FILE}, so it is not an "
            "earlier SynthPEDES output; refusing to write into it. Choose an empty or new "
            "--out directory."
        )


def _staging_dir(out: Path) -> Path:
    """A new folder beside ``out`` to write into (``.<name>.<random>.partial``); the leftovers
    of runs that were killed before they could clean up are removed first."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.*.partial"):
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _swap_in(staged: Path, out: Path) -> None:
    """Put the complete ``staged`` folder at ``out`` (an earlier output there is replaced)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.{staged.name.split('.')[-2]}.replaced.partial")
        out.rename(old)
    staged.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def generate(
    preset: str,
    n_ids: int,
    seed: int,
    out: str | Path,
    workers: int = 1,
    config: SynthConfig | None = None,
    progress: bool = True,
) -> dict:
    """Write a SynthPEDES dataset in ``preset``'s raw format to ``out``; return statistics.

    Atomic: everything is written into a folder beside ``out`` that is renamed onto it at the
    end, so an interrupted run (a kill, a full disk) leaves ``out`` as it was, and the same
    command simply runs again.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown SynthPEDES preset {preset!r}; known: {', '.join(PRESETS)}.")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected a positive number of processes.")
    cfg = config or SynthConfig()
    out = Path(out)
    plan = _plan(preset, n_ids, seed, cfg)
    _check_out(out)
    try:
        staged = _staging_dir(out)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(out)) from exc
    try:
        stats = _write(preset, seed, cfg, plan, staged, workers, progress)
        meta = {
            "generator": "synthpedes",
            "version": 1,
            "preset": preset,
            "seed": seed,
            "n_ids": n_ids,
            "raw_file": RAW_FILES.get(preset) or raw_file(preset),
            "config": asdict(cfg),
            "preset_config": asdict(PRESETS[preset]),
            "stats": stats,
            **plan,
        }
        write_json(staged / META_FILE, meta, indent=None)
        _swap_in(staged, out)
    except BaseException as exc:
        shutil.rmtree(staged, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(out)) from exc
        raise
    if progress:
        _print_stats(preset, stats)
    return stats


def _write(preset, seed, cfg, plan, out: Path, workers: int, progress: bool) -> dict:
    """Draw the images and write the raw annotation files of ``plan`` into ``out``."""
    ext = PRESETS[preset].ext
    attrs = {i["id"]: i["attributes"] for i in plan["identities"]}
    tasks = [
        (
            img["index"],
            out / IMAGE_DIRS.get(preset, "imgs") / img["path"],
            attrs[img["id"]],
            img["condition"],
            seed,
            _PRESET_CODE[preset],
            cfg,
            ext,
        )
        for img in plan["images"]
    ]
    draw_images(tasks, workers, f"synth {preset}", progress)
    stats = statistics(plan)
    if preset in LAYOUT_PRESETS:
        write_raw(preset, out, plan)
    else:
        write_json(out / RAW_FILES[preset], _raw_records(preset, plan), indent=None)
    return stats


def _print_stats(preset: str, stats: dict) -> None:
    split = ", ".join(
        f"{k} {v['ids']} ids/{v['images']} images/{v['captions']} captions"
        for k, v in stats["splits"].items()
    )
    print(
        f"SynthPEDES {preset}: {split}; {stats['captions_per_image']} captions per image, "
        f"{stats['mean_words']} words per caption, weak-positive share "
        f"{stats['weak_share']:.3f} of {stats['cross_image_pairs']} same-identity "
        "cross-image pairs"
    )
