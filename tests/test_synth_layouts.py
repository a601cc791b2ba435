"""SynthPEDES presets in the layouts of Flickr30K/COCO (Karpathy JSON) and CUB/Flowers (Reed et
al.'s text_c10): the real parsers read them, splits follow the paper, same seed same bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rasa.data.formats import detect_format, parse_to_file
from rasa.data.synth import META_FILE, _is_weak, generate, split_sizes
from rasa.data.synth_layouts import IMAGE_DIRS, KARPATHY, LAYOUT_PRESETS, TEXT_DIR

IDS = {"flickr": 12, "coco": 14, "cub": 5, "flowers": 5}
FORMAT = {"flickr": "karpathy", "coco": "karpathy", "cub": "cub", "flowers": "flowers"}
DATASET = {"flickr": "flickr30k", "coco": "coco", "cub": "cub", "flowers": "flowers"}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    for p in LAYOUT_PRESETS:
        generate(p, IDS[p], 0, root / p, progress=False)
    return {p: root / p for p in LAYOUT_PRESETS}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _meta(root: Path) -> dict:
    return json.loads((root / META_FILE).read_text(encoding="utf-8"))


def test_split_sizes_follow_the_paper():
    assert split_sizes("flickr", 31014) == (29000, 1014, 1000)
    assert split_sizes("coco", 123287) == (113287, 5000, 5000)
    assert split_sizes("cub", 200) == (100, 50, 50)
    assert split_sizes("flowers", 102) == (62, 20, 20)
    assert split_sizes("cub", 12) == (6, 3, 3) and split_sizes("flickr", 300) == (280, 10, 10)


@pytest.mark.parametrize("preset", LAYOUT_PRESETS)
def test_real_parser_reads_the_layout(made, tmp_path, preset):
    root, meta = made[preset], _meta(made[preset])
    assert detect_format(root).name == FORMAT[preset]
    for fmt in (FORMAT[preset], "auto"):
        ann = parse_to_file(fmt, root, tmp_path / f"{fmt}.json")
        assert ann.dataset == DATASET[preset]
        assert len(ann.records) == len(meta["images"])
        # the parsers' order (Karpathy: file order; Reed: sorted classes and files) is ours
        assert [c for _, _, c in ann.captions()] == [c["text"] for c in meta["captions"]]
        stats = ann.stats()
        for split, s in meta["stats"]["splits"].items():
            assert stats[split] == s
        assert ann.source["paper_mismatches"] > 0 and "synthpedes_meta" in ann.source
    per_image = 5 if preset in KARPATHY else 10
    assert all(len(r.captions) == per_image for r in ann.records)
    if preset in KARPATHY:  # an image is its own class
        assert len({r.pid for r in ann.records}) == len(ann.records)
    first = root / IMAGE_DIRS[preset] / meta["images"][0]["path"]
    with Image.open(first) as im:
        assert im.format == "JPEG" and im.mode == "RGB"


def test_karpathy_json_structure(made):
    for preset, name in KARPATHY.items():
        doc = json.loads((made[preset] / name).read_text())
        assert doc["dataset"] == DATASET[preset]
        for i, img in enumerate(doc["images"]):
            assert img["imgid"] == i and len(img["sentences"]) == 5
            assert img["sentids"] == [s["sentid"] for s in img["sentences"]]
            assert all(s["imgid"] == i and s["tokens"] for s in img["sentences"])
    coco = json.loads((made["coco"] / KARPATHY["coco"]).read_text())["images"]
    splits = [img["split"] for img in coco]
    assert {"train", "restval", "val", "test"} == set(splits)
    for img in coco:  # train images from train2014, everything else from val2014
        folder = "train2014" if img["split"] == "train" else "val2014"
        assert img["filepath"] == folder and img["filename"].startswith(f"COCO_{folder}_")
        assert (made["coco"] / folder / img["filename"]).is_file()
    flickr = json.loads((made["flickr"] / KARPATHY["flickr"]).read_text())["images"]
    assert all((made["flickr"] / "flickr30k-images" / i["filename"]).is_file() for i in flickr)


@pytest.mark.parametrize("preset", ["cub", "flowers"])
def test_reed_layout_classes_are_disjoint_and_complete(made, preset):
    root, meta = made[preset], _meta(made[preset])

    def read(name: str) -> list[str]:
        return (root / name).read_text().splitlines()

    train, val, test = read("trainclasses.txt"), read("valclasses.txt"), read("testclasses.txt")
    assert read("trainvalclasses.txt") == train + val
    assert read("allclasses.txt") == train + val + test
    assert len(set(train + val + test)) == len(train + val + test) == IDS[preset]
    assert (len(train), len(val), len(test)) == split_sizes(preset, IDS[preset])
    assert sorted(p.name for p in (root / TEXT_DIR).iterdir()) == sorted(train + val + test)
    for img in meta["images"]:
        stem = Path(img["path"]).stem
        lines = (root / TEXT_DIR / img["class"] / f"{stem}.txt").read_text().splitlines()
        assert len(lines) == 10 and all(line == line.lower() and line for line in lines)
        if preset == "cub":
            assert img["path"].startswith(img["class"] + "/")
    per_class = meta["stats"]["images_per_id"]
    assert per_class >= (41 if preset == "cub" else 40)


def test_weak_pairs_of_many_image_classes(made):
    """The grouped weak-pair search gives exactly the pairwise rule (RaSa §3.2)."""
    meta = _meta(made["cub"])
    images = meta["images"]
    for cap in meta["captions"][::37]:
        own = images[cap["image"]]
        expect = [
            o["index"]
            for o in images
            if o["id"] == cap["id"] and o is not own and _is_weak(cap["mentions"], own, o)
        ]
        assert cap["weak_images"] == expect
    assert 0.0 < meta["stats"]["weak_share"] < 1.0
    assert _meta(made["flickr"])["stats"]["cross_image_pairs"] == 0  # one image per identity


@pytest.mark.parametrize("preset", LAYOUT_PRESETS)
def test_same_seed_same_bytes(made, tmp_path, preset):
    assert _files(generate_to(preset, tmp_path / "a")) == _files(made[preset])
    other = _files(generate_to(preset, tmp_path / "b", seed=1))
    assert other[f"{META_FILE}"] != _files(made[preset])[META_FILE]


def generate_to(preset: str, out: Path, seed: int = 0) -> Path:
    generate(preset, IDS[preset], seed, out, progress=False)
    return out


def test_an_earlier_output_of_another_layout_is_replaced(tmp_path):
    out = tmp_path / "s"
    generate("flowers", 3, 0, out, progress=False)
    generate("flickr", 5, 0, out, progress=False)
    assert not (out / TEXT_DIR).exists() and not (out / "jpg").exists()
    assert detect_format(out).name == "karpathy"


def test_cli_accepts_the_new_presets(tmp_path):
    from rasa.cli import main

    assert (
        main(["data", "synth", "--preset", "coco", "--ids", "4", "--out", str(tmp_path / "c")]) == 0
    )
    out = tmp_path / "ann.json"
    assert main(["data", "parse", "--format", "karpathy", "--root", str(tmp_path / "c"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["dataset"] == "coco"


def test_every_preset_names_its_parse_format_and_cli_choice():
    from rasa.data.cli import PRESETS as CLI_PRESETS
    from rasa.data.formats import list_formats
    from rasa.data.synth import PARSE_FORMATS, PRESETS

    assert set(PARSE_FORMATS) == set(PRESETS) == set(CLI_PRESETS)
    assert set(PARSE_FORMATS.values()) <= set(list_formats())
