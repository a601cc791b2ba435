"""Evaluation of a model on a split: wiring (pids, caption rows, gallery order) against a
direct reference, the metrics/topk files of a checkpoint, and the benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rasa.data.annotations import Annotations, Record
from rasa.data.dataset import ImageDataset, split_captions
from rasa.data.token_cache import build_cache
from rasa.engine.evaluate import bench_evaluate, evaluate_checkpoint, evaluate_model
from rasa.engine.metrics import METRIC_KEYS, retrieval_metrics
from rasa.engine.ranking import rerank_naive
from rasa.errors import ConfigError
from rasa.models import create_model

WORDS = (
    "a man woman in red blue green shirt pants bag hat black white shoes with long short".split()
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalset")
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir()
    records = []
    for i in range(14):
        pid = i // 2
        split = "train" if pid < 3 else "test"
        name = f"p{pid}_{i}.png"
        pixels = rng.integers(0, 255, size=(40, 20, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / name)
        caps = tuple(
            " ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(1 + i % 2)
        )
        records.append(Record(name, 100 + pid, split, caps))
    ann = Annotations("toy", "imgs", records, {"format": "test"})
    ann_path = root / "annotations.json"
    ann.save(ann_path)
    cache_path = root / "tokens.npz"
    cache = build_cache(ann_path, "wordpiece:120", cache_path, max_len=16, progress=False)
    torch.manual_seed(0)
    model = create_model(
        "tiny", image_size=(32, 16), vocab_size=max(cache.vocab_size, 8), queue_size=16
    ).eval()
    return ann, ann_path, cache_path, model


def reference(model, ann, ann_path, cache_path, k):
    gallery = ImageDataset(ann, ann_path, "test", model.config.image_size)
    caps = split_captions(ann, ann_path, cache_path, "test")
    with torch.no_grad():
        images = torch.stack([gallery[i]["image"] for i in range(len(gallery))])
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(caps.ids, caps.mask)
        sims = model.text_embed(text_tokens) @ model.image_embed(image_tokens).T
    scores = rerank_naive(model, text_tokens, caps.mask, sims, image_tokens, k)
    first = retrieval_metrics(sims, caps.pids, gallery.pids)
    return retrieval_metrics(scores, caps.pids, gallery.pids), first, scores


def test_evaluate_model_matches_direct_reference(dataset) -> None:
    ann, ann_path, cache_path, model = dataset
    metrics, topk = evaluate_model(
        model, ann, ann_path, cache_path, "test", k=3, batch_size=4, pair_batch=5,
        image_block=3, progress=False,
    )  # fmt: skip
    final, first, scores = reference(model, ann, ann_path, cache_path, 3)
    n_caps = sum(len(r.captions) for r in ann.split("test"))
    assert metrics["num_queries"] == n_caps and metrics["num_gallery"] == 8
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(final[key], abs=1e-6), key
        assert metrics["first_stage"][key] == pytest.approx(first[key], abs=1e-6), key
    assert metrics["k"] == 3 and metrics["layout"] == "ours"

    # topk.json: per caption its top 10 (here the whole gallery of 8), real records
    assert topk["split"] == "test" and topk["k"] == 8 and len(topk["queries"]) == n_caps
    flat = {k: (i, c) for k, i, c in ann.captions("test")}
    best = scores.argmax(1)
    test_records = [i for i, r in enumerate(ann.records) if r.split == "test"]
    for row, q in enumerate(topk["queries"]):
        rec, caption = flat[q["caption_index"]]
        assert q["caption"] == caption and q["pid"] == ann.records[rec].pid
        assert q["topk_records"][0] == test_records[int(best[row])]
        assert sorted(q["topk_records"]) == test_records
        assert q["topk_images"] == [ann.records[r].image for r in q["topk_records"]]
        assert q["topk_pids"] == [ann.records[r].pid for r in q["topk_records"]]


def test_image_to_text_direction(dataset) -> None:
    ann, ann_path, cache_path, model = dataset
    metrics, _ = evaluate_model(
        model, ann, ann_path, cache_path, "test", k=3, i2t=True, progress=False
    )
    gallery = ImageDataset(ann, ann_path, "test", model.config.image_size)
    caps = split_captions(ann, ann_path, cache_path, "test")
    with torch.no_grad():
        images = torch.stack([gallery[i]["image"] for i in range(len(gallery))])
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(caps.ids, caps.mask)
        sims = model.text_embed(text_tokens) @ model.image_embed(image_tokens).T
    scores = rerank_naive(model, text_tokens, caps.mask, sims, image_tokens, 3, direction="i2t")
    ref = retrieval_metrics(scores, gallery.pids, caps.pids)
    first = retrieval_metrics(sims.T, gallery.pids, caps.pids)
    assert metrics["i2t"]["num_queries"] == 8
    for key in METRIC_KEYS:
        assert metrics["i2t"][key] == pytest.approx(ref[key], abs=1e-6), key
        assert metrics["i2t"]["first_stage"][key] == pytest.approx(first[key], abs=1e-6), key
    no_i2t, _ = evaluate_model(model, ann, ann_path, cache_path, "test", k=3, progress=False)
    assert "i2t" not in no_i2t  # a person-search table: text->image only


def test_k1_keeps_first_stage_ranking(dataset) -> None:
    # with k = 1 the re-ranked top candidate is the first-stage top: same ranking, same metrics
    ann, ann_path, cache_path, model = dataset
    metrics, _ = evaluate_model(model, ann, ann_path, cache_path, "test", k=1, progress=False)
    for key in METRIC_KEYS:
        assert metrics[key] == pytest.approx(metrics["first_stage"][key], abs=1e-9)


def test_evaluate_checkpoint_writes_files(dataset, tmp_path) -> None:
    from rasa.engine.checkpoint import save_checkpoint

    ann, ann_path, cache_path, model = dataset
    ckpt = tmp_path / "checkpoint_best.pt"
    config = {"name": "toy-tiny-itm", "dataset": "toy", "backbone": "tiny", "variant": "itm",
              "seed": 3, "train": {"resize": "pad"}}  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(ckpt, model=model, optimizer=opt, step=1, epoch=0, step_in_epoch=1,
                    config=config)  # fmt: skip
    out, topk_out = tmp_path / "m" / "test.json", tmp_path / "m" / "topk.json"
    metrics = evaluate_checkpoint(
        ckpt, ann_path, cache_path, "test", out, topk_out, k=4, batch_size=3, progress=False
    )
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(metrics))
    assert set(METRIC_KEYS) <= set(written) and set(METRIC_KEYS) <= set(written["first_stage"])
    meta = written["meta"]
    assert (meta["experiment"], meta["variant"], meta["seed"]) == ("toy-tiny-itm", "itm", 3)
    assert (meta["split"], meta["dataset"], meta["backbone"]) == ("test", "toy", "tiny")
    assert meta["checkpoint"] == str(ckpt) and meta["resize"] == "pad"
    final, _, _ = reference(model, ann, ann_path, cache_path, 4)
    assert written["r1"] == pytest.approx(final["r1"]) and written["mAP"] == pytest.approx(
        final["mAP"]
    )
    topk = json.loads(topk_out.read_text())
    assert topk["k"] == 8 and len(topk["queries"]) == written["num_queries"]

    # the same through `rasa evaluate` (device "auto")
    from rasa.cli import main

    cli_out = tmp_path / "cli.json"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--annotations", str(ann_path),
            "--tokens", str(cache_path), "--split", "test", "--out", str(cli_out), "--k-test", "4"]  # fmt: skip
    assert main(argv) == 0
    via_cli = json.loads(cli_out.read_text())
    for key in METRIC_KEYS:
        assert via_cli[key] == pytest.approx(written[key], abs=1e-9)


def test_bad_dtype(dataset) -> None:
    ann, ann_path, cache_path, model = dataset
    with pytest.raises(ConfigError, match="dtype"):
        evaluate_model(model, ann, ann_path, cache_path, "test", dtype="fp8", progress=False)


def test_bench_evaluate_small() -> None:
    torch.manual_seed(0)
    model = create_model("tiny", image_size=(32, 16), queue_size=16)
    report = bench_evaluate(model, num_queries=12, num_images=7, k=3, text_len=8, pair_batch=5)
    assert report["num_queries"] == 12 and report["k"] == 3
    assert report["max_abs_diff"] < 1e-4
    for key in ("embed_s", "rerank_s", "rerank_ms_per_query", "naive_ms_per_query", "speedup"):
        assert report[key] > 0


def test_load_model_for_eval_reads_official_checkpoints() -> None:
    from pathlib import Path

    from rasa.engine.evaluate import load_model_for_eval

    fixture = Path(__file__).parent / "fixtures" / "official_rasa_tiny"
    model, config = load_model_for_eval(fixture / "checkpoint.pth")
    assert config["resize"] == "stretch"  # the official transform squeezes images
    outputs = torch.load(fixture / "outputs.pt", weights_only=True)
    assert model.config.embed_dim == outputs["image_feat"].shape[1]
