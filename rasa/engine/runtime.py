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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rasa.engine import distributed as D
from rasa.engine.checkpoint import unwrap
from rasa.errors import ConfigError, DataError

FLAT_KEYS = ("r1", "r5", "r10", "mAP", "mINP", "r_mean")


# ---- device, seeds, batches ----------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU; an unknown or unavailable device raises."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: expected auto, cpu, cuda or cuda:N.")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine.")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)."
        )
    return dev


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
def build_model(
    backbone: str,
    overrides: dict[str, Any],
    cache: Any,
    pretrained: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """``create_model`` for a token cache, from the weights ``pretrained`` names.

    ``pretrained`` is the resolved config's (:func:`rasa.config.resolve_pretrained`): None = the
    backbone's default weights (refused for a backbone whose weights are ``required``),
    ``"none"`` = random init, ``{path, url, sha256}`` = that file, checked before anything is
    built: it must exist and match the sha256 params give; its sha256 is written into the
    dict, so the run's config.yaml records it. Errors name ``backbones.<name>.pretrained``.

    From scratch, a ``wordpiece:N`` cache has its own vocabulary: the text embedding takes its
    size and pad id. A model loaded from a checkpoint must have been trained with the cache's
    tokenizer (identity hashes compared); a pretrained vocabulary (``minilm``, ``bert:DIR``)
    must fit the model's.
    """
    from rasa.models import create_model
    from rasa.models.registry import default_weights

    key = f"backbones.{backbone}.pretrained"
    kwargs = dict(overrides)
    spec = str(cache.meta.get("spec", ""))
    if pretrained is None and default_weights(backbone) == "required":
        raise ConfigError(
            f"{key} is not set: backbone {backbone!r} starts from a checkpoint (the paper "
            "starts every run from ALBEF). Give a local path, {url: ..., sha256: ...}, or "
            "`none` to train from random weights."
        )
    path = check_weights_file(pretrained, key) if isinstance(pretrained, dict) else None
    if path is None and spec.startswith("wordpiece"):
        kwargs.setdefault("vocab_size", cache.vocab_size)
        kwargs.setdefault("pad_token_id", cache.pad_id)
    try:
        model = create_model(backbone, pretrained=path or pretrained, **kwargs)
    except DataError as err:
        raise ConfigError(
            f"{key}: {path} is not a checkpoint backbone {backbone!r} can start from: {err}"
        ) from err
    if path is not None:
        cache.check_tokenizer(getattr(model, "tokenizer_record", None), path)
    model.tokenizer_record = cache.tokenizer_record()  # travels with every checkpoint
    if cache.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"token cache {cache.path}: vocabulary of {cache.vocab_size} tokens ({spec}) does "
            f"not fit backbone {backbone!r} ({model.config.vocab_size} embeddings); use the "
            "backbone's tokenizer (backbones.<name>.tokenizer in params.yaml)."
        )
    return model


def check_weights_file(pretrained: dict[str, Any], key: str) -> str:
    """The path of a weights file that exists and has the sha256 params give (if any); its
    sha256 is stored in ``pretrained["sha256"]``."""
    from rasa.data.fetch import file_sha256

    path = Path(pretrained["path"])
    if not path.is_file():
        how = (
            f"it is fetched from {pretrained['url']} by the workflow (`rasa data fetch --url "
            f"{pretrained['url']} --sha256 {pretrained['sha256']} --out {path}`)"
            if pretrained.get("url")
            else "download the checkpoint and put it there, or give {url, sha256}"
        )
        raise ConfigError(f"{key}: weights file {path} not found; {how}.")
    digest = file_sha256(path)
    expected = pretrained.get("sha256")
    if expected and digest != str(expected).lower():
        raise ConfigError(
            f"{key}: {path} has sha256 {digest}, but params give {expected}; the file is not "
            "the checkpoint params name (delete it to fetch it again)."
        )
    pretrained["sha256"] = digest
    return str(path)


def load_summary(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """The train log's account of the starting weights (the load report, grouped by prefix)
    and of the optimizer groups' learning rates."""
    report = getattr(unwrap(model), "load_report", None)
    lines = [report.format() if report is not None else "weights: random init (nothing loaded)"]
    if optimizer is not None:
        lines.append(
            "optimizer groups: "
            + "; ".join(
                f"{g.get('name', i)} lr {g['base_lr']:g} wd {g['weight_decay']:g} "
                f"({len(g['params'])} tensors)"
                for i, g in enumerate(optimizer.param_groups)
            )
        )
    return "\n".join(lines)


def make_loss_config(loss: dict[str, Any], cache: Any) -> Any:
    """``LossConfig`` from the ``loss`` section, with the special-token ids of the cache."""
    from rasa.objectives import LossConfig, SpecialTokens

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in loss.items()}
    return LossConfig(**kwargs, tokens=SpecialTokens.from_meta(cache.meta))


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


def evaluate_split(model, ann, cfg: Any, cache, split: str, scores: dict | None = None):
    """Two-stage retrieval metrics of ``model`` on ``split`` (:mod:`rasa.engine.evaluate`).

    Evaluation timings go to ``metrics["timing"]``; everything else is deterministic. The
    model's train/eval mode is restored afterwards. ``scores``, when given, receives the
    ``topk`` document and the evaluation ``settings`` (rasa.engine.test_scores).
    """
    from rasa.engine.evaluate import evaluate_model, rerank_k
    from rasa.engine.precision import precision_of

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    dev = next(inner.parameters()).device
    dtype = precision_of(cfg.train.bf16)  # evaluated in the precision it trains in
    settings = dict(k=rerank_k(cfg.variant, cfg.eval.k_test), batch_size=cfg.eval.batch_size,
                    dtype=dtype, resize=cfg.train.resize, device=dev)  # fmt: skip
    with torch.no_grad():
        metrics, topk = evaluate_model(
            inner, ann, cfg.annotations, cache, split, **settings, progress=False
        )
    inner.train(was_training)
    if scores is not None:
        scores.update(topk=topk, settings=settings)
    return metrics


def flat_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of an evaluation, first-stage ones prefixed ``first_stage_``."""
    out = {k: m[k] for k in FLAT_KEYS if k in m}
    fs = m.get("first_stage") or {}
    out.update({f"first_stage_{k}": fs[k] for k in FLAT_KEYS if k in fs})
    return out
