"""Building blocks of a training run that do not depend on the loop (paper §4.1 settings).

Both loops (:mod:`rasa.engine.train`, RaSa; :mod:`rasa.weak.train`, CMMT) and the step bench
(:mod:`rasa.engine.bench`) use these: device choice and seeding, the model built for a token
cache, AdamW parameter groups (lr for pretrained parts vs new heads, no decay on biases and
norms), the learning-rate schedule (linear warm-up, then cosine) and the alpha warm-up of
momentum distillation, the validation split carved from train identities when a dataset has
none, and the two-stage evaluation of a split. Everything here is deterministic given its
inputs; the loop-level pieces (checkpoints, preemption, model selection, the final report)
are in :mod:`rasa.engine.loop`.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from rasa.engine import distributed as D
from rasa.engine.checkpoint import unwrap
from rasa.errors import ConfigError

NEW_HEADS = ("itm_head", "prd_head", "mrtd_head")
FLAT_KEYS = ("r1", "r5", "r10", "mAP", "mINP", "r_mean")
EXTRA_FLAT_KEYS = ("k", "itm_loss", "itm_acc", "itm_acc_pos", "itm_acc_neg", "itm_loss_hardest",
                   "itm_acc_hardest", "itm_loss_random", "itm_acc_random")  # fmt: skip


# ---- device, seeds, batches ----------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; an unavailable CUDA request raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine.")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tensors of a collated batch on ``device`` (other values unchanged)."""
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar of ``total`` steps, or None when disabled (not the main process, tests)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ---- model, losses, optimizer --------------------------------------------------------------
def build_model(backbone: str, overrides: dict[str, Any], cache: Any) -> torch.nn.Module:
    """``create_model`` with the vocabulary of the token cache for tokenizers we train.

    A ``wordpiece:N`` cache (or a ``cache:`` one reusing another cache's tokenizer) has its
    own vocabulary: the text embedding takes its size and pad id. A pretrained vocabulary
    (``minilm``, ``bert:DIR``) must fit the model's.
    """
    from rasa.models import create_model

    kwargs = dict(overrides)
    spec = str(cache.meta.get("spec", ""))
    # `cache:` reuses another cache's tokenizer, e.g. the pre-training corpus's wordpiece one
    if spec.startswith(("wordpiece", "cache:")):
        kwargs.setdefault("vocab_size", cache.vocab_size)
        kwargs.setdefault("pad_token_id", cache.pad_id)
    model = create_model(backbone, **kwargs)
    if cache.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"token cache {cache.path}: vocabulary of {cache.vocab_size} tokens ({spec}) does "
            f"not fit backbone {backbone!r} ({model.config.vocab_size} embeddings); use the "
            "backbone's tokenizer (backbones.<name>.tokenizer in params.yaml)."
        )
    return model


def make_loss_config(loss: dict[str, Any], cache: Any) -> Any:
    """``LossConfig`` from the ``loss`` section, with the special-token ids of the cache."""
    from rasa.objectives import LossConfig, SpecialTokens

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in loss.items()}
    return LossConfig(**kwargs, tokens=SpecialTokens.from_meta(cache.meta))


def param_groups(model: torch.nn.Module, tc: Any) -> list[dict[str, Any]]:
    """AdamW groups: pretrained vs new (lr vs lr_new) x decay vs no decay (biases, norms).

    New = the ITM/PRD/mRTD heads plus every tensor the backbone loader reports as new
    (``model.load_report.new``); a model built without loading anything is all new. ``tc``
    needs ``lr``, ``lr_new`` and ``weight_decay``; each group keeps its ``base_lr``.
    """
    report = getattr(model, "load_report", None)
    loaded = set(report.loaded) if report is not None else set()
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = name.startswith(NEW_HEADS) or name not in loaded
        decay = p.ndim >= 2 and "norm" not in name.lower() and not name.endswith("temp")
        buckets.setdefault((new, decay), []).append(p)
    groups = []
    for (new, decay), params in sorted(buckets.items()):
        lr = tc.lr_new if new else tc.lr
        groups.append({
            "params": params, "lr": lr, "base_lr": lr,
            "weight_decay": tc.weight_decay if decay else 0.0,
            "name": f"{'new' if new else 'pretrained'}{'' if decay else '_no_decay'}",
        })  # fmt: skip
    return groups


def make_optimizer(model: torch.nn.Module, tc: Any) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` (betas 0.9, 0.999; weight decay per group)."""
    groups = param_groups(model, tc)
    return torch.optim.AdamW(groups, weight_decay=tc.weight_decay, betas=(0.9, 0.999))


# ---- schedule ------------------------------------------------------------------------------
def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): warm-up, then cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def alpha_at(alpha: float, warmup: bool, epoch: int, step_in_epoch: int, steps: int) -> float:
    """Momentum-distillation weight; official: ``alpha * min(1, i / len(loader))`` in epoch 0."""
    if warmup and epoch == 0:
        return alpha * min(1.0, step_in_epoch / max(1, steps))
    return alpha


@dataclass(frozen=True)
class Schedule:
    """The step budget of a run and its learning-rate schedule.

    ``steps_per_epoch`` full global batches (the last partial one is dropped), ``total_steps``
    = epochs x steps per epoch capped by ``train.max_steps``, ``warmup_steps`` =
    ``round(train.warmup_epochs * steps_per_epoch)``.
    """

    epochs: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float

    @classmethod
    def from_config(cls, n_pairs: int, tc: Any, source: Any) -> Schedule:
        """The schedule of ``n_pairs`` training pairs under ``cfg.train`` (``source``: the file)."""
        per_epoch = D.steps_per_epoch(n_pairs, tc.batch_size)
        if per_epoch == 0:
            raise ConfigError(
                f"{source}: the train split has {n_pairs} pairs, fewer than train.batch_size = "
                f"{tc.batch_size}; lower the batch size."
            )
        total = tc.epochs * per_epoch
        if tc.max_steps is not None:
            total = min(total, tc.max_steps)
        warmup = round(tc.warmup_epochs * per_epoch)
        return cls(tc.epochs, per_epoch, total, warmup, tc.min_lr_ratio)

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Each group's lr for optimizer step ``step``: ``base_lr`` x :func:`lr_factor`."""
        factor = lr_factor(step, self.total_steps, self.warmup_steps, self.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor


# ---- data splits and evaluation ------------------------------------------------------------
def load_training_data(cfg: Any) -> tuple[Any, Any, str]:
    """Annotations (val carved from train if needed), the matching token cache, the val note."""
    from rasa.data.annotations import Annotations
    from rasa.data.token_cache import load_cache

    ann = Annotations.load(cfg.annotations)
    cache = load_cache(cfg.tokens)
    cache.check_matches(ann, cfg.annotations)
    ann, val_note = carve_validation(ann, cfg.train.val_from_train)
    return ann, cache, val_note


def carve_validation(ann: Any, fraction: float) -> tuple[Any, str]:
    """Datasets without a val split (ICFG-PEDES): hold out train identities for validation.

    Deterministic and independent of the experiment seed: ``round(fraction * ids)`` identities
    drawn with ``numpy.random.default_rng(0)`` from the sorted train ids are relabelled "val".
    Caption order is unchanged, so the token cache still matches. Returns the annotations and
    a sentence for the log and metrics.json saying which validation was used.
    """
    if ann.split("val"):
        return ann, "Validation: the dataset's val split."
    pids = sorted({r.pid for r in ann.split("train")})
    n_val = round(fraction * len(pids))
    if n_val == 0:
        return ann, "No val split and val_from_train = 0: the last epoch is reported."
    held = set(np.random.default_rng(0).choice(pids, size=n_val, replace=False).tolist())
    records = [
        replace(r, split="val") if r.split == "train" and r.pid in held else r for r in ann.records
    ]
    note = (
        f"Validation: the dataset has no val split; {n_val} of {len(pids)} train identities "
        f"(fraction {fraction}, rng seed 0) are held out as val and not trained on."
    )
    return replace(ann, records=records), note


def evaluate_split(model, ann, cfg: Any, cache, split: str) -> dict[str, Any]:
    """Two-stage retrieval metrics of ``model`` on ``split`` (:mod:`rasa.engine.evaluate`).

    Evaluation timings go to ``metrics["timing"]``; everything else is deterministic. The
    model's train/eval mode is restored afterwards.
    """
    from rasa.engine.evaluate import evaluate_model, rerank_k

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    dev = next(inner.parameters()).device
    dtype = "bf16" if cfg.train.bf16 and dev.type == "cuda" else "fp32"
    with torch.no_grad():
        metrics, _ = evaluate_model(
            inner, ann, cfg.annotations, cache, split, k=rerank_k(cfg.variant, cfg.eval.k_test),
            k_fraction=cfg.eval.k_test_fraction if rerank_k(cfg.variant, 1) else None,
            batch_size=cfg.eval.batch_size, device=dev, dtype=dtype, resize=cfg.train.resize,
            progress=False,
        )  # fmt: skip
    inner.train(was_training)
    return metrics


def flat_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an evaluation, first-stage ones prefixed ``first_stage_``."""
    out = {k: m[k] for k in FLAT_KEYS + EXTRA_FLAT_KEYS if k in m}
    fs = m.get("first_stage") or {}
    out.update({f"first_stage_{k}": fs[k] for k in FLAT_KEYS if k in fs})
    rel = m.get("at_fraction") or {}  # re-ranked at k relative to the gallery
    out.update({f"at_fraction_{k}": rel[k] for k in ("k", *FLAT_KEYS) if k in rel})
    return out
