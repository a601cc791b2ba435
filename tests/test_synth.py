"""SynthPEDES: raw formats, determinism, splits, weak-pair metadata, CLI, parse-back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rasa.data import formats
from rasa.data.synth import (
    META_FILE,
    RAW_FILES,
    _is_weak,
    generate,
    split_sizes,
)
from rasa.data.synth_attrs import sample_condition, sample_identity
from rasa.data.synth_caption import CaptionStyle, compose
from rasa.data.synth_draw import part_boxes, visibility
from rasa.errors import ConfigError, DataError

SIZE = (96, 240)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One tiny dataset per preset (12 identities, seed 0)."""
    root = tmp_path_factory.mktemp("synth")
    return {p: _make(p, root / p) for p in RAW_FILES}


def _make(preset: str, out: Path, ids: int = 12, seed: int = 0, workers: int = 1) -> Path:
    generate(preset, ids, seed, out, workers=workers, progress=False)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _load(root: Path, name: str):
    return json.loads((root / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("preset", list(RAW_FILES))
def test_preset_writes_real_raw_format(made, preset):
    root = made[preset]
    raw = _load(root, RAW_FILES[preset])
    meta = _load(root, META_FILE)
    assert isinstance(raw, list) and len(raw) == len(meta["images"])
    per_image = {"cuhk": 2, "icfg": 1, "rstp": 2}[preset]
    splits = {
        "cuhk": {"train", "val", "test"},
        "icfg": {"train", "test"},
        "rstp": {"train", "val", "test"},
    }[preset]
    assert {r["split"] for r in raw} == splits
    for rec in raw:
        path = rec["img_path"] if preset == "rstp" else rec["file_path"]
        keys = (
            {"id", "img_path", "captions", "split"}
            if preset == "rstp"
            else {"split", "captions", "file_path", "processed_tokens", "id"}
        )
        assert set(rec) == keys
        assert isinstance(rec["id"], int) and len(rec["captions"]) == per_image
        if preset != "rstp":
            assert len(rec["processed_tokens"]) == per_image
            assert all(t == t.lower() and t for toks in rec["processed_tokens"] for t in toks)
        if preset == "icfg":
            folder = "train" if rec["split"] == "train" else "test"
            assert path.startswith(f"{folder}/{rec['id']:04d}/{rec['id']:04d}_")
        if preset == "rstp":
            assert "/" not in path and path.startswith(f"{rec['id']:04d}_c")
        assert path.endswith(".png" if preset == "cuhk" else ".jpg")
    first = raw[0]["img_path"] if preset == "rstp" else raw[0]["file_path"]
    with Image.open(root / "imgs" / first) as im:
        assert im.size == SIZE and im.mode == "RGB"
        assert im.format == ("PNG" if preset == "cuhk" else "JPEG")
    assert len(list((root / "imgs").rglob("*.*"))) == len(raw)
    assert meta["stats"]["images"] == len(raw)
    assert meta["stats"]["captions_per_image"] == per_image


def test_rstp_five_images_from_five_cameras(made):
    raw = _load(made["rstp"], RAW_FILES["rstp"])
    by_id: dict[int, list[str]] = {}
    for r in raw:
        by_id.setdefault(r["id"], []).append(r["img_path"].split("_")[1])
    assert min(by_id) == 0
    assert all(len(c) == 5 and len(set(c)) == 5 for c in by_id.values())


@pytest.mark.parametrize("preset", list(RAW_FILES))
def test_same_seed_same_bytes_other_seed_differs(made, tmp_path, preset):
    again = _files(_make(preset, tmp_path / "a"))
    assert again == _files(made[preset])
    other = _files(_make(preset, tmp_path / "b", seed=1))
    assert other[RAW_FILES[preset]] != again[RAW_FILES[preset]]


def test_workers_do_not_change_bytes(made, tmp_path):
    assert _files(_make("cuhk", tmp_path / "w2", workers=2)) == _files(made["cuhk"])


def test_split_sizes_follow_the_paper():
    assert split_sizes("cuhk", 13003) == (11003, 1000, 1000)
    assert split_sizes("icfg", 4102) == (3102, 0, 1000)
    assert split_sizes("rstp", 4101) == (3701, 200, 200)
    assert split_sizes("cuhk", 12) == (8, 2, 2)  # small sets keep 2 eval ids each
    assert split_sizes("icfg", 12) == (9, 0, 3)
    assert split_sizes("cuhk", 3) == (1, 1, 1)
    with pytest.raises(ConfigError, match="--ids 2"):
        split_sizes("rstp", 2)


@pytest.mark.parametrize("preset", list(RAW_FILES))
def test_splits_are_by_identity_and_disjoint(made, preset):
    raw = _load(made[preset], RAW_FILES[preset])
    ids: dict[str, set[int]] = {}
    for r in raw:
        ids.setdefault(r["split"], set()).add(r["id"])
    names = list(ids)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not ids[a] & ids[b]
    sizes = split_sizes(preset, 12)
    assert [len(ids.get(s, ())) for s in ("train", "val", "test")] == list(sizes)
    assert max(ids["train"]) < min(ids["test"])  # split by sorted id, train first


@pytest.mark.parametrize("preset", list(RAW_FILES))
def test_weak_pair_metadata_is_consistent(made, preset):
    meta = _load(made[preset], META_FILE)
    images = meta["images"]
    raw_caps = [c for r in _load(made[preset], RAW_FILES[preset]) for c in r["captions"]]
    assert [c["text"] for c in meta["captions"]] == raw_caps  # flat caption order
    for cap in meta["captions"]:
        own = images[cap["image"]]
        assert cap["image"] not in cap["weak_images"]  # own image is a strong pair
        assert set(cap["mentions"]) - {"view"} <= set(own["visible"])  # only what it shows
        same = [i for i in images if i["id"] == cap["id"] and i["index"] != cap["image"]]
        expect = [
            o["index"]
            for o in same
            if any(
                k not in o["visible"]
                if k != "view"
                else o["condition"]["view"] != own["condition"]["view"]
                for k in cap["mentions"]
            )
        ]
        assert cap["weak_images"] == expect
        assert len(cap["text"].split()) <= 50
    for img in images:
        assert not set(img["visible"]) & set(img["hidden"])
    stats = meta["stats"]
    assert 0.0 < stats["weak_share"] < 1.0
    assert stats["weak_pairs"] == sum(len(c["weak_images"]) for c in meta["captions"])


def test_hidden_shoes_make_a_weak_pair(made):
    """A caption naming the shoes is weak for an image of that person with the feet hidden."""
    found = 0
    for preset in RAW_FILES:
        meta = _load(made[preset], META_FILE)
        for cap in meta["captions"]:
            if "shoes" not in cap["mentions"]:
                continue
            for img in meta["images"]:
                if img["id"] == cap["id"] and "shoes" in img["hidden"]:
                    assert img["index"] in cap["weak_images"]
                    found += 1
    assert found > 0


def _ident(**over) -> dict:
    ident = sample_identity(np.random.default_rng(0))
    ident.update(over)
    return ident


def _cond(view: str, occluder=None, crop=None) -> dict:
    cond = sample_condition(np.random.default_rng(1), camera=1, view=view)
    cond.update({"occluder": occluder, "crop": crop, "dx": 0.0, "dy": 0.0, "zoom": 0.95})
    return cond


def test_visibility_view_occluder_and_crop():
    bag = {"type": "backpack", "colour": "black", "side": "right"}
    ident = _ident(carry=bag, glasses=True)
    assert "carry" not in part_boxes(ident, _cond("front"))  # a backpack hides behind
    assert "glasses" not in part_boxes(ident, _cond("back"))
    assert visibility(ident, _cond("back"), SIZE)["carry"] == 1.0
    low = {"kind": "car", "box": [-0.05, 0.6, 1.05, 1.05], "colour": "red"}
    vis = visibility(ident, _cond("back", occluder=low), SIZE)
    assert vis["shoes"] == 0.0 and vis["hair"] == 1.0
    assert visibility(ident, _cond("front", crop="top"), SIZE)["hair"] < 0.4
    assert visibility(ident, _cond("front", crop="bottom"), SIZE)["shoes"] < 0.4
    # a handbag in the right hand is at the image's left in a front view
    hand = _ident(carry={"type": "handbag", "colour": "red", "side": "right"}, umbrella=None)
    left = {"kind": "pillar", "box": [-0.05, -0.05, 0.45, 1.05], "colour": "grey"}
    assert visibility(hand, _cond("front"), SIZE)["carry"] == 1.0
    assert visibility(hand, _cond("front", occluder=left), SIZE)["carry"] < 0.4
    assert visibility(hand, _cond("back", occluder=left), SIZE)["carry"] == 1.0


def test_is_weak_rules():
    own = {"visible": ["upper", "lower", "carry"], "condition": {"view": "back"}}
    front = {"visible": ["upper", "lower"], "condition": {"view": "front"}}
    back = {"visible": ["upper", "lower", "carry"], "condition": {"view": "back"}}
    assert _is_weak(["upper", "carry"], own, front)
    assert not _is_weak(["upper", "lower"], own, front)
    assert _is_weak(["upper", "view"], own, front)
    assert not _is_weak(["upper", "carry", "view"], own, back)


def test_compose_respects_word_limit_and_keys():
    ident = _ident(
        hat={"type": "cap", "colour": "navy"},
        glasses=True,
        scarf="red",
        umbrella="black",
        carry={"type": "backpack", "colour": "grey", "side": "left"},
    )
    keys = [
        "hair",
        "hat",
        "glasses",
        "scarf",
        "upper",
        "lower",
        "shoes",
        "carry",
        "umbrella",
        "view",
    ]
    style = CaptionStyle(verbose=1.0, max_words=20)
    for s in range(20):
        text, used = compose(ident, keys, "back", style, np.random.default_rng(s))
        assert len(text.split()) <= 20 and "upper" in used and set(used) <= set(keys)
        assert text.endswith(".") and text[0].isupper()
    text, used = compose(
        ident,
        ["upper"],
        "front",
        CaptionStyle(min_words=23),
        np.random.default_rng(0),
        spare=["lower", "shoes"],
    )
    assert len(text.split()) >= 23 and used == ["upper", "lower", "shoes"]


def test_icfg_captions_are_longer_than_cuhk(made):
    words = {p: _load(made[p], META_FILE)["stats"]["mean_words"] for p in RAW_FILES}
    assert words["icfg"] > words["cuhk"]
    assert all(10 <= w <= 50 for w in words.values())


def test_out_dir_rules(tmp_path):
    (tmp_path / "other.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate("cuhk", 4, 0, tmp_path, progress=False)
    assert (tmp_path / "other.txt").read_text() == "keep me"
    out = tmp_path / "synth"
    generate("icfg", 6, 0, out, progress=False)
    generate("cuhk", 4, 0, out, progress=False)  # an earlier SynthPEDES output is replaced
    assert not (out / RAW_FILES["icfg"]).exists() and (out / RAW_FILES["cuhk"]).exists()
    with pytest.raises(ConfigError, match="unknown SynthPEDES preset"):
        generate("market", 4, 0, tmp_path / "x", progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rasa", "data", "synth", *args], capture_output=True, text=True
    )


def test_cli_writes_files_and_reports_bad_args(tmp_path):
    ok = _cli("--preset", "rstp", "--ids", "4", "--seed", "3", "--out", str(tmp_path / "r"))
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r" / "data_captions.json").is_file()
    assert "weak-positive share" in ok.stdout
    few = _cli("--preset", "cuhk", "--ids", "2", "--out", str(tmp_path / "c"))
    assert few.returncode == 2 and "--ids 2" in few.stderr and "Traceback" not in few.stderr
    bad = _cli("--preset", "market", "--ids", "5", "--out", str(tmp_path / "m"))
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


@pytest.mark.parametrize(
    "preset,fmt", [("cuhk", "cuhk-pedes"), ("icfg", "icfg-pedes"), ("rstp", "rstpreid")]
)
def test_parsers_read_synthpedes(made, tmp_path, preset, fmt):
    meta = _load(made[preset], META_FILE)
    for name in (fmt, "auto"):
        ann = formats.parse_to_file(name, made[preset], tmp_path / f"{name}.json")
        assert len(ann.records) == len(meta["images"])
        assert [c for _, _, c in ann.captions()] == [c["text"] for c in meta["captions"]]
        stats = ann.stats()
        for split, s in meta["stats"]["splits"].items():
            assert stats[split] == s
