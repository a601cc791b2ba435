"""The test split is scored at most once per reported checkpoint (DESIGN.md: "the test split
is evaluated once").

``rasa train`` scores the test split for the selected checkpoint at its end; the workflow's
``evaluate`` step (``rasa evaluate`` on ``checkpoint_best.pt``) would score the same checkpoint
again. So the training run stores its test scores beside the checkpoint, in
``test_scores.json``: the metrics and top-k documents of :func:`rasa.engine.evaluate.evaluate_model`
with the :func:`evaluation_key` they were computed under. ``rasa evaluate`` reuses them when
its own key is equal: the same checkpoint file (sha256), split, annotation table and token
cache (sha256), re-ranking depth ``k``, batch sizes, dtype, resize, layout, device type, CPU
threads and evaluation code (sha256 of evaluate.py, ranking.py and metrics.py). Any difference
(a transfer to another dataset, bf16 in training vs fp32 in ``rasa evaluate``, a code change)
scores afresh.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from rasa.io import write_json

SCORES = "test_scores.json"
SCORES_VERSION = 1
_CODE = ("evaluate.py", "ranking.py", "metrics.py")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _code_sha256() -> str:
    digest = hashlib.sha256()
    for name in _CODE:
        digest.update((Path(__file__).with_name(name)).read_bytes())
    return digest.hexdigest()


def evaluation_key(
    checkpoint: str | Path,
    annotations: str | Path,
    tokens: str | Path,
    split: str,
    *,
    k: int,
    batch_size: int,
    dtype: str,
    resize: str,
    device: torch.device,
    layout: str = "ours",
    pair_batch: int = 256,
    image_block: int = 256,
    k_fraction: float | None = None,
) -> dict[str, Any]:
    """Everything the scores of one evaluation depend on (see the module docstring)."""
    return {
        "version": SCORES_VERSION,
        "checkpoint_sha256": file_sha256(checkpoint),
        "annotations_sha256": file_sha256(annotations),
        "tokens_sha256": file_sha256(tokens),
        "split": split,
        "k": k,
        "k_fraction": k_fraction,
        "batch_size": batch_size,
        "dtype": dtype,
        "resize": resize,
        "layout": layout,
        "pair_batch": pair_batch,
        "image_block": image_block,
        "device": torch.device(device).type,
        "threads": torch.get_num_threads(),
        "code_sha256": _code_sha256(),
    }


def save_scores(
    checkpoint: str | Path, key: dict[str, Any], metrics: dict[str, Any], topk: dict[str, Any]
) -> Path:
    """Store the scores of ``checkpoint`` beside it (atomically); returns the file."""
    path = Path(checkpoint).with_name(SCORES)
    write_json(path, {"key": key, "metrics": metrics, "topk": topk}, indent=None)
    return path


def load_scores(
    checkpoint: str | Path, key: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(metrics, topk) stored beside ``checkpoint`` under an equal ``key``, else None (also
    for a missing or unreadable file: the caller then scores afresh)."""
    path = Path(checkpoint).with_name(SCORES)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key:
        return None
    return doc["metrics"], doc["topk"]
