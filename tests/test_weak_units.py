"""CMMT building blocks on hand-checkable inputs: Text-IoU, clustering, MPLR, CMPM, mining."""

from __future__ import annotations

import math

import numpy as np
import torch

from rasa.weak import clustering, mplr
from rasa.weak.losses import cmpm_textiou_loss, textiou_mining_loss
from rasa.weak.textiou import batch_iou, noun_phrases, phrase_vocabulary, text_iou


def test_noun_phrases_and_text_iou_on_crafted_captions():
    a = "A woman in a black and white striped T-shirt, blue jeans and white sneakers."
    assert noun_phrases(a) == {"black white striped t shirt", "blue jeans", "white sneaker"}
    assert noun_phrases("He carries a bag.") == {"bag"}
    assert noun_phrases("nothing to see here") == frozenset()
    # {red shirt, blue jeans} vs {blue jeans, red shirt, black shoe}: 2 / 3
    assert (
        text_iou("a man in a red shirt and blue jeans", "blue jeans, red shirt, black shoes")
        == 2 / 3
    )
    assert text_iou("nothing", "nothing") == 0.0


def test_batch_iou_matches_pairwise_definition():
    caps = ["red shirt and blue jeans", "blue jeans and black shoes", "a red shirt", "no phrase"]
    sets = [noun_phrases(c) for c in caps]
    ids, _ = phrase_vocabulary(sets)
    iou = batch_iou(ids)
    for i in range(4):
        for j in range(4):
            want = 1.0 if i == j else text_iou(caps[i], caps[j])
            assert math.isclose(float(iou[i, j]), want, abs_tol=1e-6)
    assert math.isclose(float(iou[0, 1]), 1 / 3, abs_tol=1e-6)


def _blobs() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3] * 5
    pts = [c + 0.05 * torch.randn(6, 8, generator=g) for c in centres]
    return torch.cat([*pts, torch.randn(1, 8, generator=g)])  # 3 clusters of 6 + 1 stray


def test_clustering_to_labels_recovers_blobs():
    feats = _blobs()
    for metric in ("jaccard", "cosine"):
        kw = {"eps": 0.6, "k1": 6, "k2": 2} if metric == "jaccard" else {"eps": 0.2}
        labels = clustering.cluster(feats, metric=metric, min_samples=3, **kw)
        assert len({int(x) for x in labels[:18]}) == 3 and (labels[:18] >= 0).all()
        for b in range(3):
            assert len(set(labels[b * 6 : b * 6 + 6].tolist())) == 1
    d = clustering.k_reciprocal_distance(feats, k1=6, k2=2)
    assert torch.allclose(d, d.T) and float(d.diag().abs().max()) == 0.0
    assert float(d[0, 1]) < float(d[0, 7])
    single = clustering.with_singletons(np.array([0, -1, 1, -1]))
    assert single.tolist() == [0, 2, 1, 3]
    assert clustering.pair_labels(
        np.array([0, -1]), np.array([5, 5, -1]), np.array([0, 0, 1]), "intersect"
    ).tolist() == [0, 0, -1]


def test_mplr_on_crafted_example():
    # images 0,1,2 in cluster 0; image 3 unclustered; image 4 in cluster 1 (alone: only itself)
    li = np.array([0, 0, 0, -1, 1])
    # captions: one per image, plus caption 5 of image 0 -> text_image
    text_image = np.array([0, 1, 2, 3, 4, 0])
    lt = np.array([-1, 7, 7, 7, -1, 7])
    img = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.05], [-1.0, 0.0]])
    txt = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.8, 0.2], [-1.0, 0.0], [1.0, 0.0]])
    out = mplr.refine(li, lt, text_image, img, txt)
    # text 0: image 0 clustered; nearest other in cluster 0 = image 1; its caption 1 -> label 7
    # text 4: image 4 alone in cluster 1 -> itself -> its caption 4 unclustered -> stays -1
    assert out.text_labels.tolist() == [7, 7, 7, 7, -1, 7]
    # image 3: caption 3 clustered (7); nearest other text in 7 = caption 1 or 5 -> image 1/0
    assert out.image_labels.tolist() == [0, 0, 0, 0, 1]
    assert (out.rescued_texts, out.rescued_images) == (1, 1)


def test_cmpm_loss_hand_computed():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised to the identity
    iou = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    # row 0: p = softmax(1, 0), q = (0.5, 0.5); row 1: p = softmax(0, 1), q = (0, 1)
    p = 1 / (1 + math.exp(-1))
    eps = 1e-8
    row0 = p * math.log(p / (0.5 + eps)) + (1 - p) * math.log((1 - p) / (0.5 + eps))
    row1 = (1 - p) * math.log((1 - p) / eps) + p * math.log(p / (1 + eps))
    got = cmpm_textiou_loss(t, v, iou, eps=eps)
    assert math.isclose(float(got), (row0 + row1) / 2, rel_tol=1e-5)
    assert float(cmpm_textiou_loss(t, v, torch.ones(2, 2), scale=0.0)) < 1e-6  # p = q -> 0


def test_mining_loss_picks_positive_and_hard_negative():
    sim = torch.tensor([[0.9, 0.8, 0.7], [0.1, 0.5, 0.2], [0.3, 0.2, 0.6]])
    iou = torch.tensor([[1.0, 0.0, 0.9], [0.0, 1.0, 0.0], [0.9, 0.0, 1.0]])
    got = textiou_mining_loss(sim, iou, topk=2, margin=0.2)
    # row 0: P = {0, 2} (min 0.7), Q = {1} (0.8) -> 0.3; row 1: no positive but itself
    # (0.5), Q = {0, 2} hardest 0.2 -> relu(0.2 + 0.2 - 0.5) = 0; row 2: P={0,2} min 0.3,
    # Q={1} 0.2 -> 0.1
    assert math.isclose(float(got), (0.3 + 0.0 + 0.1) / 3, abs_tol=1e-6)
