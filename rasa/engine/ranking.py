"""Two-stage text→image ranking (paper §3.5 "Inference"), batched and memory-bounded.

Stage 1 ranks the whole gallery by the unimodal similarity ``sims[Q, G]`` (cosine of the
projected CLS features). Stage 2 re-scores, for every query, its top ``k`` images (k = 128 in
the paper) with the p-ITM head on the cross-modal encoder's fused CLS.

What this does differently from the official loop (same function, far less work):

- no Python loop per query: the ``Q x k`` (query, candidate) pairs are flattened, grouped by
  block of images, sorted by caption length inside a block, and scored in chunks of
  ``pair_batch`` pairs (so a chunk carries little padding);
- the cross-attention keys/values of every fusion layer are computed ONCE per gallery image
  (``model.precompute_image_kv``), one block of ``image_block`` images at a time, and gathered
  for the pairs of that block (the official code recomputes them for every pair);
- captions are trimmed to the longest one in each chunk (padding only costs time);
- optional autocast (``autocast_dtype=torch.bfloat16``) on CUDA.

Peak memory beyond the inputs (elements; times 4 bytes in float32, 2 under bf16 autocast), with
``n`` fusion layers, ``M`` image tokens, ``Dv`` image width, ``D`` text width, ``I`` the text
intermediate width, ``L`` the caption length and ``h`` heads::

    image_block * (M * Dv + 2 * n * M * D)                 # image tokens + K/V of one block
    + pair_batch * (2 * n * M * D                          # K/V gathered for the chunk
                    + L * (c * D + I) + h * L * M)         # fusion activations (c ~ 6)

plus ``Q * k * 2`` float32 logits and the ``[Q, G]`` output. Example, paper size (M = 577,
D = Dv = 768, n = 6, bf16): image_block 256 -> ~1.5 GB, pair_batch 256 -> ~1.4 GB.

Score layouts (:func:`compose_scores`):

- ``"official"``: the raw ITM logit of class "match" for the k candidates and the constant
  -100 for every other image (the official ``Retrieval.py``; ties among the -100 entries are
  broken by gallery index in :mod:`rasa.engine.metrics`);
- ``"ours"`` (default): ``2 + p`` for the candidates, ``p = softmax(itm)[..., 1]`` the match
  probability (in (0, 1)), and the unimodal similarity (in [-1, 1]) for every other image: the
  candidates come first in probability order, the rest keep their first-stage order instead of
  collapsing into a tie.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from rasa.engine.metrics import top_indices
from rasa.errors import ConfigError, RasaError

LAYOUTS = ("ours", "official")
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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (dropout off) and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _pair_order(
    topk_index: Tensor, lengths: Tensor, image_block: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Flatten the (query, candidate) pairs and order them by image block, then by caption
    length, so each chunk needs the K/V of one block and carries little padding."""
    q, k = topk_index.shape
    flat_img = topk_index.reshape(-1)
    flat_txt = torch.arange(q).repeat_interleave(k)
    span = int(lengths.max()) + 1
    key = torch.div(flat_img, image_block, rounding_mode="floor") * span + lengths[flat_txt]
    order = torch.argsort(key, stable=True)
    return order, flat_img[order], flat_txt[order]


@torch.no_grad()
def rerank_logits(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    sims: Tensor,
    image_tokens: Tensor | None = None,
    k: int = 128,
    *,
    image_kv: Any = None,
    pair_batch: int = 256,
    image_block: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> RerankResult:
    """ITM logits of each query's top ``k`` gallery images (by ``sims``), batched.

    ``text_tokens`` [Q, L, D] / ``text_mask`` [Q, L]: the text encoder's output for every query
    (any device; rows are gathered per chunk and moved to the model's device).
    ``image_tokens`` [G, 1+M, Dv] (any device), or ``image_kv`` = ``model.precompute_image_kv``
    of all G images already computed (then ``image_tokens`` may be None).
    """
    if (image_tokens is None) == (image_kv is None):
        raise RasaError("rerank_logits needs exactly one of image_tokens and image_kv.")
    if pair_batch < 1 or image_block < 1 or k < 1:
        raise ConfigError(
            f"re-ranking sizes must be positive: k={k}, pair_batch={pair_batch}, "
            f"image_block={image_block}."
        )
    q, g = sims.shape
    if text_tokens.shape[0] != q or text_mask.shape[:2] != text_tokens.shape[:2]:
        raise RasaError(
            f"re-ranking: sims has {q} query rows but text_tokens is {tuple(text_tokens.shape)} "
            f"and text_mask {tuple(text_mask.shape)}; expected [{q}, L, D] and [{q}, L]."
        )
    if image_tokens is not None and image_tokens.shape[0] != g:
        raise RasaError(
            f"re-ranking: sims has {g} gallery columns but image_tokens has "
            f"{image_tokens.shape[0]} images."
        )
    device = _device_of(model)
    param_dtype = next(model.parameters()).dtype
    k = min(k, g)
    topk_index = top_indices(sims, k)  # [Q, k] CPU, stable tie-breaking
    lengths = text_mask.sum(1).long().cpu()
    order, pair_img, pair_txt = _pair_order(topk_index, lengths, image_block)
    logits_sorted = torch.empty(q * k, 2, dtype=torch.float32)
    text_dev = text_tokens.device
    pair_block = torch.div(pair_img, image_block, rounding_mode="floor")
    bounds = torch.searchsorted(pair_block, torch.arange(0, g // image_block + 2))
    bar = tqdm(total=q * k, desc="re-rank pairs", unit="pair", disable=not progress, leave=False)
    with eval_mode(model), _autocast(device, autocast_dtype):
        for b, g0 in enumerate(range(0, g, image_block)):
            lo, hi = int(bounds[b]), int(bounds[b + 1])
            if lo == hi:
                continue  # no query has an image of this block among its candidates
            g1 = min(g0 + image_block, g)
            if image_kv is not None:
                kv_block = _slice_rows(image_kv, g0, g1)
            else:
                block = image_tokens[g0:g1].to(device)
                if autocast_dtype is None:
                    block = block.to(param_dtype)
                kv_block = model.precompute_image_kv(block)
            for p0 in range(lo, hi, pair_batch):
                p1 = min(p0 + pair_batch, hi)
                rows = pair_txt[p0:p1].to(text_dev)
                mask = text_mask[rows]
                length = int(mask.sum(1).max())  # trim padding to the longest caption
                tt = text_tokens[rows, :length].to(device)
                if autocast_dtype is None:
                    tt = tt.to(param_dtype)
                kv = _take_rows(kv_block, (pair_img[p0:p1] - g0).to(device))
                fused = model.fuse(tt, mask[:, :length].to(device), image_kv=kv)
                logits_sorted[p0:p1] = model.itm_logits(fused).float().cpu()
                bar.update(p1 - p0)
    bar.close()
    logits = torch.empty_like(logits_sorted)
    logits[order] = logits_sorted
    return RerankResult(topk_index, logits.view(q, k, 2))


def compose_scores(sims: Tensor, result: RerankResult, layout: str = "ours") -> Tensor:
    """The final score matrix [Q, G] (float32, CPU) from the first stage and the re-ranking."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown score layout {layout!r}; expected one of {list(LAYOUTS)}.")
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
    image_kv: Any = None,
    pair_batch: int = 256,
    image_block: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> Tensor:
    """Two-stage score matrix [Q, G]: top ``k`` by ``sims`` re-scored by ITM (see module doc)."""
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown score layout {layout!r}; expected one of {list(LAYOUTS)}.")
    result = rerank_logits(
        model,
        text_tokens,
        text_mask,
        sims,
        image_tokens,
        k,
        image_kv=image_kv,
        pair_batch=pair_batch,
        image_block=image_block,
        autocast_dtype=autocast_dtype,
        progress=progress,
    )
    return compose_scores(sims, result, layout)


@torch.no_grad()
def rerank_naive(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    sims: Tensor,
    image_tokens: Tensor,
    k: int = 128,
    layout: str = "ours",
) -> Tensor:
    """Reference: the official per-query loop (one fused batch of k candidates per query, image
    keys/values recomputed for every pair). For tests and the benchmark's baseline only."""
    q, g = sims.shape
    k = min(k, g)
    device = _device_of(model)
    topk_index = top_indices(sims, k)
    logits = torch.empty(q, k, 2)
    with eval_mode(model):
        for i in range(q):
            cand = topk_index[i]
            tt = text_tokens[i : i + 1].to(device).expand(k, -1, -1)
            mask = text_mask[i : i + 1].to(device).expand(k, -1)
            fused = model.fuse(tt, mask, image_tokens[cand].to(device))
            logits[i] = model.itm_logits(fused).float().cpu()
    return compose_scores(sims, RerankResult(topk_index, logits), layout)
