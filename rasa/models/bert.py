"""BERT-layout text encoder and cross-modal (fusion) encoder (paper §3.1, ALBEF's xbert).

One stack of ``num_layers`` post-LayerNorm BERT layers with HF parameter names
(``embeddings.*``, ``encoder.layer.N.{attention,crossattention,intermediate,output}``):

* layers ``< fusion_layer`` form the unimodal text encoder (self-attention only);
* layers ``>= fusion_layer`` form the cross-modal encoder: self-attention over the caption,
  then cross-attention whose queries are the text tokens and whose keys/values are projections
  of the image tokens (input width ``encoder_width`` = the ViT width).

Attention runs through ``torch.nn.functional.scaled_dot_product_attention``; padding is a
boolean key mask (the official additive -10000 gives identical float32 results). The image
keys/values of every fusion layer can be computed once per image (:meth:`TextEncoder.
precompute_kv`) and reused for every caption paired with it, which is what evaluation does.

Two ways to skip work nobody reads (both exact for the outputs that are returned):

* ``pack=True`` runs every per-token operation (projections, MLP, LayerNorm, dropout) on the
  real tokens only, as an [N, D] matrix, and pads just around the attention product
  (:class:`Packing`); padded positions of the output are zeros instead of values computed from
  padding. Off by default: the official code's outputs at padded positions (and its MLM
  distillation, which reads them) are reproduced only without it.
* ``cls_only=True`` (fusion encoder) runs the last layer for the [CLS] query alone: the ITM and
  PRD heads read nothing else. The output is then [B, 1, D].
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rasa.models.config import ModelConfig

# Per fusion layer: (keys, values), each [N_images, heads, M, head_dim].
ImageKV = list[tuple[Tensor, Tensor]]


def attention_mask(mask: Tensor | None) -> Tensor | None:
    """[B, L] padding mask (1/True = token) -> SDPA boolean mask [B, 1, 1, L], or None if full."""
    if mask is None:
        return None
    mask = mask.bool()
    if bool(mask.all()):
        return None
    return mask[:, None, None, :]


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Dropout (keep with probability 1 - p, scale by 1 / (1 - p)), as ``F.dropout``.

    On a CPU the mask is drawn as ``rand >= p``, about 3x cheaper than the ``bernoulli_`` of
    ``F.dropout`` (which took ~8 % of a training step); elsewhere ``F.dropout`` (a fused
    kernel on CUDA). Same distribution, another random stream.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))


class Dropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`dropout` (no parameters, same state dict)."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


def _attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, p: float) -> Tensor:
    """Scaled dot-product attention; with dropout on a CPU computed here (softmax, then
    :func:`dropout`), since SDPA then runs the same unfused math with the slower mask."""
    if p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return dropout(scores.softmax(dim=-1), p, True) @ v


class Packing(NamedTuple):
    """The real tokens of a padded [B, L] batch, to run per-token work on them alone."""

    index: Tensor  # [N] flat positions b * L + l of the real tokens, row-major
    batch: int
    length: int

    @classmethod
    def of(cls, mask: Tensor | None) -> Packing | None:
        """The packing of padding mask [B, L]; None when there is no padding."""
        if mask is None:
            return None
        mask = mask.bool()
        if bool(mask.all()):
            return None
        return cls(mask.reshape(-1).nonzero().squeeze(1), mask.shape[0], mask.shape[1])

    def pack(self, x: Tensor) -> Tensor:
        """[B, L, ...] -> [N, ...]."""
        return x.reshape(self.batch * self.length, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """[N, ...] -> [B, L, ...] with zeros at the padding."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])

    def first_rows(self) -> Tensor:
        """[B] positions in the packed rows of each sequence's first token ([CLS])."""
        lengths = torch.bincount(
            torch.div(self.index, self.length, rounding_mode="floor"), minlength=self.batch
        )
        return torch.cumsum(lengths, 0) - lengths


class BertEmbeddings(nn.Module):
    """Word + position + token-type-0 embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            cfg.vocab_size, cfg.text_width, padding_idx=cfg.pad_token_id
        )
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.text_width)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.text_width)
        self.LayerNorm = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout)

    def forward(self, ids: Tensor, packing: Packing | None = None) -> Tensor:
        """[B, L] -> [B, L, D] (packed: [N, D])."""
        length = ids.shape[1]
        x = self.word_embeddings(ids)
        x = x + self.position_embeddings.weight[:length]
        x = x + self.token_type_embeddings.weight[0]
        if packing is not None:
            x = packing.pack(x)
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head attention; ``kv_width`` != D for cross-attention to image tokens."""

    def __init__(self, cfg: ModelConfig, kv_width: int | None = None) -> None:
        super().__init__()
        width = cfg.text_width
        self.heads = cfg.text_heads
        self.head_dim = width // cfg.text_heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(kv_width or width, width)
        self.value = nn.Linear(kv_width or width, width)
        self.dropout_p = cfg.attention_dropout

    def _split(self, x: Tensor, packing: Packing | None = None) -> Tensor:
        """[B, L, D] (or packed [N, D]) -> [B, h, L, d]."""
        if packing is not None:
            x = packing.unpack(x)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, context: Tensor, packing: Packing | None = None) -> tuple[Tensor, Tensor]:
        """Keys and values of ``context`` [B, M, Dk] (or packed [N, Dk]) -> two [B, h, M, d]."""
        return self._split(self.key(context), packing), self._split(self.value(context), packing)

    def _self_qkv(self, hidden: Tensor, packing: Packing | None) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention Q, K, V [B, h, L, d] in ONE matrix multiply (and one unpacking)."""
        weight = torch.cat([self.query.weight, self.key.weight, self.value.weight])
        bias = torch.cat([self.query.bias, self.key.bias, self.value.bias])
        qkv = F.linear(hidden, weight, bias)
        if packing is not None:
            qkv = packing.unpack(qkv)
        b, n, _ = qkv.shape
        qkv = qkv.view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor | None = None,
        context: Tensor | None = None,
        kv: tuple[Tensor, Tensor] | None = None,
        packing: Packing | None = None,
        keys: Tensor | None = None,
    ) -> Tensor:
        """Queries from ``hidden``; keys/values from ``kv``, else ``context`` (image tokens),
        else ``keys`` (self-attention of a query subset), else ``hidden``. With ``packing``,
        ``hidden`` (and ``keys``) are packed [N, D] and so is the output."""
        if kv is None and context is None and keys is None:
            q, k, v = self._self_qkv(hidden, packing)
        else:
            q = self._split(self.query(hidden), packing if keys is None else None)
        if kv is not None:
            k, v = kv
            if k.shape[0] != q.shape[0]:
                k, v = k.expand(q.shape[0], -1, -1, -1), v.expand(q.shape[0], -1, -1, -1)
        elif context is not None:
            k, v = self.project_kv(context)
        elif keys is not None:
            k, v = self.project_kv(keys, packing)
        out = _attention(q, k, v, mask, self.dropout_p if self.training else 0.0)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return out if packing is None or keys is not None else packing.pack(out)


class BertSelfOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual); also BERT's ``output`` after the MLP."""

    def __init__(self, in_width: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, cfg.text_width)
        self.LayerNorm = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.dropout = Dropout(cfg.hidden_dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, kv_width: int | None = None) -> None:
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg.text_width, cfg)

    def forward(self, hidden: Tensor, mask: Tensor | None = None, **kw) -> Tensor:
        """Attention of the queries ``hidden`` (residual included); see BertSelfAttention."""
        return self.output(self.self(hidden, mask, **kw), hidden)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.text_width, cfg.text_intermediate)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Self-attention (+ cross-attention to image tokens in fusion layers) + MLP."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        self.attention = BertAttention(cfg)
        self.crossattention = BertAttention(cfg, kv_width=cfg.encoder_width) if cross else None
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg.text_intermediate, cfg)

    def forward(
        self,
        hidden: Tensor,
        mask: Tensor | None,
        image_tokens: Tensor | None = None,
        image_kv: tuple[Tensor, Tensor] | None = None,
        packing: Packing | None = None,
        cls_only: bool = False,
        self_attended: bool = False,
    ) -> Tensor:
        """[B, L, D] (packed: [N, D]) -> the same; ``cls_only``: [B, 1, D], the [CLS] query's
        output only (keys and values still come from every token); ``self_attended``:
        ``hidden`` is already this layer's self-attention output (:meth:`FusionEncoderMixin.
        fusion_prefix`)."""
        if cls_only:
            query = hidden[:, :1] if packing is None else hidden[packing.first_rows()][:, None]
        if self_attended:
            x = query if cls_only else hidden
        elif cls_only:
            x = self.attention(query, mask, keys=hidden, packing=packing)
        else:
            x = self.attention(hidden, mask, packing=packing)
        if self.crossattention is not None:
            packing = None if cls_only else packing
            x = self.crossattention(x, None, context=image_tokens, kv=image_kv, packing=packing)
        return self.output(self.intermediate(x), x)


class BertStack(nn.Module):
    """``encoder.layer`` container (keeps HF key names)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(cfg, cross=i >= cfg.fusion_layer) for i in range(cfg.num_layers)
        )


class FusionEncoderMixin:
    """Cross-modal part shared by text encoders: ``self.fusion_layers`` with cross-attention."""

    fusion_layers: list[BertLayer]

    def forward_fusion(
        self,
        hidden: Tensor,
        mask: Tensor | None,
        image_tokens: Tensor | None = None,
        image_kv: ImageKV | None = None,
        *,
        pack: bool = False,
        cls_only: bool = False,
        from_prefix: bool = False,
    ) -> Tensor:
        """Cross-modal encoder: text tokens [B, L, D] attend image tokens [B, M, Dv] ->
        [B, L, D] (``cls_only``: [B, 1, D]; ``pack``: see the module docstring).

        ``from_prefix``: ``hidden`` is :meth:`fusion_prefix` of the text tokens, not the text
        tokens themselves (the first layer's self-attention is skipped)."""
        if (image_tokens is None) == (image_kv is None):
            raise ValueError("forward_fusion needs exactly one of image_tokens and image_kv")
        layers = self.fusion_layers
        if image_kv is not None and len(image_kv) != len(layers):
            raise ValueError(f"image_kv has {len(image_kv)} layers, expected {len(layers)}")
        m = attention_mask(mask)
        packing = Packing.of(mask) if pack and m is not None else None
        if packing is not None:
            hidden = packing.pack(hidden)
        last = len(layers) - 1
        for i, layer in enumerate(layers):
            kv = None if image_kv is None else image_kv[i]
            only = cls_only and i == last
            done = from_prefix and i == 0
            hidden = layer(
                hidden, m, image_tokens, kv, packing=packing, cls_only=only, self_attended=done
            )
        if cls_only and not layers:
            hidden = hidden[:, :1]
        elif packing is not None and not cls_only:
            hidden = packing.unpack(hidden)
        return hidden

    def fusion_prefix(self, hidden: Tensor, mask: Tensor | None, pack: bool = False) -> Tensor:
        """The first fusion layer's self-attention output [B, L, D] for text tokens [B, L, D].

        It depends on the caption alone: a caption paired with several images (re-ranking,
        the ITM negatives) computes it once and passes it with ``forward_fusion(...,
        from_prefix=True)``.
        """
        layers = self.fusion_layers
        if not layers:
            return hidden
        m = attention_mask(mask)
        packing = Packing.of(mask) if pack and m is not None else None
        if packing is None:
            return layers[0].attention(hidden, m)
        return packing.unpack(layers[0].attention(packing.pack(hidden), m, packing=packing))

    def precompute_kv(self, image_tokens: Tensor) -> ImageKV:
        """Cross-attention (K, V) of every fusion layer for image tokens [N, M, Dv]."""
        return [layer.crossattention.self.project_kv(image_tokens) for layer in self.fusion_layers]


class TextEncoder(FusionEncoderMixin, nn.Module):
    """BERT embeddings + text layers + fusion layers (ALBEF's ``text_encoder.bert``)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fusion_layer = cfg.fusion_layer
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertStack(cfg)

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    @property
    def fusion_layers(self) -> list[BertLayer]:
        return list(self.encoder.layer[self.fusion_layer :])

    def forward_text(self, ids: Tensor, mask: Tensor | None, pack: bool = False) -> Tensor:
        """Unimodal text encoder: [B, L] ids -> [B, L, D] (``pack``: see the module doc)."""
        m = attention_mask(mask)
        packing = Packing.of(mask) if pack and m is not None else None
        x = self.embeddings(ids, packing)
        for layer in self.encoder.layer[: self.fusion_layer]:
            x = layer(x, m, packing=packing)
        return x if packing is None else packing.unpack(x)


class MLMHead(nn.Module):
    """BERT ``cls.predictions``: dense -> GELU -> LayerNorm -> decoder tied to word embeddings."""

    def __init__(self, cfg: ModelConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(cfg.text_width, cfg.text_width)
        self.transform.LayerNorm = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.text_width, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight  # tied, as in BERT
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden: Tensor) -> Tensor:  # [..., D] -> [..., V]
        t = self.transform
        return self.decoder(t.LayerNorm(F.gelu(t.dense(hidden))))


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation with a configurable std (normal weights, zero bias, unit LN)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
