"""Image encoder: timm's VisionTransformer as the official RaSa/ALBEF ViT (paper §3.1).

Its state-dict names already equal the official ``visual_encoder.*`` keys. LayerNorm eps 1e-6,
exact (erf) GELU, pre-LN blocks, QKV bias, learned absolute position embeddings with the CLS
row first, non-square inputs via ``img_size=(H, W)``. :func:`interpolate_pos_embed` resamples
a checkpoint's position grid (bicubic, CLS row kept) when the resolution differs.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rasa.models.config import ModelConfig

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


def build_vit(cfg: ModelConfig) -> VisionTransformer:
    """A headless ViT whose ``forward_features`` returns [B, 1 + M, D] after the final norm.

    timm is imported here, when a ViT is built, not with this module: importing timm costs
    ~200 MB of resident memory and ~3 s (it imports torchvision), which code that only reads
    position tables or builds a CLIP tower does not need.
    """
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        num_classes=0,
        global_pool="token",
        embed_dim=cfg.vision_width,
        depth=cfg.vision_depth,
        num_heads=cfg.vision_heads,
        # int(width * ratio) must give the exact hidden width; the +0.5 guards rounding.
        mlp_ratio=(cfg.vision_mlp_dim + 0.5) / cfg.vision_width,
        qkv_bias=True,
        norm_layer=functools.partial(nn.LayerNorm, eps=cfg.vision_eps),
        act_layer=nn.GELU,
    )
    return vit


def interpolate_pos_embed(
    pos_embed: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> Tensor:
    """Resample [1, 1 + h*w, D] position embeddings from ``old_grid`` to ``new_grid``.

    The CLS row is kept; the patch rows (row-major) are resized as a 2-D map with bicubic
    interpolation (``align_corners=False``, no antialiasing: the official ALBEF recipe).
    """
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    dim = patches.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=new_grid, mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)
    return torch.cat([cls, patches.to(pos_embed.dtype)], dim=1)


def pos_grid(num_rows: int, image_size: tuple[int, int] | None, patch: int) -> tuple[int, int]:
    """Patch grid of a checkpoint's position table with ``num_rows`` = 1 + h*w rows.

    ``image_size`` (the checkpoint's training resolution, when known) decides; otherwise the
    grid must be square (ALBEF/TCL/DeiT checkpoints).
    """
    patches = num_rows - 1
    if image_size is not None:
        grid = (image_size[0] // patch, image_size[1] // patch)
        if grid[0] * grid[1] == patches:
            return grid
    side = round(patches**0.5)
    if side * side != patches:
        raise ValueError(
            f"cannot infer the patch grid of a {num_rows}-row position table "
            f"(image size {image_size}, patch {patch}): pass the checkpoint's image size"
        )
    return (side, side)
