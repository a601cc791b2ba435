"""CLIP towers for RaSa_CLIP (paper Table 8): CLIP ViT image encoder, CLIP text encoder, and a
BERT-layout cross encoder (``num_layers - fusion_layer`` layers, 1 in the paper's setting).

Parameter names follow OpenAI's CLIP state dict under our prefixes, so the loader is a rename:
image ``conv1`` (no bias), ``class_embedding``, ``positional_embedding``, ``ln_pre``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj}``, ``ln_post``; text ``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N``, ``ln_final``. Pre-LN residual blocks with QuickGELU; the text
tower is causal. CLIP's projections (``visual.proj``, ``text_projection``) become
``vision_proj``/``text_proj`` (bias 0).

Sentence feature convention: CLIP reads the text feature at the end-of-text token, RaSa at
position 0. Under the causal mask position 0 (start-of-text) sees only itself and carries no
caption information, so the text tower writes the end-of-text feature (the last unmasked
position) into position 0. ``text_embed`` and the cross encoder's "CLS" then both read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rasa.models.bert import BertLayer, FusionEncoderMixin
from rasa.models.config import ModelConfig


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class PackedAttention(nn.Module):
    """``nn.MultiheadAttention`` parameter layout (packed in-projection), run through SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: Tensor, causal: bool) -> Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.attn = PackedAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, mlp_dim))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(mlp_dim, width))

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, depth: int, heads: int, mlp_dim: int, eps: float) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_dim, eps) for _ in range(depth)
        )

    def forward(self, x: Tensor, causal: bool = False) -> Tensor:
        for block in self.resblocks:
            x = block(x, causal)
        return x


class CLIPVisionTower(nn.Module):
    """CLIP ViT; ``forward_features`` -> [B, 1 + M, D] after ``ln_post`` (CLS first)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w, p = cfg.vision_width, cfg.patch_size
        self.conv1 = nn.Conv2d(3, w, kernel_size=p, stride=p, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(
            scale * torch.randn(1 + cfg.grid[0] * cfg.grid[1], w)
        )
        self.ln_pre = nn.LayerNorm(w, eps=cfg.vision_eps)
        self.transformer = Transformer(
            w, cfg.vision_depth, cfg.vision_heads, cfg.vision_mlp_dim, cfg.vision_eps
        )
        self.ln_post = nn.LayerNorm(w, eps=cfg.vision_eps)

    def forward_features(self, images: Tensor) -> Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # [B, M, D], row-major grid
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)


class CLIPTextEncoder(FusionEncoderMixin, nn.Module):
    """CLIP text transformer (causal) + BERT-layout cross encoder layers (``fusion``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        w = cfg.text_width
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.max_position_embeddings, w))
        self.transformer = Transformer(
            w, cfg.fusion_layer, cfg.text_heads, cfg.text_intermediate, cfg.layer_norm_eps
        )
        self.ln_final = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.fusion = nn.ModuleList(
            BertLayer(cfg, cross=True) for _ in range(cfg.num_fusion_layers)
        )
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.token_embedding

    @property
    def fusion_layers(self) -> list[BertLayer]:
        return list(self.fusion)

    def forward_text(self, ids: Tensor, mask: Tensor | None, pack: bool = False) -> Tensor:
        """[B, L] -> [B, L, D]; position 0 holds the end-of-text (sentence) feature.

        ``pack`` is accepted for the interface's sake: the causal CLIP tower runs padded (its
        causal mask already keeps padding out of every real token)."""
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        x = self.ln_final(self.transformer(x, causal=True))
        if mask is None:
            last = torch.full((ids.shape[0],), ids.shape[1] - 1, device=ids.device)
        else:
            last = mask.long().sum(1) - 1
        pooled = x[torch.arange(x.shape[0], device=x.device), last]
        return torch.cat([pooled[:, None], x[:, 1:]], dim=1)
