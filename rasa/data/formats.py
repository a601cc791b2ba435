"""Raw dataset formats → the canonical annotation table (``rasa data parse``).

One registry of formats (``@register_format``): CUHK-PEDES, ICFG-PEDES, RSTPReid (RaSa
paper, Appendix A.1), Flickr30K/COCO Karpathy splits, CUB and Flowers (Appendix A.3). The
parsers live in :mod:`rasa.data.parsers`; each is ``parse(root, file=None) -> Annotations``.

Detection (``--format auto``, :func:`detect_format`): every format names the files that mark
it (its aliases included: ``caption_all.json`` for CUHK-PEDES, ``ICFG_PEDES.json`` for
ICFG-PEDES) or a test on the folder (``text_c10/`` + ``trainvalclasses.txt``, with ``jpg/``
→ Flowers, else CUB). Exactly one match wins; two or more is an error asking for
``--format``. With no match, the top-level ``*.json`` files are read (JSON only) and their
structure decides: a list of ``{img_path, id, captions}`` → RSTPReid; of ``{file_path, id,
captions}`` → ICFG-PEDES when every entry has one caption and only train/test splits, else
CUHK-PEDES; an object with an ``images`` list of ``{sentences}`` → Karpathy.

Validation — an error (:class:`~rasa.errors.DataError`, naming file, record, key and what
was expected) stops the parse when the data cannot be trusted; a counted warning (printed;
counts in ``source["warnings"]``, the first place of each in ``source["warning_details"]``)
lets the parse go on where a user would rather continue:

* error: file missing, not JSON, wrong top-level type; a record not an object; a key missing
  or of the wrong type (``id``/``imgid`` must be integers, ``captions`` a list of strings,
  paths strings); an image path that is absolute or climbs out with ``..``; an unknown split
  value; ``split`` in some CUHK entries but not others; an identity (or class) in two splits;
  the same image listed twice with different id/split/captions; a repeated Karpathy
  ``imgid``; CUB/Flowers class lists that overlap or do not partition trainval, a listed class
  with no caption files; missing image files (unless ``--no-check-images``): all are counted
  and the first few named; no usable record at all.
* counted warning: a caption empty after ``strip()`` (dropped); an image whose captions are
  all empty (dropped); an exact repeat of an earlier entry (dropped); a CUB/Flowers caption
  file that is not UTF-8 (bad bytes replaced); a ``text_c10`` class folder in no split list
  (ignored).

Notes (in ``source["notes"]`` and printed): the alias file read, a generated CUHK-PEDES split
(no ``split`` field: first 11,003 sorted ids train, next 1,000 val, last 1,000 test, scaled
for other sizes), ICFG-PEDES having no validation split, Karpathy ``restval`` → train.

Per-split statistics are printed beside :data:`PAPER_STATS` and stored in
``source["stats"]`` so a user sees at once whether their copy is complete. ``source`` also
holds the format, the file read and its sha256 (CUB/Flowers: of the split and caption files).
:func:`parse_to_file` writes the table atomically, with ``image_root`` relative to the
table's folder (so data and annotations can move together), absolute when they share no
folder below the file-system root.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rasa.data.annotations import SPLITS, Annotations
from rasa.errors import ConfigError, DataError

Parser = Callable[..., Annotations]

# Expected figures per dataset, in ONE place. None = not given by the source.
A1 = "RaSa paper, Appendix A.1"
A3 = "RaSa paper, Appendix A.3 (exact Karpathy-split counts from the split files)"
PAPER_STATS: dict[str, dict[str, Any]] = {
    "cuhk-pedes": {"source": A1, "splits": {
        "train": {"ids": 11003, "images": 34054, "captions": 68126},
        "val": {"ids": 1000, "images": 3078, "captions": 6158},
        "test": {"ids": 1000, "images": 3074, "captions": 6156},
        "total": {"ids": 13003, "images": 40206, "captions": 80440}}},
    "icfg-pedes": {"source": A1 + " (1 text per image)", "splits": {
        "train": {"ids": 3102, "images": 34674, "captions": 34674},
        "test": {"ids": 1000, "images": 19848, "captions": 19848},
        "total": {"ids": 4102, "images": 54522, "captions": 54522}}},
    "rstpreid": {"source": A1 + " (5 images per id, 2 texts per image)", "splits": {
        "train": {"ids": 3701, "images": 18505, "captions": 37010},
        "val": {"ids": 200, "images": 1000, "captions": 2000},
        "test": {"ids": 200, "images": 1000, "captions": 2000},
        "total": {"ids": 4101, "images": 20505, "captions": 41010}}},
    "flickr30k": {"source": A3 + "; 5 captions per image", "splits": {
        "train": {"ids": 29000, "images": 29000, "captions": 145000},
        "val": {"ids": 1014, "images": 1014, "captions": 5070},
        "test": {"ids": 1000, "images": 1000, "captions": 5000},
        "total": {"ids": 31014, "images": 31014, "captions": 155070}}},
    "coco": {"source": A3 + "; ~5 captions per image, train includes restval", "splits": {
        "train": {"ids": 113287, "images": 113287, "captions": None},
        "val": {"ids": 5000, "images": 5000, "captions": None},
        "test": {"ids": 5000, "images": 5000, "captions": None},
        "total": {"ids": 123287, "images": 123287, "captions": None}}},
    "cub": {"source": "RaSa paper, Appendix A.3 (ids = classes; 10 captions per image)",
            "splits": {
        "train": {"ids": 100, "images": None, "captions": None},
        "val": {"ids": 50, "images": None, "captions": None},
        "test": {"ids": 50, "images": None, "captions": None},
        "total": {"ids": 200, "images": 11788, "captions": 117880}}},
    "flowers": {"source": "RaSa paper, Appendix A.3 (ids = classes; 10 captions per image)",
                "splits": {
        "train": {"ids": 62, "images": None, "captions": None},
        "val": {"ids": 20, "images": None, "captions": None},
        "test": {"ids": 20, "images": None, "captions": None},
        "total": {"ids": 102, "images": 8189, "captions": 81890}}},
}  # fmt: skip


# How a dataset is evaluated (rasa.engine.evaluate): text->image retrieval always; "both" adds
# image->text (paper Table 5), "class" the class-level protocol of Reed et al. (Table 6).
PROTOCOLS = ("t2i", "both", "class")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset of the paper: the names it goes by, how it is evaluated and labelled.

    ``name`` is what its parser writes as the annotation table's ``dataset`` (and its key in
    :data:`PAPER_STATS`); ``key`` the paper's short name used by the report and
    ``rasa/report/paper_results.csv``; ``match`` the substring of a params.yaml dataset name
    that means this dataset (``synth-cuhk-300`` -> ``cuhk``; first declared match wins).
    """

    name: str
    key: str
    label: str  # column / caption label in the report's tables
    format: str  # the registered raw format that reads it
    protocol: str = "t2i"  # one of PROTOCOLS
    match: str = ""  # defaults to ``key``

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"dataset {self.name!r}: protocol {self.protocol!r} not in {PROTOCOLS}"
            )
        if not self.match:
            object.__setattr__(self, "match", self.key)


# Every dataset of the paper, in report order (a new dataset: its parser module and one line here).
DATASETS: tuple[DatasetInfo, ...] = (
    DatasetInfo("cuhk-pedes", "cuhk", "CUHK-PEDES", "cuhk-pedes"),
    DatasetInfo("icfg-pedes", "icfg", "ICFG-PEDES", "icfg-pedes"),
    DatasetInfo("rstpreid", "rstp", "RSTPReid", "rstpreid"),
    DatasetInfo("flickr30k", "flickr30k", "Flickr30K (1K test)", "karpathy", "both", "flickr"),
    DatasetInfo("coco", "coco", "COCO (5K test)", "karpathy", "both"),
    DatasetInfo("cub", "cub", "CUB", "cub", "class"),
    DatasetInfo("flowers", "flowers", "Flowers", "flowers", "class", "flower"),
)


def datasets_with_protocol(protocol: str) -> tuple[str, ...]:
    """Annotation-table names of the datasets evaluated with ``protocol``."""
    return tuple(d.name for d in DATASETS if d.protocol == protocol)


def dataset_key(name: str | None) -> str | None:
    """The paper's short name of a dataset name (``synth-cuhk`` and ``cuhk-pedes`` -> ``cuhk``)."""
    if not name:
        return None
    low = str(name).lower()
    return next((d.key for d in DATASETS if d.match in low), None)


@dataclass(frozen=True)
class Format:
    """A registered raw format: its parser and how to recognise it."""

    name: str
    parse: Parser
    files: tuple[str, ...] = ()  # marker files, preferred first
    aliases: tuple[str, ...] = ()  # other names of the same file (older releases, typos)
    sniff: Callable[[Any], bool] | None = None  # JSON structure test for other file names
    detect: Callable[[Path], str | None] | None = None  # folder test; returns what matched
    description: str = ""

    def match(self, root: Path) -> str | None:
        if self.detect is not None:
            return self.detect(root)
        return next((f for f in self.files + self.aliases if (root / f).is_file()), None)


FORMATS: dict[str, Format] = {}


def register_format(
    name: str,
    *,
    files: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    sniff: Callable[[Any], bool] | None = None,
    detect: Callable[[Path], str | None] | None = None,
    description: str = "",
) -> Callable[[Parser], Parser]:
    """Register ``parse(root, file=None) -> Annotations`` under ``name`` (unique)."""

    def wrap(parse: Parser) -> Parser:
        if name in FORMATS or name == "auto":
            raise ValueError(f"dataset format {name!r} is already registered (or reserved)")
        FORMATS[name] = Format(
            name, parse, tuple(files), tuple(aliases), sniff, detect, description
        )
        return parse

    return wrap


def _builtin() -> dict[str, Format]:
    import rasa.data.parsers  # noqa: F401  (registers the built-in formats)

    return FORMATS


def list_formats() -> list[str]:
    return sorted(_builtin())


def get_format(name: str) -> Format:
    formats = _builtin()
    if name not in formats:
        raise ConfigError(
            f"unknown dataset format {name!r}; known formats: {', '.join(sorted(formats))} "
            "(or 'auto' to detect it)."
        )
    return formats[name]


@dataclass(frozen=True)
class Detection:
    name: str  # format
    file: Path | None  # the file to parse (None: the parser finds its files)
    how: str  # what was found, for the message


def detect_format(root: str | Path) -> Detection:
    """Find the format of the dataset in ``root`` (see the module docstring)."""
    root = _check_root(root)
    formats = _builtin()
    hits = [(f.name, m) for f in formats.values() if (m := f.match(root)) is not None]
    if len(hits) == 1:
        name, marker = hits[0]
        alias = marker in formats[name].aliases
        return Detection(name, None, f"found {marker}" + (" (alias)" if alias else ""))
    if len(hits) > 1:
        raise DataError(
            f"{root}: several datasets found ({', '.join(f'{n} via {m}' for n, m in hits)}); "
            "expected one per folder: pass --format or point --root at one dataset."
        )
    from rasa.data.parsers.common import load_json

    sniffed, unreadable = [], []
    for path in sorted(root.glob("*.json")):
        if path.name == "synthpedes_meta.json":
            continue
        try:
            obj, _ = load_json(path)
        except DataError:
            unreadable.append(path.name)
            continue
        sniffed += [(f.name, path) for f in formats.values() if f.sniff and f.sniff(obj)]
    if len(sniffed) == 1:
        name, path = sniffed[0]
        return Detection(name, path, f"recognised by the JSON structure of {path.name}")
    if sniffed:
        raise DataError(
            f"{root}: JSON files of several formats ({', '.join(f'{p.name}: {n}' for n, p in sniffed)}); "
            "expected one dataset per folder: pass --format or point --root at one dataset."
        )
    markers = [f for fmt in formats.values() for f in fmt.files + fmt.aliases]
    below = sorted(
        f"{sub.name}/ ({f.name})"
        for sub in root.iterdir()
        if sub.is_dir()
        for f in formats.values()
        if f.match(sub) is not None
    )
    hint = f" Datasets found one level down: {', '.join(below)}." if below else ""
    bad = f" Not valid JSON here: {', '.join(unreadable)}." if unreadable else ""
    raise DataError(
        f"{root}: no known dataset found; expected one of {', '.join(markers)}, or text_c10/ "
        "with trainvalclasses.txt and testclasses.txt (CUB/Flowers). Check --root (the folder "
        f"as released, containing these files).{hint}{bad}"
    )


def _check_root(root: str | Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found; expected the folder as released.")
    return root


def verify_images(ann: Annotations, show: int = 3) -> None:
    """Raise :class:`DataError` if any image file is missing (one directory listing per folder)."""
    image_root = Path(ann.image_root)
    if not image_root.is_dir():
        raise DataError(
            f"{image_root}: image folder not found; expected the images of "
            f"{ann.source.get('file', ann.dataset)} there, as released (or pass "
            "--no-check-images to write the table anyway)."
        )
    listings: dict[str, set[str]] = {}
    missing = []
    for rec in tqdm(
        ann.records,
        desc="checking images",
        unit="img",
        leave=False,
        disable=len(ann.records) < 5000,
    ):
        folder, _, name = rec.image.rpartition("/")
        if folder not in listings:
            try:
                with os.scandir(image_root / folder) as it:
                    listings[folder] = {e.name for e in it if e.is_file()}
            except OSError:
                listings[folder] = set()
        if name not in listings[folder]:
            missing.append(rec.image)
    if missing:
        key = ann.source.get("image_key", "image path")
        examples = ", ".join(repr(m) for m in missing[:show])
        raise DataError(
            f"{ann.source.get('file', image_root)}, key {key!r}: {len(missing):,} of "
            f"{len(ann.records):,} images not found under {image_root} (e.g. {examples}); "
            "expected every listed image to exist. Is the copy complete and --root the "
            "folder as released? (--no-check-images skips this check.)"
        )


def stats_table(
    dataset: str, stats: dict[str, dict[str, int]], synthetic: bool = False
) -> tuple[str, int]:
    """Text table of our figures beside the paper's; returns (table, number of mismatches)."""
    paper = PAPER_STATS.get(dataset)
    expected = paper["splits"] if paper else {}
    head = f"{dataset} statistics" + (f" (paper: {paper['source']})" if paper else "")
    lines = [head, f"{'split':<6}" + "".join(f"{k:>24}" for k in ("ids", "images", "captions"))]
    bad = 0
    for split in [*SPLITS, "total"]:
        ours = stats.get(split)
        exp = expected.get(split)
        if ours is None and exp is None:
            continue
        cells = []
        for key in ("ids", "images", "captions"):
            got = ours[key] if ours else 0
            want = exp.get(key) if exp else None
            cell = f"{got:,}"
            if want is not None:
                mark = "" if got == want else " *"
                bad += got != want
                cell += f" ({want:,}){mark}"
            cells.append(f"{cell:>24}")
        lines.append(f"{split:<6}" + "".join(cells))
    if paper:
        why = "expected for SynthPEDES" if synthetic else "an incomplete or different copy?"
        lines.append(
            f"{bad} figure(s) differ from the paper's (marked *): {why}"
            if bad
            else "matches the paper's figures (in parentheses)"
        )
    return "\n".join(lines), bad


def _total(ann: Annotations) -> dict[str, dict[str, int]]:
    stats = ann.stats()
    stats["total"] = {
        "ids": len({r.pid for r in ann.records}),
        "images": len(ann.records),
        "captions": ann.num_captions(),
    }
    return stats


def parse_dataset(
    fmt: str, root: str | Path, check_images: bool = True, log: Callable[[str], None] = tqdm.write
) -> Annotations:
    """Parse ``root`` in format ``fmt`` (or ``"auto"``); ``image_root`` is absolute."""
    root = _check_root(root)
    file = None
    detected = fmt == "auto"
    if detected:
        found = detect_format(root)
        fmt, file = found.name, found.file
        log(f"detected format {fmt} in {root} ({found.how})")
    ann = get_format(fmt).parse(root, file)
    ann.source.setdefault("format", fmt)
    ann.source["detected"] = detected
    if (root / "synthpedes_meta.json").is_file():
        ann.source["synthpedes_meta"] = "synthpedes_meta.json"
        ann.source["notes"] = ann.source.get("notes", []) + [
            "SynthPEDES copy (synthpedes_meta.json present): the paper's figures describe the "
            "real dataset, so differences are expected"
        ]
    if check_images:
        verify_images(ann)
    ann.source["images_checked"] = check_images
    stats = _total(ann)
    table, mismatches = stats_table(ann.dataset, stats, "synthpedes_meta" in ann.source)
    ann.source["stats"] = stats
    ann.source["paper_mismatches"] = mismatches
    for note in ann.source.get("notes", []):
        log(f"note: {note}")
    for detail in ann.source.get("warning_details", {}).values():
        log(f"warning: {detail}")
    log(table)
    return ann


def portable_image_root(image_root: str | Path, out: str | Path) -> str:
    """``image_root`` relative to the folder of ``out`` when they share a folder below the
    file-system root (moving data and annotations together keeps working), else absolute."""
    image_root = Path(image_root).resolve()
    folder = Path(out).parent.resolve()
    try:
        common = Path(os.path.commonpath([image_root, folder]))
    except ValueError:  # different drives (Windows)
        return str(image_root)
    if common == Path(common.anchor):
        return str(image_root)
    return Path(os.path.relpath(image_root, folder)).as_posix()


def parse_to_file(
    fmt: str, root: str | Path, out: str | Path, check_images: bool = True
) -> Annotations:
    """Parse a raw dataset and write the annotation table to ``out`` (atomically).

    ``image_root`` is stored relative to ``out``'s folder when possible (see
    :func:`portable_image_root`), so moving data and annotations together keeps working.
    """
    out = Path(out)
    if out.is_dir():
        raise DataError(f"{out}: is a folder; expected the annotation file to write (.json).")
    ann = parse_dataset(fmt, root, check_images=check_images)
    ann.image_root = portable_image_root(ann.image_root, out)
    ann.save(out)
    tqdm.write(f"wrote {out}: {len(ann.records):,} images, {ann.num_captions():,} captions")
    return ann
