"""The data a training run reads: annotations, the token cache, and the validation split.

Model selection is on validation (DESIGN.md; the official code selects on test). Datasets
without a val split (ICFG-PEDES) get one carved from train identities by
:func:`carve_validation`, deterministically and independently of the experiment seed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np


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
