"""Token cache: rows in flat caption order, round trip, key invalidation, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import Tokenizer

from rasa.data.annotations import Annotations, Record
from rasa.data.text import clean_caption
from rasa.data.token_cache import build_cache, load_cache
from rasa.errors import DataError


def write_table(path, captions=None) -> Annotations:
    captions = captions or [
        ("A man in a black jacket.", "The man wears black shoes."),
        ("A woman with a red bag.",),
        ("A woman wearing a red dress and black shoes!",),
        ("A man (test) with a blue cap.", "Blue cap, grey coat."),
    ]
    splits = ["train", "train", "train", "test"]
    recs = [
        Record(f"{i}.jpg", i // 2, s, tuple(c))
        for i, (s, c) in enumerate(zip(splits, captions, strict=True))
    ]
    ann = Annotations("tiny", "imgs", recs)
    ann.save(path)
    return ann


def test_round_trip_rows_follow_flat_caption_order(tmp_path):
    ann = write_table(tmp_path / "ann.json")
    built = build_cache(tmp_path / "ann.json", "minilm", tmp_path / "tok.npz", max_len=12)
    cache = load_cache(tmp_path / "tok.npz")
    assert cache.ids.dtype == np.int32 and cache.mask.dtype == np.uint8
    assert cache.ids.shape == cache.mask.shape == (6, 12)
    np.testing.assert_array_equal(cache.ids, built.ids)
    meta = cache.meta
    assert (meta["pad_id"], meta["cls_id"], meta["sep_id"], meta["mask_id"]) == (0, 101, 102, 103)
    assert meta["vocab_size"] == 30522 and meta["max_len"] == 12 and meta["add_sep"] is True
    assert meta["spec"] == "minilm" and len(meta["key"]) == 64
    tok = Tokenizer.from_str(meta["tokenizer_json"])
    for k, _, cap in ann.captions():
        assert cache.ids[k].tolist() == tok.encode(clean_caption(cap)).ids
        assert cache.decode(k) == clean_caption(cap)
        n = int(cache.mask[k].sum())
        assert cache.ids[k, 0] == 101 and cache.ids[k, n - 1] == 102 and not cache.ids[k, n:].any()
    cache.check_matches(ann)
    # the npz opens without pickles
    with np.load(tmp_path / "tok.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["ids", "mask", "meta"]


def test_same_inputs_is_noop_and_changes_rebuild(tmp_path, capsys):
    ann_path, out = tmp_path / "ann.json", tmp_path / "tok.npz"
    write_table(ann_path)
    build_cache(ann_path, "wordpiece:80", out, max_len=10)
    key = load_cache(out).meta["key"]
    os.utime(out, (1_000_000, 1_000_000))
    capsys.readouterr()
    build_cache(ann_path, "wordpiece:80", out, max_len=10)
    assert "up to date" in capsys.readouterr().out
    assert out.stat().st_mtime == 1_000_000

    # one caption changed (a test caption: the wordpiece vocabulary stays the same) -> rebuilt
    ann = Annotations.load(ann_path)
    recs = list(ann.records)
    recs[3] = Record(recs[3].image, recs[3].pid, recs[3].split, ("A man with a red cap.", "x"))
    Annotations(ann.dataset, ann.image_root, recs).save(ann_path)
    build_cache(ann_path, "wordpiece:80", out, max_len=10)
    assert "up to date" not in capsys.readouterr().out
    rebuilt = load_cache(out)
    assert rebuilt.meta["key"] != key and out.stat().st_mtime != 1_000_000
    assert rebuilt.decode(4).startswith("a man with a red")  # "cap" maybe truncated
    with pytest.raises(DataError, match="other captions"):
        rebuilt.check_matches(Annotations("t", "i", recs[:2]))

    # another tokenizer, max_len or layout -> another key
    keys = {rebuilt.meta["key"]}
    for spec, max_len, sep in (
        ("minilm", 10, True),
        ("wordpiece:80", 12, True),
        ("wordpiece:80", 10, False),
    ):
        keys.add(build_cache(ann_path, spec, out, max_len=max_len, add_sep=sep).meta["key"])
    assert len(keys) == 4
    assert not load_cache(out).meta["add_sep"]
    assert 3 not in load_cache(out).ids  # wordpiece [SEP] id is 3


def test_unreadable_cache_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_cache(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="rasa data tokenize"):
        load_cache(tmp_path / "bad.npz")


def test_cli_tokenize(tmp_path):
    write_table(tmp_path / "ann.json")
    cmd = [
        sys.executable,
        "-m",
        "rasa",
        "data",
        "tokenize",
        "--annotations",
        str(tmp_path / "ann.json"),
        "--tokenizer",
        "wordpiece:100",
        "--max-len",
        "16",
        "--out",
        str(tmp_path / "tok.npz"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert load_cache(tmp_path / "tok.npz").ids.shape == (6, 16)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0 and "up to date" in proc.stdout
    meta = json.loads(json.dumps(load_cache(tmp_path / "tok.npz").meta))
    assert meta["spec"] == "wordpiece:100"
    bad = [*cmd[:-4], "nonsense", *cmd[-3:]]
    proc = subprocess.run(bad, capture_output=True, text=True)
    assert proc.returncode == 2 and "nonsense" in proc.stderr


def test_cache_spec_reuses_another_caches_tokenizer(tmp_path):
    """Table 7: a target dataset tokenized with the vocabulary learnt on the source dataset."""
    write_table(tmp_path / "src.json")
    src = build_cache(tmp_path / "src.json", "wordpiece:60", tmp_path / "src.npz", max_len=16)
    target = [
        ("A child in a green hat.",),
        ("A man in a black jacket.",),
        ("Grey coat.",),
        ("Woman, red bag.",),
    ]
    write_table(tmp_path / "dst.json", target)
    spec = f"cache:{tmp_path / 'src.npz'}"
    dst = build_cache(tmp_path / "dst.json", spec, tmp_path / "dst.npz", max_len=16)
    own = build_cache(tmp_path / "dst.json", "wordpiece:60", tmp_path / "own.npz", max_len=16)
    assert dst.meta["vocab_size"] == src.meta["vocab_size"]
    assert dst.tokenizer().get_vocab() == src.tokenizer().get_vocab()
    assert own.tokenizer().get_vocab() != src.tokenizer().get_vocab()
    # the same caption gets the same ids in both datasets; unseen words fall back to pieces/[UNK]
    np.testing.assert_array_equal(dst.ids[1], src.ids[0])
    assert dst.meta["spec"] == spec and dst.meta["dataset"] == "tiny"


def test_cache_spec_of_a_missing_cache_names_it(tmp_path):
    write_table(tmp_path / "dst.json")
    with pytest.raises(DataError, match="nope.npz: token cache not found"):
        build_cache(tmp_path / "dst.json", f"cache:{tmp_path / 'nope.npz'}", tmp_path / "d.npz")


def test_generator_cli_trains_once_beside_the_cache(tmp_path):
    """`rasa generator` (the workflow's f-RTD step) writes <tokens>.rtd_generator.pt once."""
    from rasa.cli import main
    from rasa.models.generator import load_generator

    write_table(tmp_path / "ann.json")
    build_cache(tmp_path / "ann.json", "wordpiece:60", tmp_path / "tok.npz", max_len=16)
    argv = ["generator", "--annotations", str(tmp_path / "ann.json"),
            "--tokens", str(tmp_path / "tok.npz"), "--steps", "2"]  # fmt: skip
    assert main(argv) == 0
    path = tmp_path / "tok.npz.rtd_generator.pt"
    stamp = path.stat().st_mtime_ns
    gen = load_generator(path, vocab_size=load_cache(tmp_path / "tok.npz").vocab_size)
    assert gen.meta["cache_key"] == load_cache(tmp_path / "tok.npz").meta["key"]
    assert main(argv) == 0 and path.stat().st_mtime_ns == stamp  # same cache: left as is
