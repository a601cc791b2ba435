"""Intra-modal pseudo identities: DBSCAN over k-reciprocal Jaccard distances (CMMT §3.1).

CMMT clusters the image features and the text features of the training set separately
(no identity labels) and trains with the cluster ids as pseudo identities; a sample DBSCAN
leaves as noise is "unclustered" (label -1). The distance is the k-reciprocal encoding
Jaccard distance of re-ranking (Zhong et al., CVPR 2017), as in SpCL/CMMT:

1. ``R(i, k1)``: the k1-reciprocal neighbours of i (j in kNN(i) and i in kNN(j), self included);
2. expansion: add ``R(c, k1/2)`` of each c in ``R(i, k1)`` that shares more than 2/3 of it;
3. ``V_i`` = Gaussian weights ``exp(-d(i, j))`` on that set, normalised to sum 1;
4. local query expansion: ``V_i`` averaged over i's k2 nearest neighbours;
5. ``d_J(i, j) = 1 - Σ_k min(V_ik, V_jk) / Σ_k max(V_ik, V_jk)``.

Steps 1-2 are boolean matrix products (N x N), step 5 loops over rows with the nonzeros of
``V_i`` only (``V`` has about k1 nonzeros per row), so memory is O(N²) floats: fine for the
training sets of the text re-id benchmarks (CUHK-PEDES: 34k images, ~4.6 GB at float32 — use
``metric="cosine"`` or a GPU there). ``metric="cosine"`` clusters on ``1 - cos`` instead.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import DBSCAN

from rasa.errors import ConfigError

METRICS = ("jaccard", "cosine")


def _normalise(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float(), dim=1)


def k_reciprocal_distance(features: torch.Tensor, k1: int = 30, k2: int = 6) -> torch.Tensor:
    """The ``[N, N]`` k-reciprocal Jaccard distance of L2-normalised ``features`` [N, D]."""
    f = _normalise(features)
    n = f.shape[0]
    k1, k2 = min(k1, n - 1), max(1, min(k2, n))
    dist = (2.0 - 2.0 * f @ f.T).clamp_min(0.0)
    dist.fill_diagonal_(0.0)  # the exact self distance: self first after a stable sort
    order = torch.argsort(dist, dim=1, stable=True)
    rows = torch.arange(n).view(-1, 1)

    def reciprocal(k: int) -> torch.Tensor:
        knn = torch.zeros(n, n, dtype=torch.bool)
        knn[rows, order[:, : k + 1]] = True
        return knn & knn.T

    recip = reciprocal(k1)  # R(i, k1) in row i
    recip_h = reciprocal(int(round(k1 / 2)))  # R(c, k1/2) in row c
    rf, rhf = recip.float(), recip_h.float()
    # overlap[c, i] = |R(c, k1/2) ∩ R(i, k1)|; c expands i when it is > 2/3 |R(c, k1/2)|
    overlap = rhf @ rf.T
    expands = recip & (overlap.T > (2.0 / 3.0) * rhf.sum(1).view(1, -1))
    expanded = recip | ((expands.float() @ rhf) > 0)
    weights = torch.where(expanded, torch.exp(-dist), torch.zeros_like(dist))
    v = weights / weights.sum(1, keepdim=True)
    if k2 > 1:
        v = v[order[:, :k2]].mean(dim=1)
    jaccard = torch.empty(n, n)
    for i in range(n):
        nz = torch.nonzero(v[i]).view(-1)
        m = torch.minimum(v[i, nz].view(1, -1), v[:, nz]).sum(1)  # Σ_k min(V_ik, V_jk)
        # Σ max = Σ V_i + Σ V_j - Σ min, rows of V sum to 1
        jaccard[i] = 1.0 - m / (2.0 - m)
    jaccard = torch.maximum(jaccard, jaccard.T).clamp_(0.0, 1.0)  # symmetric up to rounding
    jaccard.fill_diagonal_(0.0)
    return jaccard


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between rows of ``features``, clipped to [0, 2]."""
    f = _normalise(features)
    d = (1.0 - f @ f.T).clamp_(0.0, 2.0)
    d.fill_diagonal_(0.0)
    return d


def cluster(
    features: torch.Tensor,
    metric: str = "jaccard",
    eps: float = 0.6,
    min_samples: int = 4,
    k1: int = 30,
    k2: int = 6,
) -> np.ndarray:
    """DBSCAN pseudo labels (int64 [N], -1 = unclustered) of one modality's features."""
    if metric not in METRICS:
        raise ConfigError(f"cmmt.metric = {metric!r}: expected one of {', '.join(METRICS)}.")
    if features.shape[0] < 2:
        return np.full(features.shape[0], -1, dtype=np.int64)
    with torch.no_grad():
        d = (
            k_reciprocal_distance(features, k1, k2)
            if metric == "jaccard"
            else cosine_distance(features)
        )
    db = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed")
    return db.fit_predict(d.double().numpy()).astype(np.int64)


def with_singletons(labels: np.ndarray) -> np.ndarray:
    """Labels where every unclustered sample (-1) is a class of its own (ids after the clusters)."""
    labels = np.asarray(labels, dtype=np.int64)
    out = labels.copy()
    outliers = np.flatnonzero(labels < 0)
    start = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    out[outliers] = start + np.arange(outliers.size)
    return out


def pair_labels(
    image_labels: np.ndarray, text_labels: np.ndarray, pair_image: np.ndarray, mode: str
) -> np.ndarray:
    """One pseudo identity per (image, caption) pair, -1 when unclustered.

    ``pair_image[k]`` is the image of pair/caption k. ``mode``: ``"image"`` (the image's
    cluster), ``"text"`` (the caption's cluster) or ``"intersect"`` (clustered in both
    modalities; a class per distinct (image cluster, text cluster) combination).
    """
    li = np.asarray(image_labels, np.int64)[pair_image]
    lt = np.asarray(text_labels, np.int64)
    if mode == "image":
        return li.copy()
    if mode == "text":
        return lt.copy()
    if mode != "intersect":
        raise ConfigError(f"cmmt.pair_label = {mode!r}: expected image, text or intersect.")
    both = (li >= 0) & (lt >= 0)
    out = np.full(lt.shape, -1, dtype=np.int64)
    if both.any():
        _, inverse = np.unique(np.stack([li[both], lt[both]], 1), axis=0, return_inverse=True)
        out[both] = inverse.reshape(-1)
    return out


def summary(labels: np.ndarray) -> dict[str, int]:
    """Number of clusters and of unclustered samples."""
    labels = np.asarray(labels)
    return {
        "clusters": int(np.unique(labels[labels >= 0]).size),
        "outliers": int((labels < 0).sum()),
        "samples": int(labels.size),
    }
