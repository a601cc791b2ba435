"""Retrieval metrics for text-based person search: R@1/5/10, mAP, mINP (paper §4.1, Tables 1-3).

Every function takes a score matrix ``scores[Q, G]`` (higher = better; one row per query, one
column per gallery item), the person id of every query ``query_pids[Q]`` and of every gallery
item ``gallery_pids[G]``. A gallery item is *correct* for a query when the person ids are equal
(for Flickr30K/COCO the "person id" is the image id, so exactly the paired image is correct).

Definitions (all in percent, averaged over queries):

- ``r1``, ``r5``, ``r10`` (Rank-K / Recall@K): share of queries with at least one correct item
  among the first K of the ranking; a K beyond the gallery size means the whole list.
- ``mAP``: average precision over the *whole* ranking, ``AP = mean over correct items of
  (correct items up to its rank) / (its rank)``, averaged over queries (the official RaSa
  ``itm_eval``).
- ``mINP`` (IRRA's definition; the official RaSa code has none): ``INP = (number of correct
  items) / (rank of the last correct item)``, averaged over queries.
- ``r_mean = (r1 + r5 + r10) / 3``.

A query with no correct item in the gallery counts as a miss at every K and has AP = INP = 0
(the official code would divide by zero); ``num_queries_without_match`` reports how many.

Tie-breaking is deterministic: a stable sort by descending score, equal scores ranked by
gallery index ascending. Ties are common in the official two-stage layout, where every item
outside the top k gets the constant score -100.

Memory is bounded: queries are processed in chunks of ``chunk_rows`` rows, so at most
``chunk_rows x G`` entries of the sorted index/boolean matrices exist at once (at most about
``32 bytes x chunk_rows x G``). The default keeps a chunk near ``2**22`` entries (~130 MB), so
ICFG-PEDES test (19,848 x 19,848 = 394 M scores) never materialises its argsort.
Image-to-text retrieval (Flickr30K/COCO) is :func:`retrieval_metrics` on the transpose:
:func:`image_to_text_metrics`.

Fine-grained retrieval on CUB/Flowers (paper Appendix A.3, Table 6; the class-level protocol of
Reed et al., 2016, on disjoint test classes): every test class is one text query, its score
against an image the mean of its captions' scores (:func:`class_average`; with a linear score
this is the score of the averaged text embedding, the protocol's "average of the corresponding
text embeddings"). :func:`fine_grained_metrics` gives

- TR ``R@1`` (image→text): share of test images whose best-scoring class is their own (Reed's
  top-1 zero-shot accuracy), the ``r1`` of the ``i2t`` block (images ranking the classes);
- IR ``AP@50`` (text→image, :func:`ap_at_k`): "the percent of top-50 scoring images whose
  class matches that of the text query, averaged over the test classes" (Reed et al.; RaSa:
  "the average matching percentage of top-50 retrieved images of all test text classes").
  The denominator is 50 (the gallery size if smaller), so a class with fewer than 50 images
  cannot reach 100.

:func:`flat_metrics` flattens an evaluation's metrics (final and ``first_stage_``) for the
train log, the curves and the validation record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from rasa.errors import RasaError

METRIC_KEYS = ("r1", "r5", "r10", "mAP", "mINP", "r_mean")
# held-out ITM figures of pre-training (rasa.engine.pretrain) and the re-ranking depth
EXTRA_FLAT_KEYS = ("k", "itm_loss", "itm_acc", "itm_acc_pos", "itm_acc_neg", "itm_loss_hardest",
                   "itm_acc_hardest", "itm_loss_random", "itm_acc_random")  # fmt: skip
DEFAULT_CHUNK_ELEMENTS = 2**22


def _as_tensor(x: Tensor | Sequence[int], name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 1:
        raise RasaError(f"{name}: expected a 1-D sequence of ids, got shape {tuple(t.shape)}.")
    return t.long().cpu()


def _check(scores: Tensor, query_pids: Tensor, gallery_pids: Tensor) -> None:
    if scores.dim() != 2:
        raise RasaError(
            f"scores: expected a 2-D matrix [queries, gallery], got {tuple(scores.shape)}."
        )
    q, g = scores.shape
    if q != len(query_pids) or g != len(gallery_pids):
        raise RasaError(
            f"scores has shape {q} x {g} but there are {len(query_pids)} query ids and "
            f"{len(gallery_pids)} gallery ids; they must match the rows and columns."
        )
    if g == 0 or q == 0:
        raise RasaError(f"scores is empty ({q} x {g}): no queries or no gallery items to rank.")


def default_chunk_rows(num_gallery: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Rows per chunk so that one chunk holds about ``chunk_elements`` scores."""
    return max(1, chunk_elements // max(1, num_gallery))


def sorted_indices(scores: Tensor) -> Tensor:
    """Gallery indices of each row from best to worst: descending score, ties by index."""
    if torch.isnan(scores).any():
        raise RasaError(
            "scores contain NaN: the model produced invalid outputs (a diverged or corrupt "
            "checkpoint?); cannot rank the gallery."
        )
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def ranked_matches(
    scores: Tensor,
    query_pids: Tensor | Sequence[int],
    gallery_pids: Tensor | Sequence[int],
    chunk_rows: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[Tensor]:
    """Yield, per chunk of queries, the boolean matrix ``matches[q, r]`` = the item at rank r+1
    of query q is correct. Chunks follow the query order; each chunk is moved to ``device``
    (default: where ``scores`` lives) before sorting."""
    qp, gp = _as_tensor(query_pids, "query_pids"), _as_tensor(gallery_pids, "gallery_pids")
    _check(scores, qp, gp)
    rows = chunk_rows or default_chunk_rows(scores.shape[1])
    dev = torch.device(device) if device is not None else scores.device
    gp, qp = gp.to(dev), qp.to(dev)
    for start in range(0, scores.shape[0], rows):
        block = scores[start : start + rows].to(dev).contiguous()
        order = sorted_indices(block)
        yield gp[order] == qp[start : start + rows, None]


def _chunk_stats(matches: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per query of a chunk: first-hit rank (0 = none), AP, INP, number of correct items."""
    g = matches.shape[1]
    ranks = torch.arange(1, g + 1, device=matches.device, dtype=torch.float32)
    num_rel = matches.sum(1)
    has = num_rel > 0
    # rank of the first and last hit (1-based); 0 where the query has no hit
    first = torch.where(has, matches.float().argmax(1) + 1, torch.zeros_like(num_rel))
    last = (matches * ranks).amax(1)
    cum = matches.cumsum(1, dtype=torch.int32)
    prec_sum = torch.where(matches, cum / ranks, 0.0).sum(1)
    denom = num_rel.clamp(min=1).float()
    ap = torch.where(has, prec_sum / denom, 0.0)
    inp = torch.where(has, num_rel.float() / last.clamp(min=1), 0.0)
    return first, ap, inp, num_rel


def retrieval_metrics(
    scores: Tensor,
    query_pids: Tensor | Sequence[int],
    gallery_pids: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_rows: int | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float | int]:
    """R@K for each K in ``ks`` (keys ``r1``, ``r5``, ``r10``), mAP, mINP and r_mean, in percent.

    ``r_mean`` averages the R@K values. Also returns ``num_queries``, ``num_gallery`` and
    ``num_queries_without_match``. ``device`` sorts the chunks elsewhere (e.g. a GPU) than
    where ``scores`` lives.
    """
    firsts, aps, inps, nrel = [], [], [], []
    for matches in ranked_matches(scores, query_pids, gallery_pids, chunk_rows, device):
        first, ap, inp, num_rel = _chunk_stats(matches)
        firsts.append(first.cpu())
        aps.append(ap.double().cpu())
        inps.append(inp.double().cpu())
        nrel.append(num_rel.cpu())
    first = torch.cat(firsts)
    hit = first > 0
    out: dict[str, float | int] = {}
    for k in ks:
        out[f"r{k}"] = 100.0 * (hit & (first <= k)).double().mean().item()
    out["mAP"] = 100.0 * torch.cat(aps).mean().item()
    out["mINP"] = 100.0 * torch.cat(inps).mean().item()
    out["r_mean"] = sum(out[f"r{k}"] for k in ks) / len(ks)
    out["num_queries"] = int(scores.shape[0])
    out["num_gallery"] = int(scores.shape[1])
    out["num_queries_without_match"] = int((torch.cat(nrel) == 0).sum().item())
    return out


def image_to_text_metrics(
    scores_t2i: Tensor,
    text_pids: Tensor | Sequence[int],
    image_pids: Tensor | Sequence[int],
    ks: Sequence[int] = (1, 5, 10),
    chunk_rows: int | None = None,
) -> dict[str, float | int]:
    """Image→text retrieval (Flickr30K/COCO) from the text→image score matrix ``[T, I]``."""
    return retrieval_metrics(scores_t2i.t(), image_pids, text_pids, ks, chunk_rows)


def _top_block(block: Tensor, n: int) -> Tensor:
    """First ``n`` indices of each row of ``block`` by (score desc, index asc) in O(G) per row:
    everything above the n-th largest value, then the earliest items equal to it."""
    if torch.isnan(block).any():
        raise RasaError(
            "scores contain NaN: the model produced invalid outputs (a diverged or corrupt "
            "checkpoint?); cannot rank the gallery."
        )
    thr = block.topk(n, dim=1).values[:, -1:]  # n-th largest value per row
    above = block > thr
    equal = block == thr
    need = n - above.sum(1, keepdim=True)
    keep = above | (equal & (equal.cumsum(1) <= need))
    cols = keep.nonzero()[:, 1].view(block.shape[0], n)  # ascending index within a row
    order = torch.sort(block.gather(1, cols), dim=1, descending=True, stable=True).indices
    return cols.gather(1, order)


def top_indices(
    scores: Tensor,
    n: int,
    chunk_rows: int | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """The first ``n`` gallery indices of every row's ranking (same tie-breaking as the metrics:
    descending score, ties by index), as an int64 CPU tensor ``[Q, min(n, G)]``.

    Linear in G per row (a top-k plus a tie fix), not a full sort; chunks of rows are moved
    to ``device`` (default: where ``scores`` lives)."""
    if scores.dim() != 2:
        raise RasaError(f"scores: expected a 2-D matrix, got shape {tuple(scores.shape)}.")
    n = min(n, scores.shape[1])
    rows = chunk_rows or default_chunk_rows(scores.shape[1])
    dev = torch.device(device) if device is not None else scores.device
    parts = [
        _top_block(scores[s : s + rows].to(dev), n).cpu() for s in range(0, scores.shape[0], rows)
    ]
    return torch.cat(parts) if parts else torch.empty(0, n, dtype=torch.long)


def class_average(scores: Tensor, query_pids: Tensor | Sequence[int]) -> tuple[Tensor, Tensor]:
    """Mean of the rows of ``scores`` [Q, ...] over the queries of each id: ([C, ...] float32,
    the C ids ascending). Sums in float64, so the result does not depend on the row order."""
    qp = _as_tensor(query_pids, "query_pids")
    if scores.shape[0] != len(qp) or len(qp) == 0:
        raise RasaError(
            f"scores has {scores.shape[0]} rows but there are {len(qp)} query ids; expected one "
            "id per row (and at least one row)."
        )
    classes, inverse, counts = torch.unique(
        qp, sorted=True, return_inverse=True, return_counts=True
    )
    total = torch.zeros((len(classes), *scores.shape[1:]), dtype=torch.float64)
    total.index_add_(0, inverse, scores.detach().cpu().double())
    shape = (-1,) + (1,) * (scores.dim() - 1)
    return (total / counts.view(shape).double()).float(), classes


def ap_at_k(
    scores: Tensor,
    query_pids: Tensor | Sequence[int],
    gallery_pids: Tensor | Sequence[int],
    k: int = 50,
) -> float:
    """Reed et al.'s AP@k in percent: the share of each query's top ``k`` gallery items (ranked
    as in :func:`retrieval_metrics`) with the query's id, averaged over queries; ``k`` is capped
    at the gallery size."""
    qp, gp = _as_tensor(query_pids, "query_pids"), _as_tensor(gallery_pids, "gallery_pids")
    _check(scores, qp, gp)
    if k < 1:
        raise RasaError(f"AP@k: expected k >= 1, got {k}.")
    top = top_indices(scores, min(k, scores.shape[1]))
    return 100.0 * (gp[top] == qp[:, None]).double().mean().item()


def fine_grained_metrics(
    class_scores: Tensor,
    class_pids: Tensor | Sequence[int],
    image_pids: Tensor | Sequence[int],
    ap_k: int = 50,
) -> dict[str, object]:
    """Table 6's metrics from the class-level score matrix ``[C, G]`` (classes x images):
    ``{"i2t": retrieval_metrics of images ranking the classes (``r1`` = TR R@1), "ap50":
    AP@``ap_k`` of the classes ranking the images (IR)}``."""
    i2t = retrieval_metrics(class_scores.t(), image_pids, class_pids)
    return {"i2t": i2t, "ap50": ap_at_k(class_scores, class_pids, image_pids, ap_k)}


def flat_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an evaluation, first-stage ones prefixed ``first_stage_``."""
    out = {k: m[k] for k in METRIC_KEYS + EXTRA_FLAT_KEYS if k in m}
    fs = m.get("first_stage") or {}
    out.update({f"first_stage_{k}": fs[k] for k in METRIC_KEYS if k in fs})
    rel = m.get("at_fraction") or {}  # re-ranked at k relative to the gallery
    out.update({f"at_fraction_{k}": rel[k] for k in ("k", *METRIC_KEYS) if k in rel})
    return out
