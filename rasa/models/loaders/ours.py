"""Our own checkpoints as a starting point (e.g. a ``rasa pretrain`` checkpoint, issue #12).

A checkpoint written by :mod:`rasa.engine.checkpoint` holds ``model`` (the state dict),
``model_config`` (the architecture), ``config`` (the run that wrote it, with its ``variant``)
and ``tokenizer`` (the record of its tokenizer). The model is rebuilt from ``model_config``
with the run's non-shape overrides (queue length, resolution: position grids are
interpolated). The heads the checkpoint's run did not train (those outside its variant,
``rasa_model.variant_heads``; or the kinds listed in ``config['trained_heads']``) and the queues
(another dataset's features and ids) are initialised fresh and reported new; anything else the
checkpoint lacks is an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from rasa.errors import ConfigError
from rasa.models.config import ModelConfig
from rasa.models.loaders.common import load_into, read_checkpoint, with_momentum
from rasa.models.loaders.official import resample_pos_embeds
from rasa.models.rasa_model import RaSaModel, variant_heads

ALL_HEADS = tuple(p for group in RaSaModel.HEADS.values() for p in group)


def trained_heads(config: dict[str, Any] | None, source: str) -> tuple[tuple[str, ...], str]:
    """(head prefixes the checkpoint's run trained, how that is known)."""
    config = config or {}
    kinds = config.get("trained_heads")
    if kinds is not None:
        unknown = sorted(set(kinds) - set(RaSaModel.HEADS))
        if unknown:
            raise ConfigError(
                f"Checkpoint {source}: config.trained_heads {unknown} unknown; expected some of "
                f"{sorted(RaSaModel.HEADS)}."
            )
        return tuple(p for k in kinds for p in RaSaModel.HEADS[k]), "its trained_heads"
    variant = config.get("variant")
    if variant:
        return variant_heads(variant), f"its variant {variant!r}"
    return ALL_HEADS, "no variant recorded: every head it holds"


def is_ours(rest: dict[str, Any]) -> bool:
    """Whether the non-model entries of a checkpoint file are those of our checkpoints."""
    return isinstance(rest.get("model_config"), dict)


def load_ours(
    path: str | Path, base: ModelConfig, strict: bool = True, **overrides: Any
) -> RaSaModel:
    """A :class:`RaSaModel` from one of our checkpoints (or a bare state dict of ``base``'s
    architecture); ``model.load_report`` says how, ``model.tokenizer_record`` is its tokenizer."""
    path = Path(path)
    source = str(path)
    sd, rest = read_checkpoint(path)
    stored = rest.get("model_config") if is_ours(rest) else None
    if stored is not None:
        ckpt_cfg = ModelConfig.from_dict(stored, source=source)
        cfg = ckpt_cfg.replace(name=base.name, **overrides)
        ckpt_size: tuple[int, int] | None = ckpt_cfg.image_size
    else:
        cfg, ckpt_size = base.replace(**overrides), None
    state: dict[str, Tensor] = dict(sd)
    notes: list[str] = []
    dropped: list[str] = []
    resample_pos_embeds(state, cfg, ckpt_size, notes)
    heads, how = trained_heads(rest.get("config"), source)
    fresh = with_momentum(tuple(p for p in ALL_HEADS if not p.startswith(heads)))
    for k in list(state):
        if k.startswith(fresh) or k in RaSaModel.QUEUE_KEYS:
            dropped.append(k)
            del state[k]
    notes.append(f"heads loaded: those the checkpoint's run trained ({how})")
    notes.append("queues re-initialised (they hold the features and ids of another run's data)")
    model = RaSaModel(cfg)
    model.load_report = load_into(
        model, state, source, new_prefixes=fresh + RaSaModel.QUEUE_KEYS, strict=strict,
        notes=notes, dropped=dropped,
    )  # fmt: skip
    record = rest.get("tokenizer")
    model.tokenizer_record = record if isinstance(record, dict) else None
    model.tokenizer_source = source
    return model
