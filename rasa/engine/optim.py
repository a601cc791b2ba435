"""Optimizer and schedule of a training run (paper §4.1 settings, as the official code).

AdamW parameter groups (``lr`` for parts loaded from the starting checkpoint, ``lr_new`` for new
heads; no weight decay on biases and norms), the learning-rate schedule (linear warm-up, then
cosine down to ``min_lr_ratio``) over a step budget (:class:`Schedule`), and the alpha warm-up
of momentum distillation. Deterministic given their inputs; used by both loops and the step
bench.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rasa.engine import distributed as D
from rasa.engine.checkpoint import unwrap
from rasa.errors import ConfigError


def param_groups(model: torch.nn.Module, tc: Any) -> list[dict[str, Any]]:
    """AdamW groups: pretrained vs new (lr vs lr_new) x decay vs no decay (biases, norms).

    As the official code: a parameter loaded from the starting checkpoint trains at ``lr``
    (that includes ALBEF's ITM head); one the load report does not list as loaded (RaSa's PRD
    and m-RTD heads, whatever else the loader reports new) at ``lr_new``. A model built without
    loading anything is all new. ``tc`` needs ``lr``, ``lr_new`` and ``weight_decay``; each
    group keeps its ``base_lr``.
    """
    report = getattr(unwrap(model), "load_report", None)
    loaded = set(report.loaded) if report is not None else set()
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = name not in loaded
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
