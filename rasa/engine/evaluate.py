"""Evaluate a model on a split: text→image retrieval with two-stage ranking (paper §3.5, §4.1).

Steps: embed the split's gallery images (:class:`rasa.data.dataset.ImageDataset`) and query
captions (rows of the token cache, :func:`rasa.data.dataset.split_captions`) in batches; rank
by the unimodal cosine similarity (first stage); re-rank each caption's top ``k`` images by the
p-ITM match probability (:mod:`rasa.engine.ranking`); score both rankings with
:mod:`rasa.engine.metrics` (R@1/5/10, mAP, mINP). For Flickr30K/COCO (Table 5) the image→text
direction is evaluated too (each image's top k captions re-ranked), under ``"i2t"``.

For CUB/Flowers (Table 6, Appendix A.3) the class-level protocol of Reed et al. (2016) is added
(:func:`class_level_scores`): each test class is one query. First stage: the mean of its
captions' cosine similarities (= the image embedding against the average of the class's text
embeddings). Second stage: each class's top ``k`` images are re-scored by the ITM head on the
multi-modal embedding averaged over the class's captions ("we compute the metrics by averaging
the multi-modal embeddings of the same identity"; the head is linear, so this is the mean of
the captions' ITM logits). ``"i2t"`` then holds images ranking the classes (``r1`` = TR R@1,
top-1 accuracy) and ``"ap50"`` the IR AP@50 (:func:`rasa.engine.metrics.fine_grained_metrics`);
the caption-level text→image keys (r1/r5/r10/mAP) stay as for every dataset.

Outputs (atomic writes): the metrics JSON (INTERFACES "Metrics": the final metrics, the
``first_stage`` ones and ``meta``) and ``topk.json`` (each caption's top 10 images with their
record indices, paths and person ids, for the Fig. 5 retrieval grids).

The training loops evaluate through :func:`evaluate_split` (the run's re-ranking depth, batch
size, precision and resize; the model's train/eval mode restored).

Image tokens and text tokens are kept on the CPU (in bf16 when ``dtype="bf16"``) and moved to
the device one block at a time, so the gallery size is bounded by host memory, not by the GPU.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from rasa.data.annotations import Annotations
from rasa.data.dataset import ImageDataset, split_captions
from rasa.data.formats import datasets_with_protocol
from rasa.data.token_cache import TokenCache, load_cache
from rasa.engine.checkpoint import unwrap
from rasa.engine.device import numerics, pick_device
from rasa.engine.metrics import (
    METRIC_KEYS,
    class_average,
    fine_grained_metrics,
    retrieval_metrics,
    top_indices,
)
from rasa.engine.precision import autocast, autocast_dtype, precision_of
from rasa.engine.ranking import (
    RerankResult,
    compose_scores,
    eval_mode,
    rerank_logits,
    rerank_topk,
)
from rasa.engine.test_scores import evaluation_key, load_scores
from rasa.errors import ConfigError, DataError, RasaError
from rasa.io import write_json

# datasets evaluated in both directions (paper Table 5: TR = image->text, IR = text->image)
BOTH_DIRECTIONS = datasets_with_protocol("both")
# datasets with the class-level protocol (paper Table 6: TR R@1, IR AP@50; Reed et al., 2016)
FINE_GRAINED = datasets_with_protocol("class")
AP_K = 50
TOPK_RECORDED = 10
RELATIVE_K_FLOOR = 10  # eval.k_test_fraction re-ranks at least this many images


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: CUDA when available, else the CPU (checked as ``rasa train``'s)."""
    if isinstance(device, torch.device):
        return device
    return pick_device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _embed(
    model: nn.Module,
    batches: Any,
    encode: Any,
    embed: Any,
    amp: torch.dtype | None,
    device: torch.device,
    desc: str,
    progress: bool,
) -> tuple[Tensor, Tensor]:
    """Tokens (CPU, bf16 under bf16 autocast) and fp32 embeddings of every batch:
    ``encode(batch) -> tokens`` on the device, ``embed(tokens) -> features``."""
    store = amp or torch.float32
    tokens, feats = [], []
    with eval_mode(model), autocast(device, amp):
        for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress):
            t = encode(batch)
            feats.append(embed(t).float().cpu())
            tokens.append(t.to(store).cpu())
    return torch.cat(tokens), torch.cat(feats)


def embed_images(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Image tokens [G, 1+M, Dv] (CPU, bf16 under bf16 autocast) and embeddings [G, E] (fp32)
    of the batches of ``loader`` (dicts with key ``image``, or image tensors)."""

    def encode(batch: Any) -> Tensor:
        images = batch["image"] if isinstance(batch, dict) else batch
        return model.encode_image(images.to(device, non_blocking=True))

    return _embed(model, loader, encode, model.image_embed, amp, device, "embed images", progress)


def embed_texts(
    model: nn.Module,
    ids: Tensor,
    mask: Tensor,
    batch_size: int,
    device: torch.device,
    amp: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Text-encoder tokens [Q, L, D] (CPU) and embeddings [Q, E] (fp32) of caption ids/masks."""

    def encode(s: int) -> Tensor:
        rows = slice(s, s + batch_size)
        return model.encode_text(ids[rows].to(device), mask[rows].to(device))

    starts = range(0, ids.shape[0], batch_size)
    return _embed(model, starts, encode, model.text_embed, amp, device, "embed captions", progress)


def similarity(text_feats: Tensor, image_feats: Tensor, device: torch.device) -> Tensor:
    """Cosine similarities [Q, G] (fp32, CPU), computed on ``device`` in row blocks."""
    img = image_feats.to(device)
    rows = max(1, 2**24 // max(1, img.shape[0]))
    out = [
        (text_feats[s : s + rows].to(device) @ img.T).cpu()
        for s in range(0, text_feats.shape[0], rows)
    ]
    return torch.cat(out)


def _check_tokens(model: nn.Module, cache: TokenCache, where: object) -> None:
    """The cache must hold the ids of the model's tokenizer.

    A model that carries a tokenizer record (``model.tokenizer_record``: from its checkpoint,
    or set when it was built for a token cache) is compared by identity hash
    (:meth:`TokenCache.check_tokenizer`); one without (an old checkpoint, a bare model) only by
    vocabulary size, with a warning.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        return
    record = getattr(model, "tokenizer_record", None)
    if record:
        cache.check_tokenizer(record, getattr(model, "tokenizer_source", None) or "the model")
    elif getattr(model, "tokenizer_source", None):
        warnings.warn(
            f"{model.tokenizer_source} records no tokenizer (an older checkpoint, or a model "
            "built without a token cache): only the vocabulary size of token cache "
            f"{cache.path or where} can be checked.",
            stacklevel=3,
        )
    if cache.vocab_size > cfg.vocab_size:
        raise ConfigError(
            f"token cache {cache.path or where}: vocabulary of {cache.vocab_size} ids but the "
            f"model {cfg.name!r} embeds only {cfg.vocab_size}; tokenize with the model's tokenizer."
        )
    if "add_sep" in cache.meta and bool(cache.meta["add_sep"]) != bool(cfg.add_sep):
        warnings.warn(
            f"token cache {cache.path or where} has add_sep={cache.meta['add_sep']} but the "
            f"model {cfg.name!r} was trained with add_sep={cfg.add_sep}; scores may suffer.",
            stacklevel=3,
        )


def evaluate_model(
    model: nn.Module,
    annotations: Annotations | None,
    annotations_path: str | Path,
    cache: TokenCache | str | Path,
    split: str = "test",
    *,
    k: int = 128,
    batch_size: int = 64,
    pair_batch: int = 256,
    image_block: int = 256,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    layout: str = "ours",
    resize: str = "pad",
    num_workers: int = 0,
    i2t: bool | None = None,
    fine_grained: bool | None = None,
    share_min: int | None = None,
    progress: bool = True,
    k_fraction: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``model`` on ``split``; returns (metrics, topk) as written by
    :func:`evaluate_checkpoint` (metrics without ``meta``).

    ``k_fraction`` (``eval.k_test_fraction``) also re-ranks a share of the gallery
    (:func:`relative_k`), reported under ``metrics["at_fraction"]`` beside the re-ranking at the
    absolute ``k`` (the headline figures); one ITM pass serves both (the top candidates of the
    smaller k are the first ones of the larger).

    ``i2t`` adds image→text retrieval under ``metrics["i2t"]`` (same keys, its own
    ``first_stage``); default: on for Flickr30K/COCO. ``fine_grained`` adds the class-level
    protocol instead (``metrics["i2t"]`` = images ranking the classes, ``metrics["ap50"]``,
    ``metrics["class_level"]``); default: on for CUB/Flowers.
    """
    dev = resolve_device(device)
    amp = autocast_dtype(dtype, dev)
    annotations = Annotations.load(annotations_path) if annotations is None else annotations
    cache = cache if isinstance(cache, TokenCache) else load_cache(cache)
    _check_tokens(model, cache, annotations_path)
    model.to(dev)
    cfg = model.config
    gallery = ImageDataset(
        annotations, annotations_path, split, cfg.image_size, cfg.mean, cfg.std, resize
    )
    queries = split_captions(annotations, annotations_path, cache, split)
    loader = DataLoader(
        gallery,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=dev.type == "cuda",
    )
    t0 = time.perf_counter()
    image_tokens, image_feats = embed_images(model, loader, dev, amp, progress)
    text_tokens, text_feats = embed_texts(
        model, queries.ids, queries.mask, batch_size, dev, amp, progress
    )
    sims = similarity(text_feats, image_feats, dev)
    _sync(dev)
    t1 = time.perf_counter()
    k_rel = relative_k(len(gallery), k_fraction) if k_fraction and k > 0 else 0
    if k > 0:
        result = rerank_logits(
            model, text_tokens, queries.mask, sims, image_tokens, max(k, k_rel),
            pair_batch=pair_batch, image_block=image_block, share_min=share_min,
            autocast_dtype=amp, progress=progress,
        )  # fmt: skip
        scores = compose_scores(sims, _first_candidates(result, k), layout)
    else:  # no re-ranking (a variant that never trained its ITM head): the first stage
        scores = sims
    t2 = time.perf_counter()
    metric_device = dev if dev.type == "cuda" else None
    first = retrieval_metrics(sims, queries.pids, gallery.pids, device=metric_device)
    final = retrieval_metrics(scores, queries.pids, gallery.pids, device=metric_device)
    metrics: dict[str, Any] = dict(final)
    metrics["first_stage"] = {key: first[key] for key in METRIC_KEYS}
    metrics["timing"] = {
        "embed_s": t1 - t0,
        "rerank_s": t2 - t1,
        "rerank_ms_per_query": 1000 * (t2 - t1) / max(1, len(queries)),
    }
    metrics["k"] = max(0, min(k, len(gallery)))
    if k_rel:
        rel = compose_scores(sims, _first_candidates(result, k_rel), layout)
        metrics["at_fraction"] = {
            **retrieval_metrics(rel, queries.pids, gallery.pids, device=metric_device),
            "k": k_rel,
            "fraction": float(k_fraction),
        }
    metrics["layout"] = layout
    name = annotations.dataset.lower()
    if fine_grained if fine_grained is not None else name in FINE_GRAINED:
        first_cls, final_cls, classes = class_level_scores(
            model, text_tokens, queries.mask, queries.pids, sims, image_tokens, k,
            layout=layout, pair_batch=pair_batch, image_block=image_block,
            share_min=share_min, autocast_dtype=amp, progress=progress,
        )  # fmt: skip
        first = fine_grained_metrics(first_cls, classes, gallery.pids, AP_K)
        final = fine_grained_metrics(final_cls, classes, gallery.pids, AP_K)
        metrics["ap50"] = final["ap50"]
        metrics["first_stage"]["ap50"] = first["ap50"]
        metrics["i2t"] = dict(
            final["i2t"], first_stage={key: first["i2t"][key] for key in METRIC_KEYS}
        )
        metrics["class_level"] = {
            "num_classes": len(classes),
            "num_images": len(gallery),
            "ap_k": AP_K,
            "k": metrics["k"],
        }
    elif (i2t if i2t is not None else name in BOTH_DIRECTIONS) and k > 0:
        scores_i2t = rerank_topk(
            model, text_tokens, queries.mask, sims, image_tokens, k, layout=layout,
            direction="i2t", pair_batch=pair_batch, image_block=image_block,
            share_min=share_min, autocast_dtype=amp, progress=progress,
        )  # fmt: skip
        first = retrieval_metrics(sims.t(), gallery.pids, queries.pids, device=metric_device)
        final = retrieval_metrics(scores_i2t, gallery.pids, queries.pids, device=metric_device)
        metrics["i2t"] = dict(final, first_stage={key: first[key] for key in METRIC_KEYS})
    topk = topk_records(annotations, annotations_path, split, queries, gallery, scores)
    return metrics, topk


def class_level_scores(
    model: nn.Module,
    text_tokens: Tensor,
    text_mask: Tensor,
    text_pids: Tensor,
    sims: Tensor,
    image_tokens: Tensor,
    k: int,
    *,
    layout: str = "ours",
    pair_batch: int = 256,
    image_block: int = 256,
    share_min: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Class x image scores for the CUB/Flowers protocol (module docstring): (first stage
    [C, G], final [C, G], class ids [C] ascending). ``k = 0``: final = first stage.

    Every caption is re-ranked against its class's top ``k`` images (the class's first-stage
    row), so all captions of a class score the same candidates and their ITM logits average
    into the class's logits: ``Q x k`` pairs, as many as the caption-level re-ranking.
    """
    first, classes = class_average(sims, text_pids)
    if k <= 0:
        return first, first.clone(), classes
    row_of = torch.searchsorted(classes, torch.as_tensor(text_pids).long().cpu())
    result = rerank_logits(
        model, text_tokens, text_mask, first[row_of], image_tokens, k,
        pair_batch=pair_batch, image_block=image_block, share_min=share_min,
        autocast_dtype=autocast_dtype, progress=progress,
    )  # fmt: skip
    logits, _ = class_average(result.itm_logits, text_pids)
    topk_index = torch.zeros((len(classes), result.topk_index.shape[1]), dtype=torch.long)
    topk_index[row_of] = result.topk_index  # the captions of a class share their candidates
    if not torch.equal(topk_index[row_of], result.topk_index):
        raise RasaError("class-level re-ranking: captions of one class got different candidates.")
    final = compose_scores(first, RerankResult(topk_index, logits), layout)
    return first, final, classes


def relative_k(gallery: int, fraction: float, floor: int = RELATIVE_K_FLOOR) -> int:
    """Candidates re-ranked at ``fraction`` of a gallery: ``round(fraction * gallery)``, at
    least ``floor`` (the paper: 128 of 3,074 test images, about 4%), at most the gallery."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"eval.k_test_fraction = {fraction}; expected a fraction in (0, 1].")
    return min(gallery, max(floor, round(fraction * gallery)))


def _first_candidates(result: RerankResult, k: int) -> RerankResult:
    """The re-ranking restricted to each query's first ``k`` candidates (best first)."""
    return RerankResult(result.topk_index[:, :k], result.itm_logits[:, :k])


def rerank_k(variant: str | None, k_test: int) -> int:
    """How many candidates to re-rank by ITM: ``k_test``, or 0 when ``variant`` has no ITM loss.

    Re-ranking by an ITM head that was never trained (``cl``, CMMT) would only scramble the
    first stage's order, so such runs report the unimodal ranking.
    """
    if variant is None:
        return k_test
    from rasa.variants import get_variant

    return k_test if get_variant(variant).itm is not None else 0


def run_k_test(config: dict[str, Any]) -> int:
    """The re-ranking depth a run is evaluated with: its ``eval.k_test`` (128 without one), 0
    for a variant without ITM (:func:`rerank_k`)."""
    return rerank_k(config.get("variant"), (config.get("eval") or {}).get("k_test", 128))


def run_resize(config: dict[str, Any]) -> str:
    """The resize mode a run trained with ("stretch" for official checkpoints, else "pad")."""
    return config.get("resize") or (config.get("train") or {}).get("resize") or "pad"


def evaluate_split(model, ann, cfg: Any, cache, split: str, scores: dict | None = None):
    """Two-stage retrieval metrics of ``model`` on ``split`` (:func:`evaluate_model`) under a
    run's config (re-ranking depth, batch size, precision, resize), as the training loops take
    them for validation and test.

    Evaluation timings go to ``metrics["timing"]``; everything else is deterministic. The
    model's train/eval mode is restored afterwards. ``scores``, when given, receives the
    ``topk`` document and the evaluation ``settings`` (rasa.engine.test_scores).
    """
    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    dev = next(inner.parameters()).device
    dtype = precision_of(cfg.train.bf16)  # evaluated in the precision it trains in
    settings = dict(k=rerank_k(cfg.variant, cfg.eval.k_test), batch_size=cfg.eval.batch_size,
                    dtype=dtype, resize=cfg.train.resize, device=dev,
                    k_fraction=cfg.eval.k_test_fraction)  # fmt: skip
    with torch.no_grad():
        metrics, topk = evaluate_model(
            inner, ann, cfg.annotations, cache, split, **settings, progress=False
        )
    inner.train(was_training)
    if scores is not None:
        scores.update(topk=topk, settings=settings)
    return metrics


def topk_records(
    annotations: Annotations,
    annotations_path: str | Path,
    split: str,
    queries: Any,
    gallery: ImageDataset,
    scores: Tensor,
    n: int = TOPK_RECORDED,
) -> dict[str, Any]:
    """The ``topk.json`` document: each caption's first ``n`` gallery images."""
    top = top_indices(scores, n).tolist()
    records = annotations.records
    flat = {k: cap for k, _, cap in annotations.captions(split)}
    gallery_records = gallery.record_indices
    out = []
    for row, cands in enumerate(top):
        rec = [gallery_records[c] for c in cands]
        out.append(
            {
                "caption_index": int(queries.caption_indices[row]),
                "caption": flat[int(queries.caption_indices[row])],
                "pid": records[int(queries.record_indices[row])].pid,
                "record_index": int(queries.record_indices[row]),
                "topk_records": rec,
                "topk_images": [records[r].image for r in rec],
                "topk_pids": [records[r].pid for r in rec],
            }
        )
    return {
        "split": split,
        "k": min(n, scores.shape[1]),
        "image_root": str(annotations.resolve_image_root(annotations_path)),
        "queries": out,
    }


def load_model_for_eval(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A model from one of our training checkpoints, or from an official RaSa checkpoint.

    The file is read once with ``torch.load(weights_only=True)`` (a pickle payload is refused,
    never run); its content decides which it is (:func:`rasa.engine.checkpoint.is_rasa_checkpoint`).
    Returns (model, run config dict; ``{"resize": "stretch", "source": "official"}`` for
    official checkpoints).
    """
    from rasa.engine.checkpoint import checkpoint_tokenizer, is_rasa_checkpoint, read_safely
    from rasa.models import ModelConfig, RaSaModel

    path = Path(checkpoint)
    state = read_safely(path)
    if not is_rasa_checkpoint(state):
        from rasa.models.loaders import load_official

        model = load_official(path)
        return model, {"resize": "stretch", "source": "official"}
    if not state.get("model_config"):
        raise DataError(f"{path}: checkpoint has no 'model_config'; cannot rebuild the model.")
    model = RaSaModel(ModelConfig.from_dict(state["model_config"], source=f"{path}"))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise DataError(
            f"{path}: its weights do not fit the model its own model_config describes "
            f"({str(exc).splitlines()[0]}); the file is damaged or was edited."
        ) from exc
    model.tokenizer_record = checkpoint_tokenizer(state)
    model.tokenizer_source = str(path)
    return model, dict(state.get("config") or {})


def _meta_from_config(config: dict[str, Any]) -> dict[str, Any]:
    meta = {"experiment": config.get("name")}
    for key in ("dataset", "backbone", "variant", "seed", "method"):
        meta[key] = config.get(key)
    if config.get("sweep"):
        meta["sweep"] = config["sweep"]  # a Fig. 4 point (rasa.report.results.sweep_point)
    return meta


def evaluate_checkpoint(
    checkpoint: str | Path,
    annotations: str | Path,
    tokens: str | Path,
    split: str,
    out: str | Path,
    topk_out: str | Path | None = None,
    k: int | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    *,
    layout: str = "ours",
    resize: str | None = None,
    pair_batch: int = 256,
    image_block: int = 256,
    num_workers: int = 0,
    meta: dict[str, Any] | None = None,
    progress: bool = True,
    dataset: str | None = None,
) -> dict[str, Any]:
    """Load ``checkpoint``, evaluate it on ``split`` and write the metrics JSON (and topk.json).

    ``dataset`` names the evaluated dataset when it is not the one the run trained on (Table 7,
    domain generalisation): the meta then says ``dataset`` (target) and ``source_dataset``.

    ``resize`` defaults to the run's training setting ("stretch" for official checkpoints);
    ``k`` to the run's ``eval.k_test`` (128 without one), and to 0 — no re-ranking — for a
    variant that never trained its ITM head (:func:`rerank_k`). Scores the training run stored
    beside the checkpoint under the same key are reused (:mod:`rasa.engine.test_scores`).
    Returns the metrics as written.
    """
    model, config = load_model_for_eval(checkpoint)
    k_fraction = (config.get("eval") or {}).get("k_test_fraction")
    if k is None:
        k = run_k_test(config)
    if resize is None:
        resize = run_resize(config)
    ann = Annotations.load(annotations)
    key = evaluation_key(
        checkpoint, annotations, tokens, split, k=k, batch_size=batch_size, dtype=dtype,
        resize=resize, device=resolve_device(device), layout=layout, pair_batch=pair_batch,
        image_block=image_block, k_fraction=k_fraction,
    )  # fmt: skip
    stored = load_scores(checkpoint, key)
    if stored is not None:  # scored by the training run: the same checkpoint, data, settings
        metrics, topk = stored
        print(f"evaluate: {checkpoint} was scored on {split} by its training run: reused")
    else:
        metrics, topk = evaluate_model(
            model, ann, annotations, tokens, split,
            k=k, batch_size=batch_size, pair_batch=pair_batch, image_block=image_block,
            device=device, dtype=dtype, layout=layout, resize=resize, num_workers=num_workers,
            progress=progress, k_fraction=k_fraction,
        )  # fmt: skip
    info = _meta_from_config(config)
    info.update(
        dataset=info.get("dataset") or ann.dataset,
        backbone=info.get("backbone") or getattr(model.config, "name", None),
        split=split,
        checkpoint=str(checkpoint),
        annotations=str(annotations),
        tokens=str(tokens),
        dtype=dtype,
        resize=resize,
        device=str(resolve_device(device)),
        **numerics(),
    )
    if dataset and dataset != info.get("dataset"):
        info.update(source_dataset=info.get("dataset"), dataset=dataset)
    info.update(meta or {})
    metrics["meta"] = info
    write_json(out, metrics)
    if topk_out is not None:
        write_json(topk_out, topk, indent=1)
    return metrics
