"""Raw-format parsers (rasa/data/formats.py, rasa/data/parsers/): hand-written fixtures in each
release format (tests/fixtures/raw/) → the right records; malformed copies → errors naming
file, record and key; aliases, split generation, auto-detection and the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rasa.cli import main
from rasa.data import formats, synth
from rasa.data.annotations import Annotations, Record
from rasa.data.formats import (
    PAPER_STATS,
    detect_format,
    get_format,
    list_formats,
    parse_dataset,
    parse_to_file,
    register_format,
    stats_table,
)
from rasa.data.parsers.pedes import standard_identity_split
from rasa.errors import ConfigError, DataError

FIX = Path(__file__).parent / "fixtures" / "raw"


def parse(fmt: str, root: Path, **kw) -> Annotations:
    return parse_dataset(fmt, root, log=lambda _: None, **kw)


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(FIX / name, tmp_path / Path(name).name))


def edit_json(path: Path, change) -> None:
    """Apply ``change`` to the file's JSON: in place, or a returned list/dict replaces it."""
    obj = json.loads(path.read_text())
    new = change(obj)
    path.write_text(json.dumps(new if isinstance(new, (list, dict)) else obj))


def error(fmt: str, root: Path, **kw) -> str:
    with pytest.raises(DataError) as exc:
        parse(fmt, root, **kw)
    return str(exc.value)


# ---- registry ---------------------------------------------------------------------------


def test_registry_lists_every_format_and_fails_loudly(monkeypatch):
    assert list_formats() == ["cub", "cuhk-pedes", "flowers", "icfg-pedes", "karpathy", "rstpreid"]
    with pytest.raises(ConfigError, match="known formats: cub, cuhk-pedes"):
        get_format("market1501")
    monkeypatch.setattr(formats, "FORMATS", dict(formats.FORMATS))
    with pytest.raises(ValueError, match="already registered"):
        register_format("rstpreid")(lambda root, file=None: None)
    register_format("toy", files=("toy.json",))(lambda root, file=None: None)
    assert "toy" in list_formats()


def test_paper_figures_add_up():
    for name, entry in PAPER_STATS.items():
        splits = entry["splits"]
        for key in ("ids", "images", "captions"):
            parts = [splits[s][key] for s in ("train", "val", "test") if s in splits]
            if None not in parts and splits["total"][key] is not None:
                assert sum(parts) == splits["total"][key], (name, key)
    table, bad = stats_table("cuhk-pedes", PAPER_STATS["cuhk-pedes"]["splits"])
    assert bad == 0 and "matches the paper" in table and "34,054 (34,054)" in table
    table, bad = stats_table(
        "rstpreid", {"train": {"ids": 3701, "images": 18500, "captions": 37010}}
    )
    assert bad == 1 + 3 * 3 and "18,500 (18,505) *" in table  # val/test/total missing


# ---- each format ------------------------------------------------------------------------


def test_cuhk_pedes_records_and_source():
    ann = parse("cuhk-pedes", FIX / "cuhk-pedes")
    assert ann.dataset == "cuhk-pedes"
    assert Path(ann.image_root) == (FIX / "cuhk-pedes" / "imgs").resolve()
    assert [(r.image, r.pid, r.split) for r in ann.records] == [
        ("CUHK01/0001001.png", 1, "train"),
        ("CUHK01/0001002.png", 1, "train"),
        ("CUHK03/2_1.png", 2, "train"),
        ("Market/0003_c1s1_000151_01.jpg", 3, "train"),
        ("test_query/p4_s1.jpg", 4, "train"),
        ("CUHK01/0005001.png", 5, "val"),
        ("CUHK01/0006001.png", 6, "test"),
        ("CUHK01/0006002.png", 6, "test"),
    ]
    assert ann.records[2].captions == ("A woman with long black hair and a white dress.",)
    src = ann.source
    raw = (FIX / "cuhk-pedes" / "reid_raw.json").read_bytes()
    assert src["file"] == "reid_raw.json" and src["sha256"] == hashlib.sha256(raw).hexdigest()
    assert src["warnings"] == {"empty_captions_dropped": 1}
    assert "reid_raw.json, record 2" in src["warning_details"]["empty_captions_dropped"]
    assert src["split_generated"] is False
    assert src["stats"] == {
        "train": {"ids": 4, "images": 5, "captions": 8},
        "val": {"ids": 1, "images": 1, "captions": 2},
        "test": {"ids": 1, "images": 2, "captions": 4},
        "total": {"ids": 6, "images": 8, "captions": 14},
    }


def test_caption_all_alias_generates_standard_split():
    new = parse("cuhk-pedes", FIX / "cuhk-pedes")
    old = parse("cuhk-pedes", FIX / "cuhk-pedes-old")
    assert old.source["file"] == "caption_all.json" and old.source["split_generated"] is True
    assert any("generated the standard identity split" in n for n in old.source["notes"])
    assert {r.pid: r.split for r in old.records} == {
        1: "train",
        2: "train",
        3: "train",
        4: "train",
        5: "val",
        6: "test",
    }
    assert sorted(old.records, key=lambda r: r.image) == sorted(new.records, key=lambda r: r.image)


def test_standard_identity_split_proportions():
    full = standard_identity_split(list(range(13003, 0, -1)))
    assert [sum(v == s for v in full.values()) for s in ("train", "val", "test")] == [
        11003,
        1000,
        1000,
    ]
    assert full[11003] == "train" and full[11004] == "val" and full[12004] == "test"
    small = standard_identity_split(list(range(130)))
    assert [sum(v == s for v in small.values()) for s in ("train", "val", "test")] == [110, 10, 10]
    assert set(standard_identity_split([7, 3, 9]).items()) == {
        (3, "train"),
        (7, "val"),
        (9, "test"),
    }
    with pytest.raises(DataError, match="at least 3"):
        standard_identity_split([1, 2])


def test_icfg_pedes_and_alias():
    ann = parse("icfg-pedes", FIX / "icfg-pedes")
    assert [(r.pid, r.split) for r in ann.records] == [
        (1, "train"),
        (1, "train"),
        (2, "train"),
        (27, "test"),
        (27, "test"),
        (31, "test"),
    ]
    assert ann.records[3].image == "test/0027/0027_010_01_0303morning_1118_1.jpg"
    assert all(len(r.captions) == 1 for r in ann.records)
    assert any("no validation split" in n for n in ann.source["notes"])
    alias = parse("auto", FIX / "icfg-pedes-alias")
    assert alias.dataset == "icfg-pedes" and alias.source["alias"] == "ICFG_PEDES.json"
    assert [r.image for r in alias.records] == [ann.records[0].image, ann.records[3].image]


def test_rstpreid_records():
    ann = parse("rstpreid", FIX / "rstpreid")
    assert ann.records[0] == Record(
        "0000_c3_0003.jpg",
        0,
        "train",
        ("Person 0 seen by camera 3 wears a coat.", "A pedestrian (0) with a bag, camera 3."),
    )
    assert [r.split for r in ann.records] == ["train"] * 2 + ["val"] * 2 + ["test"] * 2
    assert ann.source["stats"]["total"] == {"ids": 3, "images": 6, "captions": 12}


def test_karpathy_flickr30k_and_coco():
    f30k = parse("karpathy", FIX / "karpathy-flickr30k")
    assert f30k.dataset == "flickr30k" and f30k.source["file"] == "dataset_flickr30k.json"
    assert [(r.image, r.pid, r.split, len(r.captions)) for r in f30k.records] == [
        ("1000092795.jpg", 0, "train", 3),
        ("10002456.jpg", 1, "train", 2),
        ("1000268201.jpg", 2, "val", 2),
        ("1000344755.jpg", 3, "test", 2),
    ]
    assert (
        f30k.records[1].captions[0]
        == "Several men in hard hats are operating a giant pulley system."
    )
    coco = parse("karpathy", FIX / "karpathy-coco")
    assert coco.dataset == "coco" and coco.source["restval"] == 1
    assert [(r.image, r.split) for r in coco.records] == [
        ("val2014/COCO_val2014_000000391895.jpg", "test"),
        ("val2014/COCO_val2014_000000522418.jpg", "train"),
        ("train2014/COCO_train2014_000000057870.jpg", "train"),
        ("val2014/COCO_val2014_000000184613.jpg", "val"),
    ]
    assert Path(coco.image_root).name == "images"


def test_cub_and_flowers():
    cub = parse("cub", FIX / "cub")
    assert [(r.image, r.pid, r.split) for r in cub.records] == [
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg", 1, "train"),
        ("001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg", 1, "train"),
        ("002.Laysan_Albatross/Laysan_Albatross_0001_545.jpg", 2, "train"),
        ("003.Sooty_Albatross/Sooty_Albatross_0001_796366.jpg", 3, "val"),
        ("004.Groove_billed_Ani/Groove_Billed_Ani_0002_1670.jpg", 4, "test"),
    ]
    assert len(cub.records[1].captions) == 2  # the empty line is dropped and counted
    assert cub.source["warnings"] == {"empty_captions_dropped": 1}
    flowers = parse("flowers", FIX / "flowers")
    assert Path(flowers.image_root).name == "jpg"
    assert [(r.image, r.pid, r.split) for r in flowers.records] == [
        ("image_06734.jpg", 1, "train"),
        ("image_06735.jpg", 2, "train"),
        ("image_06736.jpg", 2, "train"),
        ("image_06737.jpg", 3, "test"),
    ]
    assert any("carves validation" in n for n in flowers.source["notes"])


# ---- detection ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("cuhk-pedes", "cuhk-pedes"),
        ("cuhk-pedes-old", "cuhk-pedes"),
        ("icfg-pedes", "icfg-pedes"),
        ("icfg-pedes-alias", "icfg-pedes"),
        ("rstpreid", "rstpreid"),
        ("karpathy-flickr30k", "karpathy"),
        ("karpathy-coco", "karpathy"),
        ("cub", "cub"),
        ("flowers", "flowers"),
    ],
)
def test_auto_detection(name, fmt):
    assert detect_format(FIX / name).name == fmt
    lines = []
    ann = parse_dataset("auto", FIX / name, log=lines.append)
    assert ann.source["format"] == fmt and ann.source["detected"] is True
    assert lines[0].startswith(f"detected format {fmt}")


@pytest.mark.parametrize(
    "name, raw, fmt",
    [
        ("cuhk-pedes", "reid_raw.json", "cuhk-pedes"),
        ("icfg-pedes", "ICFG-PEDES.json", "icfg-pedes"),
        ("rstpreid", "data_captions.json", "rstpreid"),
        ("karpathy-coco", "dataset_coco.json", "karpathy"),
    ],
)
def test_detection_by_json_structure(tmp_path, name, raw, fmt):
    root = copy(name, tmp_path)
    (root / raw).rename(root / "annotations.json")
    found = detect_format(root)
    assert found.name == fmt and "JSON structure of annotations.json" in found.how
    assert parse("auto", root).records == parse(fmt, FIX / name).records


def test_detection_failures(tmp_path):
    with pytest.raises(DataError, match="no known dataset found.*reid_raw.json.*text_c10"):
        detect_format(tmp_path)
    root = copy("rstpreid", tmp_path)
    shutil.copy(FIX / "cuhk-pedes" / "reid_raw.json", root)
    with pytest.raises(DataError, match="several datasets found.*pass --format"):
        detect_format(root)
    with pytest.raises(DataError, match="dataset folder not found"):
        detect_format(tmp_path / "nope")
    parent = tmp_path / "parent"
    copy("flowers", parent)
    (parent / "notes.json").write_text("{broken")
    with pytest.raises(
        DataError, match=r"one level down: flowers/ \(flowers\)\. Not valid JSON here: notes.json"
    ):
        detect_format(parent)


# ---- malformed input ----------------------------------------------------------------------


def _set(i, key, value):
    def change(obj):
        obj[i][key] = value

    return change


def _drop(i, key):
    def change(obj):
        del obj[i][key]

    return change


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda o: {"images": o}, ["reid_raw.json", "expected a JSON list", "got dict"]),
        (lambda o: o[:3] + [5] + o[4:], ["reid_raw.json, record 3", "expected an object"]),
        (
            _drop(1, "captions"),
            ["record 1, key 'captions'", "key missing", "list of caption strings"],
        ),
        (
            _set(1, "captions", "a man"),
            ["record 1, key 'captions'", "list of caption strings, got str"],
        ),
        (_set(4, "captions", [7]), ["record 4, key 'captions'", "item 0", "got int"]),
        (_set(3, "id", "3"), ["record 3, key 'id'", "integer person id", "'3'"]),
        (_set(3, "id", True), ["record 3, key 'id'", "integer person id"]),
        (
            _set(5, "split", "validation"),
            ["record 5, key 'split'", "unknown split 'validation'", "'train', 'val', 'test'"],
        ),
        (_set(0, "file_path", "/etc/passwd"), ["record 0, key 'file_path'", "relative image path"]),
        (_set(0, "file_path", "../../x.png"), ["record 0, key 'file_path'", "relative image path"]),
        (_drop(6, "split"), ["record 6, key 'split'", "key missing, but record 0 has one"]),
        (
            _set(6, "id", 5),
            ["record 6, key 'split'", "id 5 is in split 'test'", "'val' at", "record 5"],
        ),
        (
            _set(1, "file_path", "CUHK01/0001001.png"),
            ["record 1, key 'file_path'", "listed again", "record 0"],
        ),
        (lambda o: [dict(e, captions=[" "]) for e in o], ["no usable records"]),
    ],
)
def test_malformed_cuhk_entries(tmp_path, change, needles):
    root = copy("cuhk-pedes", tmp_path)
    edit_json(root / "reid_raw.json", change)
    message = error("cuhk-pedes", root, check_images=False)
    for needle in needles:
        assert needle in message, (needle, message)


def test_counted_warnings_instead_of_errors(tmp_path):
    root = copy("cuhk-pedes", tmp_path)
    extra = {"file_path": "CUHK01/0001003.png", "id": 1, "split": "train", "captions": ["", " "]}
    edit_json(root / "reid_raw.json", lambda o: o + [o[0], extra])
    ann = parse("cuhk-pedes", root)
    assert len(ann.records) == 8  # the repeat and the caption-less image are dropped
    assert ann.source["warnings"] == {
        "duplicate_entries_dropped": 1,
        "empty_captions_dropped": 3,
        "images_without_captions_dropped": 1,
    }


@pytest.mark.parametrize(
    "case, fmt, needles",
    [
        ("truncated", "cuhk-pedes", ["reid_raw.json", "not valid JSON", "truncated"]),
        ("unknown_split", "auto", ["reid_raw.json, record 5, key 'split'", "'validation'"]),
        ("string_id", "cuhk-pedes", ["reid_raw.json, record 3, key 'id'", "integer"]),
        (
            "id_crossing",
            "icfg-pedes",
            ["ICFG-PEDES.json, record 4, key 'split'", "id 2", "'test'", "'train' at", "record 2"],
        ),
        (
            "missing_key",
            "rstpreid",
            ["data_captions.json, record 2, key 'img_path'", "key missing"],
        ),
        (
            "missing_image",
            "rstpreid",
            [
                "data_captions.json, key 'img_path'",
                "1 of 6 images",
                "'0002_c14_0034.jpg'",
                "--no-check-images",
            ],
        ),
        (
            "overlapping_classes",
            "flowers",
            ["testclasses.txt, line 1", "'class_00002'", "trainvalclasses.txt (line 2)"],
        ),
    ],
)
def test_malformed_fixtures(case, fmt, needles):
    message = error(fmt, FIX / "malformed" / case)
    for needle in needles:
        assert needle in message, (needle, message)


def test_missing_image_folder(tmp_path):
    root = copy("icfg-pedes", tmp_path)
    shutil.rmtree(root / "imgs")
    assert "imgs: image folder not found" in error("icfg-pedes", root)


def test_missing_images_can_be_skipped():
    ann = parse("rstpreid", FIX / "malformed" / "missing_image", check_images=False)
    assert len(ann.records) == 6 and ann.source["images_checked"] is False


@pytest.mark.parametrize(
    "change, needles",
    [
        (lambda o: o["images"], ["dataset_coco.json, key 'images'", "got list"]),
        (
            lambda o: o["images"][1].update(imgid=0),
            ["record 1, key 'imgid'", "already used by record 0"],
        ),
        (lambda o: o["images"][2].update(sentences="x"), ["record 2, key 'sentences'", "got str"]),
        (
            lambda o: o["images"][2]["sentences"][1].pop("raw"),
            ["record 2, key 'sentences'", "item 1"],
        ),
        (lambda o: o["images"][3].update(split="dev"), ["record 3, key 'split'", "'restval'"]),
        (lambda o: o["images"][0].pop("filename"), ["record 0, key 'filename'", "key missing"]),
    ],
)
def test_malformed_karpathy(tmp_path, change, needles):
    root = copy("karpathy-coco", tmp_path)
    edit_json(root / "dataset_coco.json", change)
    message = error("karpathy", root, check_images=False)
    for needle in needles:
        assert needle in message, (needle, message)


def test_karpathy_two_files_is_ambiguous(tmp_path):
    root = copy("karpathy-coco", tmp_path)
    shutil.copy(FIX / "karpathy-flickr30k" / "dataset_flickr30k.json", root)
    assert "expected one dataset per folder" in error("karpathy", root)


def test_malformed_reed_layouts(tmp_path):
    root = copy("cub", tmp_path)
    (root / "valclasses.txt").unlink()
    assert "valclasses.txt: file not found, but its partner" in error("cub", root)
    (root / "trainclasses.txt").unlink()
    shutil.rmtree(root / "text_c10" / "003.Sooty_Albatross")
    message = error("cub", root)
    assert "003.Sooty_Albatross: no caption files" in message
    (root / "text_c10" / "003.Sooty_Albatross").mkdir()
    (root / "text_c10" / "003.Sooty_Albatross" / "a.txt").write_bytes(b"caf\xe9 bird\n")
    (root / "images" / "003.Sooty_Albatross" / "a.jpg").write_bytes(b"")
    (root / "text_c10" / "999.Extra").mkdir()
    ann = parse("cub", root)
    assert ann.source["warnings"] == {
        "empty_captions_dropped": 1,
        "undecodable_text_files": 1,
        "unlisted_classes_ignored": 1,
    }
    assert ann.records[3].captions == ("caf\ufffd bird",)


# ---- output file and CLI --------------------------------------------------------------------


def test_parse_to_file_relative_image_root_and_deterministic(tmp_path, capsys):
    root = copy("rstpreid", tmp_path / "data")
    out = tmp_path / "ann" / "rstp.json"
    ann = parse_to_file("auto", root, out)
    first = out.read_bytes()
    loaded = Annotations.load(out)
    assert loaded.image_root == "../data/rstpreid/imgs" and loaded.records == ann.records
    assert loaded.source["stats"]["train"] == {"ids": 1, "images": 2, "captions": 4}
    printed = capsys.readouterr().out
    assert "detected format rstpreid" in printed and "3,701" in printed
    parse_to_file("rstpreid", root, out)
    assert out.read_bytes().replace(b'"detected": false', b'"detected": true') == first
    moved = Path(shutil.move(tmp_path, tmp_path.parent / (tmp_path.name + "_moved")))
    again = Annotations.load(moved / "ann" / "rstp.json")
    assert (
        again.resolve_image_root(moved / "ann" / "rstp.json") / again.records[0].image
    ).is_file()


def test_cli_parse_in_process(tmp_path):
    out = tmp_path / "cub.json"
    assert (
        main(["data", "parse", "--format", "cub", "--root", str(FIX / "cub"), "--out", str(out)])
        == 0
    )
    assert len(Annotations.load(out).records) == 5
    assert (
        main(["data", "parse", "--root", str(FIX / "malformed" / "string_id"), "--out", str(out)])
        == 2
    )


def test_cli_exit_codes_and_one_paragraph_error(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "rasa",
            "data",
            "parse",
            "--root",
            str(FIX / "icfg-pedes"),
            "--out",
            str(tmp_path / "a.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.json").is_file()
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "rasa",
            "data",
            "parse",
            "--root",
            str(FIX / "malformed" / "id_crossing"),
            "--out",
            str(tmp_path / "b.json"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and "\n\n" not in bad.stderr.strip()
    assert "ICFG-PEDES.json, record 4" in " ".join(bad.stderr.split())
    assert not (tmp_path / "b.json").exists()


# ---- SynthPEDES round trip ----------------------------------------------------------------


@pytest.mark.parametrize(
    "preset, fmt", [("cuhk", "cuhk-pedes"), ("icfg", "icfg-pedes"), ("rstp", "rstpreid")]
)
def test_synthpedes_presets_parse_back(tmp_path, preset, fmt):
    stats = synth.generate(preset, n_ids=12, seed=0, out=tmp_path / preset, progress=False)
    lines = []
    ann = parse_dataset("auto", tmp_path / preset, log=lines.append)
    assert ann.dataset == fmt and ann.source["synthpedes_meta"] == "synthpedes_meta.json"
    assert ann.source["warnings"] == {}
    assert {k: v for k, v in ann.source["stats"].items() if k != "total"} == stats["splits"]
    raw = json.loads((tmp_path / preset / synth.RAW_FILES[preset]).read_text())
    assert [tuple(e["captions"]) for e in raw] == [r.captions for r in ann.records]
    assert "expected for SynthPEDES" in lines[-1]


def test_portable_image_root_and_out_checks(tmp_path):
    assert formats.portable_image_root(tmp_path / "d" / "imgs", tmp_path / "a" / "t.json") == (
        "../d/imgs"
    )
    outside = formats.portable_image_root(FIX / "cub" / "images", "/t.json")
    assert outside == str((FIX / "cub" / "images").resolve())
    with pytest.raises(DataError, match="is a folder"):
        parse_to_file("cub", FIX / "cub", tmp_path)


def test_karpathy_flickr30k_images_folder_fallback(tmp_path):
    root = copy("karpathy-flickr30k", tmp_path)
    (root / "images").rename(root / "flickr30k-images")
    ann = parse("auto", root)
    assert Path(ann.image_root).name == "flickr30k-images"
    assert "images found under flickr30k-images/" in ann.source["notes"]
