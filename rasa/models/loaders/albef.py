"""ALBEF and TCL pretrained checkpoints -> RaSa (the paper's initialisations, §4.1, Table 8).

Both release ``{'model': state_dict, ...}`` in the ALBEF pre-training layout:
``visual_encoder.*`` (ViT-B/16, pre-trained at 256x256), ``text_encoder.bert.*`` (BERT-base,
cross-attention from ``fusion_layer`` = 6 on), ``text_encoder.cls.predictions.*``,
``vision_proj``, ``text_proj``, ``itm_head``, ``temp``, momentum copies ``*_m``,
``image_queue``, ``text_queue``, ``queue_ptr`` (TCL: the same keys). RaSa's own heads
(``prd_head``, ``mrtd_head``) and ``idx_queue`` are new. The ViT position grid is interpolated
to the configured resolution; sizes are read from the tensors (BERT heads = width / 64).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from rasa.models.config import ModelConfig
from rasa.models.loaders.common import (
    count_layers,
    first_cross_layer,
    load_into,
    official_tokenizer,
    read_checkpoint,
    require,
)
from rasa.models.loaders.official import official_to_ours, resample_pos_embeds
from rasa.models.rasa_model import RaSaModel

MOMENTUM_PREFIXES = (
    "visual_encoder_m.",
    "text_encoder_m.",
    "mlm_head_m.",
    "vision_proj_m.",
    "text_proj_m.",
)
# Present in RaSa, absent from ALBEF/TCL pre-training checkpoints.
RASA_ONLY = ("prd_head.", "mrtd_head.", "idx_queue")
QUEUE_KEYS = ("image_queue", "text_queue", "idx_queue", "queue_ptr")


def albef_sizes(sd: dict[str, Tensor], source: str) -> dict[str, Any]:
    """Architecture sizes of an ALBEF-layout state dict (our key names)."""
    t = "text_encoder."
    patch = require(sd, "visual_encoder.patch_embed.proj.weight", source)
    word = require(sd, t + "embeddings.word_embeddings.weight", source)
    num_layers = count_layers(sd, t + "encoder.layer")
    return dict(
        patch_size=patch.shape[-1],
        vision_width=patch.shape[0],
        vision_depth=count_layers(sd, "visual_encoder.blocks"),
        vision_mlp_dim=require(sd, "visual_encoder.blocks.0.mlp.fc1.weight", source).shape[0],
        vocab_size=word.shape[0],
        text_width=word.shape[1],
        text_heads=max(1, word.shape[1] // 64),
        text_intermediate=require(
            sd, t + "encoder.layer.0.intermediate.dense.weight", source
        ).shape[0],
        num_layers=num_layers,
        fusion_layer=first_cross_layer(sd, t + "encoder.layer", num_layers),
        max_position_embeddings=require(
            sd, t + "embeddings.position_embeddings.weight", source
        ).shape[0],
        type_vocab_size=require(sd, t + "embeddings.token_type_embeddings.weight", source).shape[0],
        embed_dim=require(sd, "vision_proj.weight", source).shape[0],
    )


def load_albef_layout(
    path: str | Path,
    name: str,
    image_size: tuple[int, int] = (384, 384),
    ckpt_image_size: tuple[int, int] | None = None,
    strict: bool = True,
    **overrides: Any,
) -> RaSaModel:
    """A :class:`RaSaModel` from an ALBEF/TCL checkpoint; ``model.load_report`` lists new keys."""
    path = Path(path)
    raw, _ = read_checkpoint(path)
    state = official_to_ours(raw, str(path))
    sizes = albef_sizes(state, str(path))
    sizes.update(name=name, image_size=image_size, add_sep=False)
    sizes.update(overrides)
    cfg = ModelConfig(**sizes)
    notes: list[str] = []
    resample_pos_embeds(state, cfg, ckpt_image_size, notes)
    queue = state.get("image_queue")
    if queue is not None and queue.shape[1] != cfg.queue_size:
        notes.append(
            f"queues: checkpoint length {queue.shape[1]} != queue_size {cfg.queue_size}; "
            "re-initialised"
        )
        for k in QUEUE_KEYS:
            state.pop(k, None)
    has_momentum = any(k.startswith(MOMENTUM_PREFIXES) for k in state)
    new = RASA_ONLY + QUEUE_KEYS
    if not has_momentum:
        new += MOMENTUM_PREFIXES
        notes.append("no momentum weights in the checkpoint: momentum copy = online weights")
    model = RaSaModel(cfg)
    official_tokenizer(model, str(path), notes)
    report = load_into(model, state, str(path), new_prefixes=new, strict=strict, notes=notes)
    if not has_momentum:
        model.copy_params_to_momentum()
    model.load_report = report
    return model


def load_albef(path: str | Path, **kw: Any) -> RaSaModel:
    """ALBEF (Li et al., 2021) 14M/4M pre-trained checkpoint."""
    return load_albef_layout(path, name="albef", **kw)


def load_tcl(path: str | Path, **kw: Any) -> RaSaModel:
    """TCL (Yang et al., 2022) pre-trained checkpoint (ALBEF key layout)."""
    return load_albef_layout(path, name="tcl", **kw)
