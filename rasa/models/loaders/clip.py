"""OpenAI CLIP state dicts -> RaSa_CLIP (paper Table 8: CLIP ViT-B/16 + 1-layer cross encoder).

Reads a plain state dict in OpenAI's key layout (``visual.conv1``, ``visual.class_embedding``,
``visual.positional_embedding``, ``visual.ln_pre``, ``visual.transformer.resblocks.N.*``,
``visual.ln_post``, ``visual.proj``, ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.*``, ``ln_final``, ``text_projection``, ``logit_scale``) from a
``.pt``/``.pth``/``.bin`` (``torch.load(weights_only=True)``) or ``.safetensors`` file; open_clip's
``openai`` weights use the same names. TorchScript archives are not read: save
``torch.jit.load(path).state_dict()`` first. Sizes come from the tensors (heads = width / 64).
``visual.proj``/``text_projection`` become ``vision_proj``/``text_proj`` (bias 0), the
temperature is ``exp(-logit_scale)``; the cross encoder, MLM transform and RaSa heads are new.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rasa.errors import DataError
from rasa.models.config import ModelConfig
from rasa.models.loaders.common import (
    count_layers,
    foreign_new_prefixes,
    load_into,
    read_checkpoint,
    require,
)
from rasa.models.rasa_model import RaSaModel
from rasa.models.vit import interpolate_pos_embed, pos_grid

META_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_clip_state(path: str | Path) -> dict[str, Tensor]:
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if not path.is_file():
            raise DataError(f"CLIP weights {path} do not exist.")
        return load_file(str(path), device="cpu")
    try:
        sd, _ = read_checkpoint(path)
    except DataError as err:
        raise DataError(
            f"{err} (OpenAI's released .pt files are TorchScript archives: save "
            "torch.jit.load(path, map_location='cpu').state_dict() with torch.save first.)"
        ) from err
    return {k.removeprefix("module."): v for k, v in sd.items()}


def clip_sizes(sd: dict[str, Tensor], source: str, fusion_layers: int) -> dict[str, Any]:
    conv = require(sd, "visual.conv1.weight", source)
    word = require(sd, "token_embedding.weight", source)
    text_layers = count_layers(sd, "transformer.resblocks")
    return dict(
        arch="clip",
        patch_size=conv.shape[-1],
        vision_width=conv.shape[0],
        vision_depth=count_layers(sd, "visual.transformer.resblocks"),
        vision_mlp_dim=require(sd, "visual.transformer.resblocks.0.mlp.c_fc.weight", source).shape[
            0
        ],
        vision_eps=1e-5,
        vocab_size=word.shape[0],
        text_width=word.shape[1],
        text_heads=max(1, word.shape[1] // 64),
        text_intermediate=require(sd, "transformer.resblocks.0.mlp.c_fc.weight", source).shape[0],
        num_layers=text_layers + fusion_layers,
        fusion_layer=text_layers,
        max_position_embeddings=require(sd, "positional_embedding", source).shape[0],
        layer_norm_eps=1e-5,
        embed_dim=require(sd, "text_projection", source).shape[1],
        pad_token_id=0,
        tokenizer="clip",
    )


def clip_to_ours(sd: dict[str, Tensor], cfg: ModelConfig, notes: list[str]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if key in META_KEYS:
            notes.append(f"dropped metadata key {key!r}")
        elif key == "visual.proj":
            out["vision_proj.weight"] = value.T.contiguous()
            out["vision_proj.bias"] = torch.zeros(value.shape[1], dtype=value.dtype)
        elif key == "text_projection":
            out["text_proj.weight"] = value.T.contiguous()
            out["text_proj.bias"] = torch.zeros(value.shape[1], dtype=value.dtype)
        elif key == "logit_scale":
            out["temp"] = torch.exp(-value.float()).reshape(())
        elif key.startswith("visual."):
            out["visual_encoder." + key.removeprefix("visual.")] = value
        else:
            out["text_encoder." + key] = value
    pe_key = "visual_encoder.positional_embedding"
    if pe_key in out:
        old = pos_grid(out[pe_key].shape[0], None, cfg.patch_size)
        if old != cfg.grid:
            out[pe_key] = interpolate_pos_embed(out[pe_key][None], old, cfg.grid)[0]
            notes.append(f"{pe_key}: position grid interpolated {old} -> {cfg.grid}")
    if "text_encoder.token_embedding.weight" in out:
        out["mlm_head.decoder.weight"] = out["text_encoder.token_embedding.weight"]
    notes.append("vision_proj/text_proj: CLIP projections have no bias (set to 0)")
    return out


# Besides heads, queues and the momentum copy (foreign_new_prefixes): the cross encoder, and
# the temperature when the state dict has no logit_scale.
CLIP_NEW = ("text_encoder.fusion.", "temp")


def load_clip(
    path: str | Path,
    image_size: tuple[int, int] = (384, 128),
    fusion_layers: int = 1,
    strict: bool = True,
    **overrides: Any,
) -> RaSaModel:
    """RaSa_CLIP from CLIP weights; the momentum copy starts equal to the online weights."""
    sd = read_clip_state(path)
    sizes = clip_sizes(sd, str(path), fusion_layers)
    sizes.update(name="clip", image_size=image_size)
    sizes.update(overrides)
    cfg = ModelConfig(**sizes)
    notes: list[str] = []
    state = clip_to_ours(sd, cfg, notes)
    model = RaSaModel(cfg)
    new = foreign_new_prefixes(state, CLIP_NEW)
    report = load_into(model, state, str(path), new_prefixes=new, strict=strict, notes=notes)
    model.copy_params_to_momentum()
    model.load_report = report
    return model
