"""Official RaSa checkpoints (Flame-Chasers/RaSa ``Retrieval.py`` layout): load and export.

Layout: ``{'model': state_dict, 'config': dict}`` with ``visual_encoder.*``,
``text_encoder.bert.*``, ``text_encoder.cls.predictions.*`` (MLM head; its decoder weight is
tied to the word embeddings and ``cls.predictions.bias`` duplicates ``decoder.bias``), heads,
momentum copies ``*_m`` and queues; ``config['bert_config']`` names a BERT config JSON
resolved beside the checkpoint (head count, ``fusion_layer``, ``layer_norm_eps``),
``config['image_res']`` the training resolution. Every size is read from these files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rasa.errors import ConfigError, DataError
from rasa.io import torch_save, write_json
from rasa.models.config import ModelConfig
from rasa.models.loaders.common import (
    LoadReport,
    bert_vit_sizes,
    check_position_ids,
    check_tied,
    load_into,
    official_tokenizer,
    read_checkpoint,
    require,
)
from rasa.models.rasa_model import RaSaModel
from rasa.models.vit import interpolate_pos_embed, pos_grid

# (our text module, its MLM head) <- official text encoder prefix
TEXT_PREFIXES = (("text_encoder", "mlm_head"), ("text_encoder_m", "mlm_head_m"))
# key prefixes every official checkpoint has (anything without them has another layout)
OFFICIAL_MARKERS = ("visual_encoder.", "text_encoder.bert.")


def official_to_ours(
    sd: dict[str, Tensor], source: str, dropped: list[str] | None = None
) -> dict[str, Tensor]:
    """Rename official keys to ours, checking tied/duplicate keys and dropping buffers.

    Takes the pre-training layout (``text_encoder.bert.*`` + ``text_encoder.cls.*``) and the
    fine-tuned retrieval layout of ALBEF's/TCL's ``Retrieval.py`` (``text_encoder.*``, a plain
    BERT without MLM head). The keys left out (position-id buffers, the duplicate MLM bias)
    are appended to ``dropped``.
    """
    out: dict[str, Tensor] = {}
    dropped = dropped if dropped is not None else []
    for key, value in sd.items():
        new = key
        for text, head in TEXT_PREFIXES:
            bert, cls = f"{text}.bert.", f"{text}.cls.predictions."
            if key.startswith(bert):
                new = text + "." + key[len(bert) :]
            elif key.startswith(cls):
                rest = key[len(cls) :]
                new = f"{head}.{rest}"
                if rest == "bias":  # duplicate of decoder.bias (the same Parameter in BERT)
                    if cls + "decoder.bias" in sd:
                        check_tied(sd, key, sd[cls + "decoder.bias"], cls + "decoder.bias", source)
                        new = ""
                    else:
                        new = f"{head}.decoder.bias"
                elif rest == "decoder.weight":  # tied to the word embeddings
                    word = bert + "embeddings.word_embeddings.weight"
                    if word in sd:
                        check_tied(sd, key, sd[word], word, source)
            if new == f"{text}.embeddings.position_ids":  # a buffer in both layouts
                check_position_ids(sd, key, source)
                new = ""
        if new:
            out[new] = value
        else:
            dropped.append(key)
    for text, head in TEXT_PREFIXES:  # the tied decoder weight is a key of our state dict
        word = f"{text}.embeddings.word_embeddings.weight"
        if word in out:
            out.setdefault(f"{head}.decoder.weight", out[word])
    return out


def ours_to_official(model: RaSaModel) -> dict[str, Tensor]:
    """Our state dict in the official key layout (tied and duplicate keys written out)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        new = key
        for text, head in TEXT_PREFIXES:
            if key.startswith(text + "."):
                new = f"{text}.bert." + key[len(text) + 1 :]
            elif key.startswith(head + "."):
                new = f"{text}.cls.predictions." + key[len(head) + 1 :]
                if key == f"{head}.decoder.bias":
                    out[f"{text}.cls.predictions.bias"] = value
        out[new] = value
    for text, _ in TEXT_PREFIXES:
        n = model.config.max_position_embeddings
        out[f"{text}.bert.embeddings.position_ids"] = torch.arange(n).unsqueeze(0)
    return out


def infer_config(
    sd: dict[str, Tensor], bert: dict[str, Any], image_res: Any, source: str, **overrides: Any
) -> ModelConfig:
    """A :class:`ModelConfig` from checkpoint shapes + BERT config + training resolution."""
    t = "text_encoder.bert."
    sizes = bert_vit_sizes(sd, t, source)
    patch = sd["visual_encoder.patch_embed.proj.weight"]
    cfg: dict[str, Any] = dict(
        sizes,
        name="official",
        image_size=tuple(image_res) if image_res is not None else square_size(sd, patch, source),
        text_heads=bert.get("num_attention_heads", sizes["text_width"] // 64),
        fusion_layer=bert.get("fusion_layer", sizes["fusion_layer"]),
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
        pad_token_id=bert.get("pad_token_id", 0),
        hidden_dropout=bert.get("hidden_dropout_prob", 0.1),
        attention_dropout=bert.get("attention_probs_dropout_prob", 0.1),
        queue_size=sd["image_queue"].shape[1] if "image_queue" in sd else 65536,
        add_sep=False,  # the official tokenizer writes [CLS] + word pieces, no [SEP]
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


def square_size(sd: dict[str, Tensor], patch: Tensor, source: str) -> tuple[int, int]:
    """Image size implied by a square position grid (when the checkpoint names none)."""
    rows = require(sd, "visual_encoder.pos_embed", source).shape[1]
    try:
        grid = pos_grid(rows, None, patch.shape[-1])
    except ValueError as err:
        raise DataError(f"Checkpoint {source}: {err} (config['image_res'] is missing).") from err
    return (grid[0] * patch.shape[-1], grid[1] * patch.shape[-1])


def resample_pos_embeds(
    state: dict[str, Tensor], cfg: ModelConfig, ckpt_image_size: Any, notes: list[str]
) -> None:
    """Interpolate ``visual_encoder(_m).pos_embed`` in place when the grids differ."""
    for prefix in ("visual_encoder", "visual_encoder_m"):
        key = f"{prefix}.pos_embed"
        if key not in state:
            continue
        rows = state[key].shape[1]
        if rows == 1 + cfg.grid[0] * cfg.grid[1] and ckpt_image_size is None:
            continue
        old = pos_grid(rows, ckpt_image_size, cfg.patch_size)
        if old != cfg.grid:
            state[key] = interpolate_pos_embed(state[key], old, cfg.grid)
            notes.append(f"{key}: position grid interpolated {old} -> {cfg.grid}")


def load_official(
    path: str | Path, strict: bool = True, bert_config: str | Path | None = None, **overrides: Any
) -> RaSaModel:
    """Build a :class:`RaSaModel` from an official RaSa checkpoint; ``model.load_report`` says how.

    ``overrides`` change non-shape settings (e.g. ``image_size`` -> position embeddings are
    interpolated, ``official_semantics``, dropout).
    """
    path = Path(path)
    sd, rest = read_checkpoint(path)
    if not all(any(k.startswith(p) for k in sd) for p in OFFICIAL_MARKERS):
        raise DataError(
            f"Checkpoint {path}: unknown layout. It is neither a rasa checkpoint (a dict with "
            "version, model and model_config) nor an official RaSa one (keys "
            f"{', '.join(p + '*' for p in OFFICIAL_MARKERS)}); its keys begin "
            f"{', '.join(sorted({k.split('.')[0] for k in sd})[:6])}."
        )
    ckpt_cfg = rest.get("config") or {}
    bert_path = Path(bert_config) if bert_config else None
    if bert_path is None:
        name = Path(ckpt_cfg.get("bert_config", "config_bert.json")).name
        bert_path = path.parent / name
    if not bert_path.is_file():
        raise DataError(
            f"Checkpoint {path}: its BERT config {bert_path} is missing; put the official "
            "config_bert.json beside the checkpoint or pass bert_config=."
        )
    bert = json.loads(bert_path.read_text(encoding="utf-8"))
    image_res = ckpt_cfg.get("image_res")
    if isinstance(image_res, int):
        image_res = (image_res, image_res)
    overrides.setdefault("momentum", ckpt_cfg.get("momentum", 0.995))
    overrides.setdefault("temp", float(ckpt_cfg.get("temp", 0.07)))
    cfg = infer_config(sd, bert, image_res, str(path), **overrides)
    dropped: list[str] = []
    state = official_to_ours(sd, str(path), dropped)
    notes: list[str] = []
    resample_pos_embeds(state, cfg, image_res, notes)
    model = RaSaModel(cfg)
    official_tokenizer(model, str(path), notes)
    model.load_report = load_into(
        model, state, str(path), strict=strict, notes=notes, dropped=dropped
    )
    model.checkpoint_config = dict(ckpt_cfg)  # e.g. k_test, max_words of the official run
    return model


def export_official(model: RaSaModel, path: str | Path, extra_config: dict | None = None) -> None:
    """Write ``model`` as an official checkpoint (+ ``config_bert.json`` beside it)."""
    path = Path(path)
    c = model.config
    if c.arch != "albef":
        raise ConfigError(
            f"Cannot export model {c.name!r} (arch {c.arch!r}) in the official RaSa layout, "
            "which holds a timm ViT + BERT stack only."
        )
    if c.vision_heads != max(1, c.vision_width // 64):
        raise ConfigError(
            f"Cannot export model {c.name!r} in the official layout: it has {c.vision_heads} ViT "
            f"heads, but official checkpoints imply width / 64 = {c.vision_width // 64}."
        )
    bert = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": c.attention_dropout,
        "hidden_act": "gelu",
        "hidden_dropout_prob": c.hidden_dropout,
        "hidden_size": c.text_width,
        "initializer_range": c.init_std,
        "intermediate_size": c.text_intermediate,
        "layer_norm_eps": c.layer_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "model_type": "bert",
        "num_attention_heads": c.text_heads,
        "num_hidden_layers": c.num_layers,
        "pad_token_id": c.pad_token_id,
        "type_vocab_size": c.type_vocab_size,
        "vocab_size": c.vocab_size,
        "fusion_layer": c.fusion_layer,
        "encoder_width": c.encoder_width,
    }
    config = {
        "bert_config": "config_bert.json",
        "image_res": list(c.image_size),
        "embed_dim": c.embed_dim,
        "vision_width": c.vision_width,
        "queue_size": c.queue_size,
        "momentum": c.momentum,
        "temp": c.temp,
        **(extra_config or {}),
    }
    write_json(path.parent / "config_bert.json", bert)
    torch_save({"model": ours_to_official(model), "config": config}, path)


__all__ = ["LoadReport", "export_official", "infer_config", "load_official", "ours_to_official"]
