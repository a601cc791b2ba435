"""Two-stage text→image ranking (paper §3.5 "Inference"), batched and memory-bounded.

Stage 1 ranks the whole gallery by the unimodal similarity ``sims[Q, G]`` (cosine of the
projected CLS features). Stage 2 re-scores, for every query, its top ``k`` images (k = 128 in
the paper) with the p-ITM head on the cross-modal encoder's fused CLS.

What this does differently from the official loop (same function, far less work):

- no Python loop per query: the ``Q x k`` (query, candidate) pairs are flattened, grouped by
  block of images, sorted by caption length inside a block, and scored in chunks of
  ``pair_batch`` pairs (so a chunk carries little padding); optionally (``share_min``) an
  image that is a candidate of many queries gets chunks of its own whose K/V are broadcast
  rather than copied per pair;
- the cross-attention keys/values of every fusion layer are computed ONCE per gallery image
  (``model.precompute_image_kv``), one block of ``image_block`` images at a time, and gathered
  for the pairs of that block (the official code recomputes them for every pair);
- captions are trimmed to the longest one in each chunk (padding only costs time);
- only what the ITM head reads: K/V only for images in some top k, the first fusion layer's
  self-attention once per caption (it does not see the image), the last layer for [CLS] only;
- optional autocast (``autocast_dtype=torch.bfloat16``), on CUDA or a CPU.

The same pair scorer (:func:`score_pairs`) serves image→text re-ranking (``direction="i2t"``:
each image's top k captions, Flickr30K/COCO "TR" in Table 5).

Peak memory beyond the inputs (elements; times 4 bytes in float32, 2 under bf16 autocast), with
``n`` fusion layers, ``M`` image tokens, ``Dv`` image width, ``D`` text width, ``I`` the text
intermediate width, ``L`` the caption length and ``h`` heads::

    image_block * (M * Dv + 2 * n * M * D)                 # image tokens + K/V of one block
    + pair_batch * (2 * n * M * D                          # K/V gathered for the chunk
                    + L * (c * D + I) + h * L * M)         # fusion activations (c ~ 6)

plus ``Q * k * 2`` float32 logits and the ``[Q, G]`` output (CPU). Example, paper size
(M = 577, D = Dv = 768, I = 3072, L = 50, n = 6, bf16): image_block 256 -> ~3.0 GB,
pair_batch 256 -> ~3.1 GB (mostly the gathered K/V: 10.6 MB per pair).

Score layouts (:func:`compose_scores`):

- ``"official"``: the raw ITM logit of class "match" for the k candidates and the constant
  -100 for every other image (the official ``Retrieval.py``; ties among the -100 entries are
  broken by gallery index in :mod:`rasa.engine.metrics`);
- ``"ours"`` (default): ``2 + p`` for the candidates, ``p = softmax(itm)[..., 1]`` the match
  probability (in (0, 1)), and the unimodal similarity (in [-1, 1]) for every other image: the
  candidates come first in probability order, the rest keep their first-stage order instead of
  collapsing into a tie. ``2 + p`` is a float32 (resolution 2.4e-7 near 2): probabilities
  closer than that tie and fall back to gallery order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rasa.engine.metrics import top_indices
from rasa.engine.precision import autocast
from rasa.errors import ConfigError, RasaError

LAYOUTS = ("ours", "official")
DIRECTIONS = ("t2i", "i2t")
OFFICIAL_FILL = -100.0
CANDIDATE_OFFSET = 2.0


@dataclass
class RerankResult:
    """Stage-2 output: for each query its candidates and their ITM logits (CPU tensors)."""

    topk_index: Tensor  # [Q, k] int64 gallery indices, best first by unimodal similarity
    itm_logits: Tensor  # [Q, k, 2] float32, class 1 = match


def _take_rows(tree: Any, index: Tensor) -> Any:
    """Rows ``index`` (dim 0) of every tensor in a nested list/tuple (per-layer K/V)."""
    if isinstance(tree, Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take_rows(t, index) for t in tree)
    raise TypeError(f"image_kv: cannot index an object of type {type(tree).__name__}")


def _slice_rows(tree: Any, start: int, stop: int) -> Any:
    if isinstance(tree, Tensor):
        return tree[start:stop]
    return type(tree)(_slice_rows(t, start, stop) for t in tree)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (dropout off) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _block_chunks(
    idx: Tensor,
    pair_loc: Tensor,
    pair_txt: Tensor,
    lengths: Tensor,
    counts: Tensor,
    pair_batch: int,
    share_min: int,
) -> Iterator[tuple[Tensor, int | None]]:
    """Split the pairs ``idx`` of one image block into chunks of at most ``pair_batch``.

    ``pair_loc`` [P] is each pair's image within the block (``counts`` its number of pairs).
    Yields ``(pair indices, shared)``: ``shared`` is the block-local image of a chunk whose
    pairs all have that image (images in at least ``share_min`` pairs: their K/V is broadcast,
    not copied), or None for a mixed chunk (K/V gathered per pair). Inside each group pairs are
    sorted by caption length, so a chunk carries little padding.
    """
    imgs = pair_loc[idx]
    lens = lengths[pair_txt[idx]]
    span = int(lengths.max()) + 1
    shared = counts[idx] >= share_min if share_min > 0 else torch.zeros_like(imgs, dtype=torch.bool)
    if bool(shared.any()):
        sidx = idx[shared][torch.argsort(imgs[shared] * span + lens[shared], stable=True)]
        images, sizes = torch.unique_consecutive(pair_loc[sidx], return_counts=True)
        start = 0
        for img, size in zip(images.tolist(), sizes.tolist(), strict=True):
            for s in range(start, start + size, pair_batch):
                yield sidx[s : min(s + pair_batch, start + size)], img
            start += size
    rest = idx[~shared]
    rest = rest[torch.argsort(lens[~shared], stable=True)]
    for s in range(0, rest.shape[0], pair_batch):
        yield rest[s : s + pair_batch], None


def _text_prefix(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    rows: Tensor,
    batch: int,
    cast: Callable[[Tensor], Tensor],
) -> Tensor:
    """``model.fusion_prefix`` of caption rows ``rows`` (first fusion layer's self-attention,
    which does not depend on the image), in batches; stored like ``text_tokens``."""
    out = []
    for s in range(0, rows.shape[0], batch):
        r = rows[s : s + batch]
        tt = cast(text_tokens[r.to(text_tokens.device)])
        mask = text_mask[r.to(text_mask.device)].to(tt.device)
        out.append(model.fusion_prefix(tt, mask).to(text_tokens.device, text_tokens.dtype))
    return torch.cat(out) if out else text_tokens[:0]


@torch.no_grad()
def score_pairs(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    pair_txt: Tensor,
    pair_img: Tensor,
    image_tokens: Tensor | None = None,
    *,
    image_kv: Any = None,
    pair_batch: int = 256,
    image_block: int = 256,
    share_min: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Tensor:
    """ITM logits [P, 2] (float32, CPU) of the pairs (caption ``pair_txt[p]``, image
    ``pair_img[p]``), batched.

    Only what the ITM head reads is computed: the image K/V once per image that appears in a
    pair (never for the rest of the gallery), block by block; the first fusion layer's
    self-attention once per caption (it does not depend on the image); the last fusion layer
    for the [CLS] query only.

    ``text_tokens`` [T, L, D] / ``text_mask`` [T, L]: the text encoder's output (any device;
    rows are gathered per chunk and moved to the model's device). ``image_tokens`` [G, 1+M, Dv]
    (any device), or ``image_kv`` = ``model.precompute_image_kv`` of all G images.
    ``share_min`` (default None = 0 = never): an image that is a candidate in at least this
    many pairs gets chunks of its own, whose K/V rows are broadcast instead of gathered (a copy
    of 2 x layers x M x D per pair saved, but chunks mix caption lengths, so more padding).
    Measured on a CPU: 25% faster with 289 image tokens, 30% slower with 33; off by default.
    """
    if (image_tokens is None) == (image_kv is None):
        raise RasaError("re-ranking needs exactly one of image_tokens and image_kv.")
    if pair_batch < 1 or image_block < 1:
        raise ConfigError(
            f"re-ranking sizes must be positive: pair_batch={pair_batch}, "
            f"image_block={image_block}."
        )
    share_min = 0 if share_min is None else share_min
    device = _device_of(model)
    param_dtype = next(model.parameters()).dtype

    def cast(x: Tensor) -> Tensor:  # on the model's device; fp32 unless autocast decides
        return x.to(device) if autocast_dtype is not None else x.to(device, param_dtype)

    pair_txt, pair_img = pair_txt.long().cpu(), pair_img.long().cpu()
    num_pairs = pair_txt.shape[0]
    logits = torch.empty(num_pairs, 2, dtype=torch.float32)
    if num_pairs == 0:
        return logits
    lengths = text_mask.sum(1).long().cpu()
    # the images and captions that appear in a pair, and each pair's rank among them
    images, pair_pos = torch.unique(pair_img, return_inverse=True)
    texts, pair_row = torch.unique(pair_txt, return_inverse=True)
    counts = torch.bincount(pair_pos, minlength=images.shape[0])[pair_pos]  # pairs per image
    block_of = torch.div(pair_pos, image_block, rounding_mode="floor")
    order = torch.argsort(block_of, stable=True)
    n_blocks = (images.shape[0] + image_block - 1) // image_block
    bounds = torch.searchsorted(block_of[order], torch.arange(0, n_blocks + 1))
    bar = tqdm(
        total=num_pairs, desc="re-rank pairs", unit="pair", disable=not progress, leave=False
    )
    with eval_mode(model), autocast(device, autocast_dtype):
        prefix = _text_prefix(model, text_tokens, text_mask, texts, pair_batch, cast)
        for b in range(n_blocks):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            i0, i1 = b * image_block, min((b + 1) * image_block, images.shape[0])
            block_images = images[i0:i1]
            if image_kv is not None:
                kv_block = _take_rows(image_kv, block_images.to(_kv_device(image_kv)))
            else:
                rows = block_images.to(image_tokens.device)
                kv_block = model.precompute_image_kv(cast(image_tokens[rows]))
            chunks = _block_chunks(
                order[lo:hi], pair_pos - i0, pair_row, lengths[texts], counts, pair_batch,
                share_min,
            )  # fmt: skip
            for chunk, shared in chunks:
                mask = text_mask[pair_txt[chunk].to(text_mask.device)]
                length = int(mask.sum(1).max())  # trim padding to the longest caption
                tt = cast(prefix[pair_row[chunk].to(prefix.device), :length])
                if shared is None:
                    kv = _take_rows(kv_block, (pair_pos[chunk] - i0).to(device))
                else:  # one image for the whole chunk: a batch of 1 broadcasts in fuse
                    kv = _slice_rows(kv_block, shared, shared + 1)
                fused = model.fuse(
                    tt, mask[:, :length].to(device), image_kv=kv, cls_only=True, from_prefix=True
                )
                logits[chunk] = model.itm_logits(fused).float().cpu()
                bar.update(chunk.shape[0])
    bar.close()
    return logits


def _kv_device(tree: Any) -> torch.device:
    return tree.device if isinstance(tree, Tensor) else _kv_device(tree[0])


@torch.no_grad()
def rerank_logits(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    sims: Tensor,
    image_tokens: Tensor | None = None,
    k: int = 128,
    *,
    direction: str = "t2i",
    image_kv: Any = None,
    pair_batch: int = 256,
    image_block: int = 256,
    share_min: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> RerankResult:
    """ITM logits of each query's top ``k`` candidates by ``sims`` [T, G] (texts x images).

    ``direction="t2i"``: queries are the T captions, candidates images (result [T, k]);
    ``"i2t"`` (Flickr30K/COCO "TR"): queries are the G images, candidates captions ([G, k]).
    See :func:`score_pairs` for the other arguments.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(f"unknown direction {direction!r}; expected one of {list(DIRECTIONS)}.")
    if k < 1:
        raise ConfigError(f"re-ranking needs k >= 1 candidates, got k={k}.")
    t, g = sims.shape
    if text_tokens.shape[0] != t or text_mask.shape[:2] != text_tokens.shape[:2]:
        raise RasaError(
            f"re-ranking: sims has {t} caption rows but text_tokens is {tuple(text_tokens.shape)} "
            f"and text_mask {tuple(text_mask.shape)}; expected [{t}, L, D] and [{t}, L]."
        )
    if image_tokens is not None and image_tokens.shape[0] != g:
        raise RasaError(
            f"re-ranking: sims has {g} gallery columns but image_tokens has "
            f"{image_tokens.shape[0]} images."
        )
    query_sims = sims if direction == "t2i" else sims.t()
    n, c = query_sims.shape
    k = min(k, c)
    topk_index = top_indices(query_sims, k, device=_device_of(model))  # [n, k] CPU, stable ties
    query = torch.arange(n).repeat_interleave(k)
    cand = topk_index.reshape(-1)
    pair_txt, pair_img = (query, cand) if direction == "t2i" else (cand, query)
    logits = score_pairs(
        model, text_tokens, text_mask, pair_txt, pair_img, image_tokens, image_kv=image_kv,
        pair_batch=pair_batch, image_block=image_block, share_min=share_min,
        autocast_dtype=autocast_dtype, progress=progress,
    )  # fmt: skip
    return RerankResult(topk_index, logits.view(n, k, 2))


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown score layout {layout!r}; expected one of {list(LAYOUTS)}.")


def compose_scores(sims: Tensor, result: RerankResult, layout: str = "ours") -> Tensor:
    """The final score matrix (float32, CPU) from the first-stage ``sims`` [queries,
    candidates] and the re-ranking (pass ``sims.t()`` for image-to-text)."""
    _check_layout(layout)
    logits = result.itm_logits
    if layout == "official":
        scores = torch.full(sims.shape, OFFICIAL_FILL, dtype=torch.float32)
        values = logits[..., 1]
    else:
        scores = sims.detach().float().cpu().clone()
        # softmax(l)[1] = sigmoid(l1 - l0), computed without overflow
        values = CANDIDATE_OFFSET + torch.sigmoid(logits[..., 1] - logits[..., 0])
    scores.scatter_(1, result.topk_index, values.float())
    return scores


def rerank_topk(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    sims: Tensor,
    image_tokens: Tensor | None = None,
    k: int = 128,
    *,
    layout: str = "ours",
    direction: str = "t2i",
    **options: Any,
) -> Tensor:
    """Two-stage score matrix: top ``k`` by ``sims`` [T, G] re-scored by ITM (module doc).

    [T, G] for ``direction="t2i"``, [G, T] (images as queries) for ``"i2t"``; ``layout`` as
    :func:`compose_scores`; the other arguments, ``options`` (``image_kv``, ``pair_batch``,
    ``image_block``, ``share_min``, ``autocast_dtype``, ``progress``) included, as
    :func:`rerank_logits`, which checks them.
    """
    _check_layout(layout)  # before the expensive part
    result = rerank_logits(
        model, text_tokens, text_mask, sims, image_tokens, k, direction=direction, **options
    )
    return compose_scores(sims if direction == "t2i" else sims.t(), result, layout)


@torch.no_grad()
def rerank_naive(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    sims: Tensor,
    image_tokens: Tensor,
    k: int = 128,
    layout: str = "ours",
    direction: str = "t2i",
) -> Tensor:
    """Reference: the official per-query loop (one fused batch of k candidates per query, image
    keys/values recomputed for every pair). For tests and the benchmark's baseline only."""
    query_sims = sims if direction == "t2i" else sims.t()
    n, c = query_sims.shape
    k = min(k, c)
    device = _device_of(model)
    topk_index = top_indices(query_sims, k)
    logits = torch.empty(n, k, 2)
    with eval_mode(model):
        for i in range(n):
            cand = topk_index[i]
            if direction == "t2i":
                tt = text_tokens[i : i + 1].to(device).expand(k, -1, -1)
                mask = text_mask[i : i + 1].to(device).expand(k, -1)
                images = image_tokens[cand].to(device)
            else:
                tt, mask = text_tokens[cand].to(device), text_mask[cand].to(device)
                images = image_tokens[i : i + 1].to(device).expand(k, -1, -1)
            fused = model.fuse(tt, mask, images)
            logits[i] = model.itm_logits(fused).float().cpu()
    return compose_scores(query_sims, RerankResult(topk_index, logits), layout)
