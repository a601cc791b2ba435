"""Shared checkpoint-loading machinery: reading, shape inference, strict accounting.

Every loader renames a foreign checkpoint's keys into ours and hands the result to
:func:`load_into`, which accounts for every key: loaded, ``new`` (heads or buffers the
checkpoint does not have and that are initialised fresh, reported but not an error), missing
(an error when strict), unexpected (an error when strict), shape mismatches (always an error).
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rasa.errors import ConfigError, DataError
from rasa.models.rasa_model import RaSaModel

BERT_VOCAB_SIZE = 30522  # bert-base-uncased, the vocabulary of ALBEF, TCL and RaSa


@dataclass
class LoadReport:
    """What happened to every key of a checkpoint load."""

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def format(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for title, keys in (
            ("new (initialised fresh)", self.new),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if keys:
                lines.append(f"{title}: {group_keys(keys)}")
        lines.extend(self.notes)
        return "\n".join(lines)


def group_keys(keys: list[str]) -> str:
    """``['a.b.0.w', 'a.b.1.w', 'c']`` -> ``'a.b.* (2), c (1)'`` (layer numbers folded)."""
    groups: dict[str, int] = defaultdict(int)
    for k in keys:
        parts = re.sub(r"\.\d+\.", ".N.", k).split(".")
        groups[".".join(parts[:2]) + (".*" if len(parts) > 2 else "")] += 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, rest) of a ``{'model': sd, ...}`` or bare state-dict file (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Checkpoint {path} does not exist; pass the path of a .pth file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise DataError(
            f"Checkpoint {path} could not be read with torch.load(weights_only=True): {err}"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, {}
    raise DataError(
        f"Checkpoint {path}: expected a state dict or a dict with key 'model' holding one, "
        f"got {type(obj).__name__} with keys {list(obj)[:10] if isinstance(obj, dict) else '-'}."
    )


def official_tokenizer(model: RaSaModel, source: str, notes: list[str]) -> None:
    """Give ``model`` the tokenizer record of ALBEF/TCL/official RaSa checkpoints (BERT uncased,
    no ``[SEP]``) when it embeds BERT's 30,522 pieces; other vocabularies get none (only their
    size can be checked)."""
    from rasa.data.tokenizer import official_tokenizer_record

    model.tokenizer_source = source
    if model.config.vocab_size != BERT_VOCAB_SIZE:
        notes.append(
            f"tokenizer: vocabulary of {model.config.vocab_size} (not BERT uncased's "
            f"{BERT_VOCAB_SIZE}); no tokenizer recorded, only its size is checked"
        )
        return
    try:
        model.tokenizer_record = official_tokenizer_record()
    except ConfigError as err:
        notes.append(f"tokenizer: BERT uncased not recorded ({err})")


def require(sd: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in sd:
        raise DataError(
            f"Checkpoint {source}: key {key!r} is missing; cannot infer the model size."
        )
    return sd[key]


def count_layers(sd: dict[str, Tensor], prefix: str) -> int:
    """Number of ``prefix.N.`` indices present (0 if none)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def first_cross_layer(sd: dict[str, Tensor], prefix: str, num_layers: int) -> int:
    """Index of the first BERT layer with cross-attention (= fusion_layer)."""
    for i in range(num_layers):
        if f"{prefix}.{i}.crossattention.self.key.weight" in sd:
            return i
    return num_layers


def check_tied(sd: dict[str, Tensor], key: str, ref: Tensor, what: str, source: str) -> None:
    """A duplicate/tied checkpoint key must equal the tensor it duplicates."""
    t = sd[key]
    if t.shape != ref.shape or not torch.equal(t, ref):
        raise DataError(f"Checkpoint {source}: {key!r} should equal {what} (tied), but differs.")


def check_position_ids(sd: dict[str, Tensor], key: str, source: str) -> None:
    t = sd[key]
    if not torch.equal(t.reshape(-1).long(), torch.arange(t.numel())):
        raise DataError(f"Checkpoint {source}: buffer {key!r} is not 0..N-1 position ids.")


def load_into(
    model: RaSaModel,
    state: dict[str, Tensor],
    source: str,
    new_prefixes: tuple[str, ...] = (),
    strict: bool = True,
    notes: list[str] | None = None,
) -> LoadReport:
    """Copy ``state`` (already in our key names) into ``model`` and account for every key.

    Model keys absent from ``state`` whose name starts with one of ``new_prefixes`` are
    reported as new (they keep their fresh initialisation). Shape mismatches always raise;
    missing/unexpected keys raise when ``strict``.
    """
    report = LoadReport(source=source, notes=list(notes or []))
    own = model.state_dict()
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad_shapes:
        raise DataError(f"Checkpoint {source}: shape mismatch for {'; '.join(bad_shapes)}.")
    report.unexpected = sorted(k for k in state if k not in own)
    for k in own:
        if k in state:
            report.loaded.append(k)
        elif k.startswith(new_prefixes):
            report.new.append(k)
        else:
            report.missing.append(k)
    if strict and not report.ok:
        raise DataError(f"Checkpoint {source} does not match the model:\n{report.format()}")
    to_load = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    return report
