"""Benchmarks of one training step and of the two-stage evaluation, on random inputs.

``rasa bench train-step`` builds a backbone at any size (every :class:`~rasa.models.
ModelConfig` size can be set on the command line), runs a few warm-up steps (forward with
the variant's losses, backward, AdamW step), times ``repeats`` more and prints ONE JSON line.
``rasa bench evaluate`` times the embedding stage and the batched re-ranking (paper §3.5) of
``queries`` random captions against ``gallery`` random images, and the official-style
per-query loop on some of them (same scores, checked).

Memory is reported in two parts, the same way on every device:

* ``rss_after_imports_mib``: the process's resident set once the libraries are imported
  (before any model exists), and ``rss_after_model_mib`` once the model (and optimizer) are;
* ``added_peak_mib``: the peak of the measured work (all steps, warm-up included: the
  optimizer state appears at the first one) above what was held before it. On CUDA:
  ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory
  allocated before. On a CPU: the process's peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident set before; where that is unavailable, the
  lifetime peak (``ru_maxrss``), an upper bound (``added_peak_kind`` says which).

No data files are needed: images are Gaussian noise, captions random token ids of random
lengths, person ids drawn so that every person has two pairs (hard negatives exist).
"""

from __future__ import annotations

import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rasa.engine.precision import autocast, autocast_dtype
from rasa.errors import ConfigError

# Special-token ids of our WordPiece tokenizers: [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4.
SPECIALS = {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
TINY_VOCAB = 2000
CAPTION_LENGTH = (15, 30)  # tokens, [CLS] and [SEP] included (the issue-17 configuration)
_STATUS = Path("/proc/self/status")


# ---- memory --------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_mib() -> float:
    """The process's current resident set (Linux ``VmRSS``; else the lifetime peak)."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else _max_rss_mib()


def _max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS


class PeakMemory:
    """The added peak memory of a piece of work: ``start()``, run it, ``added_mib()``.

    CUDA: allocator statistics (max allocated minus allocated at the start). CPU: the peak
    resident set since the start minus the resident set at the start (see the module doc).
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.base = 0.0
        self.kind = ""

    def start(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "cuda_max_allocated"
            return self
        self.base = rss_mib()
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self.kind = "process_peak_rss"
        except OSError:
            self.kind = "process_max_rss_lifetime"
        return self

    def peak_mib(self) -> float:
        """The absolute peak since :meth:`start` (allocated on CUDA, resident on a CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        if self.kind == "process_peak_rss":
            kib = _status_kib("VmHWM")
            if kib is not None:
                return kib / 1024
        return _max_rss_mib()

    def added_mib(self) -> float:
        return max(0.0, self.peak_mib() - self.base)


# ---- inputs --------------------------------------------------------------------------------
def _check_lengths(caption_length: tuple[int, int]) -> tuple[int, int]:
    lo, hi = (int(x) for x in caption_length)
    if not 3 <= lo <= hi:
        raise ConfigError(
            f"bench: caption length {caption_length!r}; expected MIN MAX with 3 <= MIN <= MAX "
            "tokens ([CLS] and [SEP] included)."
        )
    return lo, hi


def random_captions(
    n: int, caption_length: tuple[int, int], vocab_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` captions of uniform lengths in ``caption_length``: ids [n, MAX] ([CLS] first,
    [SEP] last, [PAD] after) and the padding mask [n, MAX] (int64)."""
    lo, hi = _check_lengths(caption_length)
    lengths = torch.randint(lo, hi + 1, (n,), generator=generator)
    ids = torch.randint(5, vocab_size, (n, hi), generator=generator)
    mask = (torch.arange(hi)[None, :] < lengths[:, None]).long()
    ids[:, 0] = SPECIALS["cls_id"]
    ids[torch.arange(n), lengths - 1] = SPECIALS["sep_id"]
    return ids.masked_fill(mask == 0, SPECIALS["pad_id"]), mask


def random_batch(
    batch_size: int,
    image_size: tuple[int, int],
    vocab_size: int,
    caption_length: tuple[int, int] = CAPTION_LENGTH,
    weak_rate: float = 0.1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A training batch with the keys of ``TrainDataset`` + ``collate`` (random content)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    t1, m1 = random_captions(batch_size, caption_length, vocab_size, g)
    t2, m2 = random_captions(batch_size, caption_length, vocab_size, g)
    return {
        "image1": torch.randn(batch_size, 3, h, w, generator=g),
        "image2": torch.randn(batch_size, 3, h, w, generator=g),
        "text1_ids": t1,
        "text1_mask": m1,
        "text2_ids": t2,
        "text2_mask": m2,
        "replace": (torch.rand(batch_size, generator=g) < weak_rate).long(),
        "pid": torch.arange(batch_size) // 2,
        "caption_index": torch.arange(batch_size),
    }


def model_overrides(backbone: str, sizes: dict[str, Any] | None) -> dict[str, Any]:
    """:class:`ModelConfig` overrides from bench sizes; ``text_layers`` + ``fusion_layers``
    (both or neither) become ``num_layers`` and ``fusion_layer``; ``tiny`` gets the
    vocabulary of our WordPiece tokenizers (2,000) unless told otherwise."""
    kwargs = {k: v for k, v in (sizes or {}).items() if v is not None}
    if backbone == "tiny":
        kwargs.setdefault("vocab_size", TINY_VOCAB)
    text, fusion = kwargs.pop("text_layers", None), kwargs.pop("fusion_layers", None)
    if (text is None) != (fusion is None):
        raise ConfigError(
            "bench: give both --text-layers and --fusion-layers (the BERT stack is text "
            "layers, then fusion layers), or neither."
        )
    if text is not None:
        kwargs.update(num_layers=int(text) + int(fusion), fusion_layer=int(text))
    if "image_size" in kwargs:
        kwargs["image_size"] = tuple(kwargs["image_size"])
    return kwargs


def _environment(dev: torch.device) -> dict[str, Any]:
    env = {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    if dev.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(dev)
    return env


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---- training step -------------------------------------------------------------------------
def bench_train_step(
    backbone: str = "tiny",
    variant: str = "m-rtd",
    batch_size: int = 32,
    *,
    sizes: dict[str, Any] | None = None,
    caption_length: tuple[int, int] = CAPTION_LENGTH,
    device: str = "auto",
    dtype: str = "fp32",
    compile: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    count_flops: bool = True,
) -> dict[str, Any]:
    """Median seconds of one full optimizer step; returns the JSON-able record.

    ``sizes``: :class:`ModelConfig` fields (plus ``text_layers``/``fusion_layers``);
    ``dtype``: a precision of :mod:`rasa.engine.precision` ("bf16" autocasts on a CPU too);
    ``compile``: ``torch.compile`` the step; ``count_flops``: one more (untimed) step under
    ``torch.utils.flop_counter`` gives the step's floating-point operations, a figure that
    does not depend on how busy the machine is.
    """
    from rasa.engine.build import make_loss_config
    from rasa.engine.device import pick_device
    from rasa.engine.optim import param_groups
    from rasa.engine.train import StepModule
    from rasa.models import create_model
    from rasa.variants import get_variant

    rss_imports = rss_mib()

    if warmup < 0 or repeats < 1 or batch_size < 2:
        raise ConfigError("bench: expected warmup >= 0, repeats >= 1 and batch size >= 2.")
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    amp = autocast_dtype(dtype, dev)
    var = get_variant(variant)
    if var.rtd == "fixed":
        raise ConfigError(
            "bench train-step: f-rtd needs a trained generator; bench m-rtd or o-rtd."
        )
    torch.manual_seed(0)
    model = create_model(backbone, **model_overrides(backbone, sizes)).to(dev)

    class _TC:  # the fields param_groups reads
        lr = 1e-5
        lr_new = 1e-4
        weight_decay = 0.02

    opt = torch.optim.AdamW(param_groups(model, _TC), weight_decay=0.02)
    loss_cfg = make_loss_config({}, type("C", (), {"meta": SPECIALS})())
    step = StepModule(model, var, loss_cfg, None)
    if compile:
        step = torch.compile(step)
    mc = model.config
    batch = random_batch(batch_size, tuple(mc.image_size), mc.vocab_size, caption_length)
    batch = {k: v.to(dev) for k, v in batch.items()}
    rng = torch.Generator(device=dev).manual_seed(0)
    model.train()

    def one() -> tuple[float, float, float]:
        _sync(dev)
        t0, c0 = time.perf_counter(), time.process_time()
        with autocast(dev, amp):
            losses = step(batch, 0.4, rng)
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(dev)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu, float(losses["loss"].detach())

    rss_model = rss_mib()
    memory = PeakMemory(dev).start()
    warm = [one() for _ in range(warmup)]
    timed = [one() for _ in range(repeats)]
    added = memory.added_mib()
    times = [t for t, _, _ in timed]
    record: dict[str, Any] = {
        "bench": "train-step",
        "backbone": backbone,
        "variant": variant,
        "batch_size": batch_size,
        "caption_length": list(_check_lengths(caption_length)),
        "model": mc.summary(),
        "dtype": dtype,
        "autocast": str(amp).replace("torch.", "") if amp else None,
        "compile": compile,
        "seconds_per_step": statistics.median(times),
        "seconds_min": min(times),
        "seconds_all": times,
        # CPU seconds of this process per step (all threads): on a shared machine less
        # disturbed by other processes than the wall clock
        "cpu_seconds_per_step": statistics.median(c for _, c, _ in timed),
        "warmup_seconds": [t for t, _, _ in warm],
        "pairs_per_second": batch_size / statistics.median(times),
        "losses": [v for _, _, v in warm + timed],
        "rss_after_imports_mib": round(rss_imports, 1),
        "rss_after_model_mib": round(rss_model, 1),
        "added_peak_mib": round(added, 1),
        "added_peak_kind": memory.kind,
        "parameters": model.num_parameters(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "warmup": warmup,
        "repeats": repeats,
        **_environment(dev),
    }
    if dev.type == "cuda":
        record["cuda_peak_allocated_mib"] = round(memory.peak_mib(), 1)
    if count_flops and not compile:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            one()
        record["gflop_per_step"] = round(counter.get_total_flops() / 1e9, 3)
    return record


# ---- evaluation ----------------------------------------------------------------------------
def _two_stage(
    model: torch.nn.Module,
    images: list[torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    dev: torch.device,
    dtype: str,
    opts: dict[str, Any],
) -> dict[str, Any]:
    """One timed evaluation in ``dtype``: embeddings, similarities, re-ranking; scores and
    figures (seconds, memory)."""
    from rasa.engine.evaluate import embed_images, embed_texts, similarity
    from rasa.engine.ranking import compose_scores, rerank_logits

    amp = autocast_dtype(dtype, dev)
    memory = PeakMemory(dev).start()
    _sync(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    image_tokens, image_feats = embed_images(model, images, dev, amp, progress=False)
    t1 = time.perf_counter()
    text_tokens, text_feats = embed_texts(
        model, ids, mask, opts["batch_size"], dev, amp, progress=False
    )
    sims = similarity(text_feats, image_feats, dev)
    _sync(dev)
    t2 = time.perf_counter()
    result = rerank_logits(
        model, text_tokens, mask, sims, image_tokens, k, pair_batch=opts["pair_batch"],
        image_block=opts["image_block"], share_min=opts["share_min"], autocast_dtype=amp,
    )  # fmt: skip
    scores = compose_scores(sims, result, "official")
    _sync(dev)
    t3 = time.perf_counter()
    figures = {
        "dtype": dtype,
        "autocast": str(amp).replace("torch.", "") if amp else None,
        "embed_images_s": t1 - t0,
        "embed_texts_s": t2 - t1,
        "embed_s": t2 - t0,
        "rerank_s": t3 - t2,
        "total_s": t3 - t0,
        "cpu_total_s": time.process_time() - c0,  # this process, all threads
        "rerank_ms_per_query": 1000 * (t3 - t2) / ids.shape[0],
        "added_peak_mib": round(memory.added_mib(), 1),
        "added_peak_kind": memory.kind,
    }
    if dev.type == "cuda":
        figures["cuda_peak_allocated_mib"] = round(memory.peak_mib(), 1)
    return {"figures": figures, "scores": scores, "sims": sims, "amp": amp,
            "text_tokens": text_tokens, "image_tokens": image_tokens}  # fmt: skip


@torch.no_grad()
def bench_evaluate(
    model: str | torch.nn.Module = "tiny",
    num_queries: int = 300,
    num_images: int = 600,
    k: int = 32,
    *,
    sizes: dict[str, Any] | None = None,
    caption_length: tuple[int, int] = (3, 30),
    batch_size: int = 64,
    pair_batch: int = 256,
    image_block: int = 256,
    device: str | torch.device | None = None,
    dtype: str = "fp32",
    compare: str | None = None,
    naive_queries: int | None = None,
    share_min: int | None = None,
    threads: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Time evaluation on random data: embedding, batched re-ranking, and the official-style
    per-query loop on ``naive_queries`` queries (default all; 0 skips it) for comparison.

    Returns a JSON-able dict of sizes, seconds, ms per query, memory, the speed-up over the
    loop and the largest score difference between the two (they compute the same function).
    ``compare`` (e.g. "fp32" beside ``dtype="bf16"``) runs the evaluation again in that
    precision and reports its figures under ``compare`` with the agreement of the two: the
    share of queries with the same top-1 image, and R@1 / mAP of both against synthetic
    person ids (two images and ``num_queries / (num_images / 2)`` captions per id).
    """
    from rasa.engine.evaluate import resolve_device
    from rasa.engine.ranking import rerank_naive
    from rasa.models import create_model

    rss_imports = rss_mib()
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    if isinstance(model, str):
        torch.manual_seed(seed)
        model = create_model(model, **model_overrides(model, sizes))
    model.to(dev).eval()
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size
    images = [
        torch.randn(min(batch_size, num_images - s), 3, h, w, generator=gen)
        for s in range(0, num_images, batch_size)
    ]
    ids, mask = random_captions(num_queries, caption_length, cfg.vocab_size, gen)
    opts = {"batch_size": batch_size, "pair_batch": pair_batch, "image_block": image_block,
            "share_min": share_min}  # fmt: skip

    rss_model = rss_mib()
    run = _two_stage(model, images, ids, mask, k, dev, dtype, opts)
    report: dict[str, Any] = {
        "bench": "evaluate",
        "model": cfg.name,
        "model_size": cfg.summary(),
        "num_queries": num_queries,
        "num_images": num_images,
        "caption_length": list(_check_lengths(caption_length)),
        "k": min(k, num_images),
        "batch_size": batch_size,
        "pair_batch": pair_batch,
        "image_block": image_block,
        "share_min": share_min or 0,
        **run["figures"],
        "rss_after_imports_mib": round(rss_imports, 1),
        "rss_after_model_mib": round(rss_model, 1),
        **_environment(dev),
    }
    if compare is not None:
        other = _two_stage(model, images, ids, mask, k, dev, compare, opts)
        report["compare"] = other["figures"]
        report["agreement"] = _agreement(run["scores"], other["scores"], num_images, dev)
        report["agreement"]["first_stage"] = _agreement(run["sims"], other["sims"], num_images, dev)
        del other
    n = num_queries if naive_queries is None else min(naive_queries, num_queries)
    if n > 0:
        amp, text_tokens = run["amp"], run["text_tokens"]
        tt = text_tokens[:n].float() if amp is None else text_tokens[:n]
        with autocast(dev, amp):
            t4 = time.perf_counter()
            slow = rerank_naive(
                model, tt, mask[:n], run["sims"][:n], run["image_tokens"], k, layout="official"
            )
            _sync(dev)
            t5 = time.perf_counter()
        report["naive_queries"] = n
        report["naive_ms_per_query"] = 1000 * (t5 - t4) / n
        report["speedup"] = report["naive_ms_per_query"] / max(1e-9, report["rerank_ms_per_query"])
        report["max_abs_diff"] = float((slow - run["scores"][:n]).abs().max())
    return report


def _agreement(a: torch.Tensor, b: torch.Tensor, num_images: int, dev: torch.device) -> dict:
    """How two score matrices [Q, G] of the same queries agree (see :func:`bench_evaluate`)."""
    from rasa.engine.metrics import retrieval_metrics, top_indices

    ids = max(1, num_images // 2)
    query_pids = torch.arange(a.shape[0]) % ids
    gallery_pids = torch.arange(a.shape[1]) % ids
    metric_dev = dev if dev.type == "cuda" else None
    ma = retrieval_metrics(a, query_pids, gallery_pids, device=metric_dev)
    mb = retrieval_metrics(b, query_pids, gallery_pids, device=metric_dev)
    same_top1 = top_indices(a, 1).eq(top_indices(b, 1)).float().mean()
    return {
        "top1_same": float(same_top1),
        "r1": [ma["r1"], mb["r1"]],
        "mAP": [ma["mAP"], mb["mAP"]],
    }
