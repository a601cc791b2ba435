"""Benchmark one training step (paper Section 4.1 recipe) on random inputs of a backbone.

``rasa bench train-step --backbone tiny --variant m-rtd`` builds the model, runs a few warm-up
steps (forward with the variant's losses, backward, AdamW step), then times ``repeats`` more
and prints ONE JSON line: median seconds per step, peak memory (CUDA: max allocated; CPU: the
process's peak resident set from ``resource``), and the configuration. No data files needed:
images are Gaussian noise, captions random token ids, person ids drawn so that every person
has two pairs (hard negatives exist).
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from typing import Any

import torch

from rasa.errors import ConfigError

# Special-token ids of our WordPiece tokenizers: [PAD] [UNK] [CLS] [SEP] [MASK] = 0..4.
SPECIALS = {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}


def random_batch(
    batch_size: int,
    image_size: tuple[int, int],
    vocab_size: int,
    text_len: int = 30,
    weak_rate: float = 0.1,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A training batch with the keys of ``TrainDataset`` + ``collate`` (random content)."""
    g = torch.Generator().manual_seed(seed)
    h, w = image_size

    def text() -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(text_len // 2, text_len + 1, (batch_size,), generator=g)
        ids = torch.randint(5, vocab_size, (batch_size, text_len), generator=g)
        mask = (torch.arange(text_len)[None, :] < lengths[:, None]).long()
        ids[:, 0] = SPECIALS["cls_id"]
        ids[torch.arange(batch_size), lengths - 1] = SPECIALS["sep_id"]
        ids = ids.masked_fill(mask == 0, SPECIALS["pad_id"])
        return ids, mask

    t1, m1 = text()
    t2, m2 = text()
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


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


def bench_train_step(
    backbone: str = "tiny",
    variant: str = "m-rtd",
    batch_size: int = 32,
    image_size: tuple[int, int] | None = None,
    device: str = "auto",
    bf16: bool = False,
    warmup: int = 2,
    repeats: int = 5,
    vocab_size: int = 2000,
    overrides: dict[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Median seconds of one full optimizer step; returns the JSON-able record."""
    from rasa.engine.runtime import make_loss_config, param_groups, pick_device
    from rasa.engine.train import StepModule
    from rasa.models import create_model
    from rasa.variants import get_variant

    if warmup < 0 or repeats < 1 or batch_size < 2:
        raise ConfigError("bench: expected warmup >= 0, repeats >= 1 and batch size >= 2.")
    if threads:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    torch.manual_seed(0)
    kwargs = dict(overrides or {})
    if backbone == "tiny":
        kwargs.setdefault("vocab_size", vocab_size)
    if image_size is not None:
        kwargs["image_size"] = tuple(image_size)
    model = create_model(backbone, **kwargs).to(dev)
    var = get_variant(variant)
    if var.rtd == "fixed":
        raise ConfigError(
            "bench train-step: f-rtd needs a trained generator; bench m-rtd or o-rtd."
        )

    class _TC:  # the two fields param_groups reads
        lr = 1e-5
        lr_new = 1e-4
        weight_decay = 0.02

    opt = torch.optim.AdamW(param_groups(model, _TC), weight_decay=0.02)
    loss_cfg = make_loss_config({}, type("C", (), {"meta": SPECIALS})())
    step = StepModule(model, var, loss_cfg, None)
    mc = model.config
    batch = random_batch(batch_size, tuple(mc.image_size), mc.vocab_size)
    batch = {k: v.to(dev) for k, v in batch.items()}
    rng = torch.Generator(device=dev).manual_seed(0)
    use_bf16 = bf16 and dev.type == "cuda"
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def one() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            losses = step(batch, 0.4, rng)
        losses["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    for _ in range(warmup):
        one()
    times = [one() for _ in range(repeats)]
    return {
        "bench": "train-step",
        "backbone": backbone,
        "variant": variant,
        "batch_size": batch_size,
        "image_size": list(mc.image_size),
        "device": str(dev),
        "bf16": use_bf16,
        "seconds_per_step": statistics.median(times),
        "seconds_all": times,
        "pairs_per_second": batch_size / statistics.median(times),
        "peak_memory_mib": round(peak_memory_mib(dev), 1),
        "peak_memory_kind": "cuda_max_allocated" if dev.type == "cuda" else "process_max_rss",
        "parameters": model.num_parameters(),
        "warmup": warmup,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
