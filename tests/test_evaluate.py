"""Evaluation of a model on a split: wiring (pids, caption rows, gallery order) against a
direct reference, the metrics/topk files of a checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rasa.data.annotations import Annotations, Record
from rasa.data.dataset import ImageDataset, split_captions
from rasa.data.token_cache import build_cache
from rasa.engine.evaluate import evaluate_checkpoint, evaluate_model
from rasa.engine.metrics import METRIC_KEYS, retrieval_metrics
from rasa.engine.ranking import rerank_naive
from rasa.errors import ConfigError
from rasa.models import create_model

WORDS = (
    "a man woman in red blue green shirt pants bag hat black white shoes with long short".split()
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


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


def test_load_model_for_eval_reads_official_checkpoints() -> None:
    from pathlib import Path

    from rasa.engine.evaluate import load_model_for_eval

    fixture = Path(__file__).parent / "fixtures" / "official_rasa_tiny"
    model, config = load_model_for_eval(fixture / "checkpoint.pth")
    assert config["resize"] == "stretch"  # the official transform squeezes images
    outputs = torch.load(fixture / "outputs.pt", weights_only=True)
    assert model.config.embed_dim == outputs["image_feat"].shape[1]


@pytest.fixture(scope="module")
def fine_dataset(tmp_path_factory):
    """A toy CUB: classes of 3 images with 2 captions each, disjoint train/test classes."""
    root = tmp_path_factory.mktemp("cubset")
    rng = np.random.default_rng(1)
    records = []
    for cls in range(1, 7):
        split = "train" if cls <= 2 else "test"
        for j in range(3):
            name = f"{cls:03d}.Toy/img_{j}.jpg"
            (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 255, size=(40, 20, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
            caps = tuple(" ".join(rng.choice(WORDS, size=rng.integers(4, 10))) for _ in range(2))
            records.append(Record(name, cls, split, caps))
    ann = Annotations("cub", "images", records, {"format": "cub"})
    ann_path = root / "annotations.json"
    ann.save(ann_path)
    cache_path = root / "tokens.npz"
    cache = build_cache(ann_path, "wordpiece:120", cache_path, max_len=12, progress=False)
    torch.manual_seed(1)
    model = create_model(
        "tiny", image_size=(32, 16), vocab_size=max(cache.vocab_size, 8), queue_size=16
    ).eval()
    return ann, ann_path, cache_path, model


def class_reference(model, ann, ann_path, cache_path, k):
    """The paper's description, literally: class scores from the average text embedding
    (first stage) and, for each class's top k images, the ITM head on the multi-modal
    embeddings averaged over the class's captions."""
    gallery = ImageDataset(ann, ann_path, "test", model.config.image_size)
    caps = split_captions(ann, ann_path, cache_path, "test")
    classes = sorted(set(caps.pids.tolist()))
    with torch.no_grad():
        images = torch.stack([gallery[i]["image"] for i in range(len(gallery))])
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(caps.ids, caps.mask)
        text_feats, image_feats = model.text_embed(text_tokens), model.image_embed(image_tokens)
        first = torch.stack([text_feats[caps.pids == c].mean(0) @ image_feats.T for c in classes])
        final = first.clone()
        for row, c in enumerate(classes):
            rows = (caps.pids == c).nonzero()[:, 0]
            cand = torch.sort(first[row], descending=True, stable=True).indices[:k]
            for g in cand.tolist():
                fused = model.fuse(
                    text_tokens[rows], caps.mask[rows],
                    image_tokens[g : g + 1].expand(len(rows), -1, -1),
                )  # fmt: skip
                logit = model.itm_head(fused[:, 0].mean(0))
                final[row, g] = 2.0 + torch.softmax(logit, -1)[1]
    return first, final, torch.tensor(classes), gallery.pids


def _top1_and_ap(scores, classes, image_pids, k=50):
    """Naive TR R@1 (argmax class per image) and AP@k (hits among each class's top k / k)."""
    best = classes[scores.argmax(0)]
    r1 = 100.0 * (best == image_pids).double().mean().item()
    n = min(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :n]
    ap = 100.0 * (image_pids[order] == classes[:, None]).double().mean().item()
    return r1, ap


@pytest.mark.parametrize("k", [0, 2, 9])
def test_fine_grained_class_level_protocol(fine_dataset, k) -> None:
    ann, ann_path, cache_path, model = fine_dataset
    metrics, _ = evaluate_model(
        model, ann, ann_path, cache_path, "test", k=k, batch_size=4, pair_batch=5, progress=False
    )
    first, final, classes, image_pids = class_reference(model, ann, ann_path, cache_path, k)
    if k == 0:
        final = first
    r1, ap = _top1_and_ap(final, classes, image_pids)
    r1_first, ap_first = _top1_and_ap(first, classes, image_pids)
    assert metrics["i2t"]["r1"] == pytest.approx(r1) and metrics["ap50"] == pytest.approx(ap)
    assert metrics["i2t"]["first_stage"]["r1"] == pytest.approx(r1_first)
    assert metrics["first_stage"]["ap50"] == pytest.approx(ap_first)
    # 4 classes x 3 images: AP@50 looks at all 12 images, so each class scores 3/12 at most
    assert metrics["ap50"] == pytest.approx(25.0)
    assert metrics["i2t"]["num_queries"] == 12 and metrics["i2t"]["num_gallery"] == 4
    assert metrics["class_level"] == {"num_classes": 4, "num_images": 12, "ap_k": 50, "k": k}
    # the caption-level text->image keys stay (24 captions over 12 images)
    assert set(METRIC_KEYS) <= set(metrics) and metrics["num_queries"] == 24


def test_fine_grained_scores_match_reference(fine_dataset) -> None:
    from rasa.engine.evaluate import class_level_scores, embed_texts, similarity

    ann, ann_path, cache_path, model = fine_dataset
    first_ref, final_ref, classes_ref, _ = class_reference(model, ann, ann_path, cache_path, 5)
    gallery = ImageDataset(ann, ann_path, "test", model.config.image_size)
    caps = split_captions(ann, ann_path, cache_path, "test")
    with torch.no_grad():
        images = torch.stack([gallery[i]["image"] for i in range(len(gallery))])
        image_tokens = model.encode_image(images)
        image_feats = model.image_embed(image_tokens)
    text_tokens, text_feats = embed_texts(
        model, caps.ids, caps.mask, 7, torch.device("cpu"), progress=False
    )
    sims = similarity(text_feats, image_feats, torch.device("cpu"))
    first, final, classes = class_level_scores(
        model, text_tokens, caps.mask, caps.pids, sims, image_tokens, 5, pair_batch=3
    )
    assert torch.equal(classes, classes_ref)
    assert torch.allclose(first, first_ref, atol=1e-5)
    assert torch.allclose(final, final_ref, atol=1e-5)


def test_fine_grained_checkpoint_keys_for_the_report(fine_dataset, tmp_path) -> None:
    from rasa.engine.checkpoint import save_checkpoint
    from rasa.report.results import run_from_record

    ann, ann_path, cache_path, model = fine_dataset
    ckpt = tmp_path / "checkpoint_best.pt"
    config = {"name": "synth-cub-tiny-m-rtd", "dataset": "synth-cub", "backbone": "tiny",
              "variant": "m-rtd", "seed": 0, "train": {"resize": "pad"}}  # fmt: skip
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(ckpt, model=model, optimizer=opt, step=1, epoch=0, step_in_epoch=1,
                    config=config)  # fmt: skip
    out = tmp_path / "test.json"
    evaluate_checkpoint(ckpt, ann_path, cache_path, "test", out, k=4, progress=False)
    written = json.loads(out.read_text())
    assert {"i2t", "ap50", "class_level", *METRIC_KEYS} <= set(written)
    run = run_from_record(written, out)
    assert run.values["tr_r1"] == pytest.approx(written["i2t"]["r1"])
    assert run.values["ir_ap50"] == pytest.approx(written["ap50"])


def test_flickr_and_coco_get_both_directions_by_default(dataset, tmp_path) -> None:
    ann, ann_path, cache_path, model = dataset
    for name in ("flickr30k", "coco"):
        renamed = Annotations(name, str(ann.resolve_image_root(ann_path)), ann.records, {})
        path = tmp_path / f"{name}.json"
        renamed.save(path)
        metrics, _ = evaluate_model(model, None, path, cache_path, "test", k=3, progress=False)
        assert {"r1", "r5", "r10"} <= set(metrics) and {"r1", "r5", "r10"} <= set(metrics["i2t"])
        assert "ap50" not in metrics and metrics["i2t"]["num_queries"] == 8
