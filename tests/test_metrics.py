"""Retrieval metrics: hand-computed cases (ties, several correct items), scikit-learn and naive
references, chunking invariance, and the official fixture's metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from rasa.engine.metrics import (
    ap_at_k,
    class_average,
    fine_grained_metrics,
    image_to_text_metrics,
    ranked_matches,
    retrieval_metrics,
    top_indices,
)
from rasa.errors import RasaError

FIXTURES = sorted(
    p
    for p in (Path(__file__).parent / "fixtures").iterdir()
    if (p / "outputs.pt").is_file() and (p / "inputs.pt").is_file()
)


def naive_metrics(scores: np.ndarray, qp: np.ndarray, gp: np.ndarray) -> dict[str, float]:
    """Per-query Python loop: stable descending ranking, ties by gallery index."""
    r = {1: [], 5: [], 10: []}
    aps, inps = [], []
    for i in range(scores.shape[0]):
        order = sorted(range(scores.shape[1]), key=lambda j: (-scores[i, j], j))
        m = [gp[j] == qp[i] for j in order]
        for k in r:
            r[k].append(any(m[:k]))
        hits = [rank + 1 for rank, ok in enumerate(m) if ok]
        if hits:
            aps.append(np.mean([(n + 1) / rank for n, rank in enumerate(hits)]))
            inps.append(len(hits) / hits[-1])
        else:
            aps.append(0.0)
            inps.append(0.0)
    out = {f"r{k}": 100 * float(np.mean(v)) for k, v in r.items()}
    out.update(mAP=100 * float(np.mean(aps)), mINP=100 * float(np.mean(inps)))
    out["r_mean"] = (out["r1"] + out["r5"] + out["r10"]) / 3
    return out


def test_hand_computed_with_ties() -> None:
    # gallery pids [0, 1, 2, 0]; row 0 ties items 0 and 2 at 0.5: item 0 (lower index) ranks first.
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1], [0.5, 0.9, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2]])
    qp, gp = [0, 2, 0], [0, 1, 2, 0]
    m = retrieval_metrics(scores, qp, gp)
    # query 0: ranking 1,0,2,3 -> hits at ranks 2 and 4: AP = (1/2 + 2/4)/2 = 0.5, INP = 2/4
    # query 1 (pid 2): hit at rank 3 only: AP = 1/3, INP = 1/3
    # query 2: all tied -> ranking 0,1,2,3 -> hits at ranks 1 and 4: AP = (1 + 2/4)/2, INP = 2/4
    assert m["r1"] == pytest.approx(100 / 3)
    assert m["r5"] == pytest.approx(100.0)
    assert m["r10"] == pytest.approx(100.0)
    assert m["mAP"] == pytest.approx(100 * (0.5 + 1 / 3 + 0.75) / 3)
    assert m["mINP"] == pytest.approx(100 * (0.5 + 1 / 3 + 0.5) / 3)
    assert m["r_mean"] == pytest.approx((100 / 3 + 200) / 3)
    assert (m["num_queries"], m["num_gallery"], m["num_queries_without_match"]) == (3, 4, 0)


def test_official_constant_score_ties_rank_by_index() -> None:
    # the official layout: top-k scored, every other image -100; the correct image (index 4)
    # ranks 6th: after 2, 5 and, among the -100 tail, after indices 0, 1 and 3.
    scores = torch.tensor([[-100.0, -100.0, 3.0, -100.0, -100.0, 1.0]])
    m = retrieval_metrics(scores, [7], [1, 2, 3, 4, 7, 5])
    assert m["r1"] == 0.0 and m["r5"] == 0.0 and m["r10"] == 100.0
    assert m["mAP"] == pytest.approx(100 / 6) and m["mINP"] == pytest.approx(100 / 6)


def test_rank_k_beyond_gallery_and_no_match() -> None:
    scores = torch.tensor([[0.1, 0.3, 0.2], [0.3, 0.2, 0.1]])
    m = retrieval_metrics(scores, [1, 9], [0, 0, 1])
    # query 0: pid 1 at index 2, ranked 2nd; query 1: pid 9 absent
    assert m["r1"] == 0.0 and m["r5"] == 50.0 and m["r10"] == 50.0
    assert m["mAP"] == pytest.approx(25.0) and m["mINP"] == pytest.approx(25.0)
    assert m["num_queries_without_match"] == 1


@pytest.mark.parametrize("seed", [0, 1])
def test_against_sklearn_and_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, g = 37, 23
    gp = rng.integers(0, 6, size=g)
    qp = gp[rng.integers(0, g, size=q)]  # every query has a correct item
    scores = rng.standard_normal((q, g)).astype(np.float32)  # tie-free
    ours = retrieval_metrics(torch.from_numpy(scores), qp, gp, chunk_rows=5)
    ap = [average_precision_score(gp == qp[i], scores[i]) for i in range(q)]
    assert ours["mAP"] == pytest.approx(100 * np.mean(ap), abs=1e-6)
    ref = naive_metrics(scores, qp, gp)
    for key in ("r1", "r5", "r10", "mAP", "mINP", "r_mean"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_naive_reference_with_heavy_ties_and_chunking() -> None:
    rng = np.random.default_rng(3)
    q, g = 29, 17
    gp = rng.integers(0, 4, size=g)
    qp = rng.integers(0, 5, size=q)  # some queries without a match
    scores = rng.integers(0, 3, size=(q, g)).astype(np.float32)  # many ties
    ref = naive_metrics(scores, qp, gp)
    for rows in (None, 1, 4, 100):
        ours = retrieval_metrics(torch.from_numpy(scores), qp, gp, chunk_rows=rows)
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], abs=1e-6), (rows, key)


def test_ranked_matches_chunks_concatenate() -> None:
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
    chunks = list(ranked_matches(scores, [0, 0, 1], [0, 1], chunk_rows=2))
    assert [c.shape[0] for c in chunks] == [2, 1]
    assert torch.cat(chunks).tolist() == [[False, True], [True, False], [False, True]]


def test_image_to_text_is_the_transpose() -> None:
    # 3 captions x 2 images; captions 0,1 describe image 0 and caption 2 image 1
    s = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    m = image_to_text_metrics(s, [10, 10, 11], [10, 11])
    # image 0 ranks captions 0,2,1 -> hits at 1,3: AP=(1+2/3)/2, INP=2/3
    # image 1 ranks captions 1,2,0 -> hit at 2: AP=1/2, INP=1/2
    assert m["r1"] == 50.0 and m["r5"] == 100.0
    assert m["mAP"] == pytest.approx(100 * ((1 + 2 / 3) / 2 + 0.5) / 2)
    assert m["mINP"] == pytest.approx(100 * (2 / 3 + 0.5) / 2)
    assert m["num_queries"] == 2 and m["num_gallery"] == 3


def test_top_indices_stable() -> None:
    s = torch.tensor([[0.0, 2.0, 0.0, 2.0, 1.0]])
    assert top_indices(s, 4).tolist() == [[1, 3, 4, 0]]
    assert top_indices(s, 10).shape == (1, 5)


@pytest.mark.parametrize("n", [1, 3, 7, 17])
def test_top_indices_equals_stable_full_sort(n: int) -> None:
    gen = torch.Generator().manual_seed(n)
    s = torch.randint(0, 4, (31, 17), generator=gen).float()  # heavy ties at every boundary
    s[0] = -100.0  # one row entirely tied
    ref = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :n]
    assert torch.equal(top_indices(s, n, chunk_rows=4), ref)


def test_bad_input_raises() -> None:
    with pytest.raises(RasaError, match="query ids"):
        retrieval_metrics(torch.zeros(2, 3), [0], [0, 1, 2])
    with pytest.raises(RasaError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), [0], [0, 1])


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_official_fixture_metrics_all(fixture: Path) -> None:
    inputs = torch.load(fixture / "inputs.pt", weights_only=True)
    outputs = torch.load(fixture / "outputs.pt", weights_only=True)
    ours = retrieval_metrics(outputs["scores_all"], inputs["txt2person"], inputs["img2person"])
    for key, value in outputs["metrics_all"].items():
        assert ours[key] == pytest.approx(float(value), abs=1e-3), key


# --- fine-grained protocol (CUB/Flowers, Table 6) -------------------------------------------


def test_class_average_by_hand():
    scores = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [0.5, 0.5]])
    avg, classes = class_average(scores, [7, 2, 7, 2])
    assert classes.tolist() == [2, 7]
    assert avg.tolist() == [[1.75, 1.25], [3.0, 2.0]]
    logits, _ = class_average(torch.arange(12.0).view(4, 3, 1), [1, 1, 2, 2])  # [Q, k, 2]-like
    assert logits.squeeze(-1).tolist() == [[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]
    with pytest.raises(RasaError, match="one id per row"):
        class_average(scores, [1, 2])


def test_ap_at_k_by_hand():
    # 2 classes (text queries) x 6 images; images 0-2 are class 1, images 3-5 class 2
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.8, 0.7, 0.2, 0.3],  # top 3: 0 (hit), 2 (hit), 3 (miss) -> 2/3
            [0.5, 0.5, 0.1, 0.9, 0.2, 0.4],  # top 3: 3 (hit), 0 (miss, tie by index), 1 -> 1/3
        ]
    )
    gp = [1, 1, 1, 2, 2, 2]
    assert ap_at_k(scores, [1, 2], gp, k=3) == pytest.approx(100 * (2 / 3 + 1 / 3) / 2)
    assert ap_at_k(scores, [1, 2], gp, k=1) == pytest.approx(100.0)
    # k beyond the gallery: the whole gallery (3 of 6 correct for each class)
    assert ap_at_k(scores, [1, 2], gp, k=50) == pytest.approx(50.0)
    with pytest.raises(RasaError, match="k >= 1"):
        ap_at_k(scores, [1, 2], gp, k=0)


def test_fine_grained_metrics_against_sklearn():
    from sklearn.metrics import precision_score, top_k_accuracy_score

    rng = np.random.default_rng(3)
    n_cls, per = 5, 60  # 60 images per class: AP@50 is below 100 only through mistakes
    image_pids = np.repeat(np.arange(10, 10 + n_cls), per)
    classes = np.arange(10, 10 + n_cls)
    # class scores with signal: an image's own class gets a bonus
    scores = rng.normal(size=(n_cls, n_cls * per)) + 1.2 * (classes[:, None] == image_pids)
    out = fine_grained_metrics(torch.tensor(scores), classes, image_pids)
    tr = top_k_accuracy_score(image_pids, scores.T, k=1, labels=classes)
    assert out["i2t"]["r1"] == pytest.approx(100 * tr)
    precisions = []
    for c, row in zip(classes, scores, strict=True):
        top = np.argsort(-row, kind="stable")[:50]
        predicted = np.zeros(len(row), dtype=bool)
        predicted[top] = True
        precisions.append(precision_score(image_pids == c, predicted))
    assert out["ap50"] == pytest.approx(100 * np.mean(precisions))
    assert 20 < out["ap50"] < 100 and 20 < out["i2t"]["r1"] < 100
    perfect = fine_grained_metrics(torch.tensor(classes[:, None] == image_pids).float(),
                                   classes, image_pids)  # fmt: skip
    assert perfect["i2t"]["r1"] == 100.0 and perfect["ap50"] == 100.0
