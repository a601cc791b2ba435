"""The RaSa model (paper §3, Fig. 2): encoders, heads, momentum copy and queues.

The model only computes features and logits; every loss is a pure function elsewhere
(``rasa.objectives``). Submodule names mirror the official checkpoint so loaders are plain
key renames:

* ``visual_encoder`` (ViT), ``text_encoder`` (BERT: text layers, then fusion layers),
  ``mlm_head`` (BERT ``cls.predictions``, decoder tied to the word embeddings);
* ``vision_proj`` / ``text_proj`` (to the contrastive space, §3.4), ``itm_head`` (p-ITM, §3.2),
  ``prd_head`` (PRD, §3.2), ``mrtd_head`` (m-RTD, §3.3), learnable temperature ``temp``;
* momentum (EMA) copies ``visual_encoder_m``, ``text_encoder_m``, ``mlm_head_m``,
  ``vision_proj_m``, ``text_proj_m`` and the queues ``image_queue``/``text_queue`` (E x Q,
  L2-normalised columns), ``idx_queue`` (1 x Q person ids, -100 = never written), ``queue_ptr``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from rasa.models.bert import ImageKV, MLMHead, TextEncoder, init_bert_weights
from rasa.models.config import ModelConfig

TEMP_MIN, TEMP_MAX = 0.001, 0.5


class RaSaModel(nn.Module):
    """RaSa: ViT image encoder + BERT text/fusion encoder + heads + momentum copy + queues."""

    # (online, momentum) submodule names, in the official model_pairs order.
    MOMENTUM_PAIRS = (
        ("visual_encoder", "visual_encoder_m"),
        ("vision_proj", "vision_proj_m"),
        ("text_encoder", "text_encoder_m"),
        ("mlm_head", "mlm_head_m"),
        ("text_proj", "text_proj_m"),
    )
    # Key prefixes of the parts a starting checkpoint may lack, by what they are. Loaders take
    # their "new" (initialised fresh, trained at lr_new) lists from here, nowhere else.
    HEADS = {
        "itm": ("itm_head.",),
        "prd": ("prd_head.",),
        "rtd": ("mrtd_head.",),
        "mlm": ("mlm_head.transform.", "mlm_head.decoder.bias"),
    }
    RASA_HEADS = HEADS["prd"] + HEADS["rtd"]  # RaSa's own heads: absent from ALBEF/TCL
    MOMENTUM_PREFIXES = tuple(f"{m}." for _, m in MOMENTUM_PAIRS)
    QUEUE_KEYS = ("image_queue", "text_queue", "idx_queue", "queue_ptr")

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.visual_encoder = build_image_encoder(c)
        self.text_encoder = build_text_encoder(c)
        self.mlm_head = MLMHead(c, self.text_encoder.word_embeddings)
        if c.arch == "albef":
            init_bert_weights(self.text_encoder, c.init_std)
        else:
            for layer in self.text_encoder.fusion:
                init_bert_weights(layer, c.init_std)
        init_bert_weights(self.mlm_head.transform, c.init_std)
        self.vision_proj = nn.Linear(c.vision_width, c.embed_dim)
        self.text_proj = nn.Linear(c.text_width, c.embed_dim)
        self.itm_head = nn.Linear(c.text_width, 2)
        self.prd_head = nn.Linear(c.text_width, 2)
        self.mrtd_head = nn.Linear(c.text_width, 2)
        self.temp = nn.Parameter(torch.tensor(float(c.temp)))

        self.visual_encoder_m = build_image_encoder(c)
        self.text_encoder_m = build_text_encoder(c)
        self.mlm_head_m = MLMHead(c, self.text_encoder_m.word_embeddings)
        self.vision_proj_m = nn.Linear(c.vision_width, c.embed_dim)
        self.text_proj_m = nn.Linear(c.text_width, c.embed_dim)
        self.copy_params_to_momentum()

        q = c.queue_size
        self.register_buffer("image_queue", F.normalize(torch.randn(c.embed_dim, q), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(c.embed_dim, q), dim=0))
        self.register_buffer("idx_queue", torch.full((1, q), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    # ------------------------------------------------------------------ encoders
    def encode_image(self, images: Tensor, momentum: bool = False) -> Tensor:
        """[B, 3, H, W] -> [B, 1 + M, Dv] (after the final norm, CLS first)."""
        vit = self.visual_encoder_m if momentum else self.visual_encoder
        return vit.forward_features(images)

    def encode_text(
        self, ids: Tensor, mask: Tensor | None, momentum: bool = False, pack: bool = False
    ) -> Tensor:
        """[B, L] ids + padding mask -> [B, L, Dt] (text layers only; ``pack``: real tokens
        only, zeros at padding, :mod:`rasa.models.bert`)."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.forward_text(ids, mask, pack=pack)

    def image_embed(self, image_tokens: Tensor, momentum: bool = False) -> Tensor:
        """Normalised projection of the image CLS token: [B, 1 + M, Dv] -> [B, E]."""
        proj = self.vision_proj_m if momentum else self.vision_proj
        return F.normalize(proj(image_tokens[:, 0]), dim=-1)

    def text_embed(self, text_tokens: Tensor, momentum: bool = False) -> Tensor:
        """Normalised projection of the text CLS token: [B, L, Dt] -> [B, E]."""
        proj = self.text_proj_m if momentum else self.text_proj
        return F.normalize(proj(text_tokens[:, 0]), dim=-1)

    def fuse(
        self,
        text_tokens: Tensor,
        text_mask: Tensor | None,
        image_tokens: Tensor | None = None,
        momentum: bool = False,
        image_kv: ImageKV | None = None,
        *,
        pack: bool = False,
        cls_only: bool = False,
        from_prefix: bool = False,
    ) -> Tensor:
        """Cross-modal encoder: [B, L, Dt] text attending [B, 1 + M, Dv] image -> [B, L, Dt].

        ``image_kv`` (from :meth:`precompute_image_kv`, rows gathered per pair with
        :func:`gather_image_kv`) replaces ``image_tokens``; a batch of 1 broadcasts.
        ``cls_only``: the last layer for the [CLS] query only -> [B, 1, Dt], all that the ITM
        and PRD heads read; ``pack``: real tokens only (:mod:`rasa.models.bert`);
        ``from_prefix``: ``text_tokens`` is :meth:`fusion_prefix` of the text tokens.
        """
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.forward_fusion(
            text_tokens, text_mask, image_tokens, image_kv,
            pack=pack, cls_only=cls_only, from_prefix=from_prefix,
        )  # fmt: skip

    def fusion_prefix(
        self,
        text_tokens: Tensor,
        text_mask: Tensor | None,
        momentum: bool = False,
        pack: bool = False,
    ) -> Tensor:
        """The first fusion layer's self-attention output for text tokens [B, L, Dt]: it
        depends on the caption alone, so re-ranking computes it once per caption, not per
        (caption, image) pair; pass it to :meth:`fuse` with ``from_prefix=True``."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.fusion_prefix(text_tokens, text_mask, pack=pack)

    def precompute_image_kv(self, image_tokens: Tensor, momentum: bool = False) -> ImageKV:
        """Per fusion layer (K, V), each [N, heads, 1 + M, head_dim], for image tokens [N, 1 + M, Dv]."""
        enc = self.text_encoder_m if momentum else self.text_encoder
        return enc.precompute_kv(image_tokens)

    def text_image(
        self,
        ids: Tensor,
        mask: Tensor | None,
        image_tokens: Tensor,
        momentum: bool = False,
        pack: bool = False,
    ) -> Tensor:
        """Whole text stack (text layers, then fusion layers) on ``ids``: [B, L, Dt]."""
        text = self.encode_text(ids, mask, momentum, pack=pack)
        return self.fuse(text, mask, image_tokens, momentum, pack=pack)

    # ------------------------------------------------------------------ heads
    def itm_logits(self, fused: Tensor) -> Tensor:
        """p-ITM logits [B, 2] from the fused CLS (class 1 = match)."""
        return self.itm_head(fused[:, 0])

    def prd_logits(self, fused: Tensor) -> Tensor:
        """PRD logits [B, 2] from the fused CLS (class 1 = weak positive, ``replace`` = 1;
        class 0 = strong positive; :func:`rasa.objectives.prd_loss`)."""
        return self.prd_head(fused[:, 0])

    def rtd_logits(self, fused: Tensor) -> Tensor:
        """m-RTD logits [B, L, 2] at every position (class 1 = replaced, per the objective)."""
        return self.mrtd_head(fused)

    def mlm_logits(self, hidden: Tensor, positions: Tensor, momentum: bool = False) -> Tensor:
        """Vocabulary logits [P, V] only at ``positions`` ([P, 2] (row, col) or a [B, L] bool mask)."""
        if positions.dtype == torch.bool:
            rows = hidden[positions]
        else:
            rows = hidden[positions[:, 0], positions[:, 1]]
        head = self.mlm_head_m if momentum else self.mlm_head
        return head(rows)

    def temperature(self, clamp_range: tuple[float, float] = (TEMP_MIN, TEMP_MAX)) -> Tensor:
        """The contrastive temperature: clamped to ``clamp_range`` (ALBEF's [0.001, 0.5]),
        unclamped under ``config.official_semantics`` as in the official code."""
        if self.config.official_semantics:
            return self.temp
        return self.temp.clamp(*clamp_range)

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Unimodal embeddings (image [B, E], text [B, E]); losses live in ``rasa.objectives``."""
        image = self.image_embed(self.encode_image(images))
        text = self.text_embed(self.encode_text(ids, mask))
        return image, text

    # ------------------------------------------------------------------ momentum model
    def _momentum_params(self) -> tuple[list[Tensor], list[Tensor]]:
        online, ema, seen = [], [], set()
        for name, name_m in self.MOMENTUM_PAIRS:
            params = getattr(self, name).parameters()
            params_m = getattr(self, name_m).parameters()
            for p, pm in zip(params, params_m, strict=True):
                if id(p) in seen:  # tied decoder weight = word embeddings, already paired
                    continue
                seen.add(id(p))
                online.append(p)
                ema.append(pm)
        return online, ema

    @torch.no_grad()
    def copy_params_to_momentum(self) -> None:
        """Momentum weights <- online weights; momentum weights get no gradient."""
        online, ema = self._momentum_params()
        torch._foreach_copy_(ema, [p.detach() for p in online])
        for pm in ema:
            pm.requires_grad_(False)

    @torch.no_grad()
    def momentum_update(self, m: float | None = None) -> None:
        """In-place EMA: momentum <- m * momentum + (1 - m) * online (one foreach lerp)."""
        m = self.config.momentum if m is None else m
        online, ema = self._momentum_params()
        torch._foreach_lerp_(ema, [p.detach() for p in online], 1.0 - m)

    # ------------------------------------------------------------------ queues
    @torch.no_grad()
    def enqueue(self, image_feat_m: Tensor, text_feat_m: Tensor, idx: Tensor) -> None:
        """Write momentum features [B, E] and person ids [B] at ``queue_ptr``, wrapping at Q.

        With torch.distributed initialised the features and ids of all ranks are gathered
        (rank order) first, so every rank holds the same queue.
        """
        image_feat_m, text_feat_m = _gather(image_feat_m), _gather(text_feat_m)
        idx = _gather(idx.reshape(-1).to(self.idx_queue.dtype))
        q = self.image_queue.shape[1]
        n = image_feat_m.shape[0]
        ptr = int(self.queue_ptr[0])
        if n > q:  # only the last Q survive; they land where they would have anyway
            ptr = (ptr + n - q) % q
            image_feat_m, text_feat_m, idx = image_feat_m[-q:], text_feat_m[-q:], idx[-q:]
            n = q
        cols = (ptr + torch.arange(n, device=self.image_queue.device)) % q
        self.image_queue[:, cols] = image_feat_m.T.to(self.image_queue.dtype)
        self.text_queue[:, cols] = text_feat_m.T.to(self.text_queue.dtype)
        self.idx_queue[0, cols] = idx
        self.queue_ptr[0] = (ptr + n) % q

    def num_parameters(self, momentum: bool = True) -> int:
        """Parameter count (tied weights once); ``momentum=False`` leaves out the EMA copy."""
        params = {id(p): p for p in self.parameters()}
        if not momentum:
            _, ema = self._momentum_params()
            for pm in ema:
                params.pop(id(pm), None)
        return sum(p.numel() for p in params.values())


def variant_heads(variant: str) -> tuple[str, ...]:
    """Key prefixes of the heads a Table 4 variant trains (``RaSaModel.HEADS``)."""
    from rasa.variants import get_variant

    v = get_variant(variant)
    used = [("itm", v.itm is not None), ("prd", v.prd), ("mlm", v.mlm), ("rtd", v.rtd is not None)]
    return tuple(p for kind, on in used if on for p in RaSaModel.HEADS[kind])


def build_image_encoder(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "clip":
        from rasa.models.clip import CLIPVisionTower

        return CLIPVisionTower(cfg)
    from rasa.models.vit import build_vit  # imports timm

    return build_vit(cfg)


def build_text_encoder(cfg: ModelConfig) -> nn.Module:
    if cfg.arch == "clip":
        from rasa.models.clip import CLIPTextEncoder

        return CLIPTextEncoder(cfg)
    return TextEncoder(cfg)


def _gather(x: Tensor) -> Tensor:
    """Concatenate ``x`` of every rank (no gradient); identity on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def gather_image_kv(image_kv: ImageKV, index: Tensor) -> ImageKV:
    """Rows ``index`` [P] of every layer's (K, V): pairs a batch of captions with candidates."""
    return [(k.index_select(0, index), v.index_select(0, index)) for k, v in image_kv]


def official_two_stage_scores(
    sims: Tensor, itm_fn: Callable[[Tensor, Tensor], Tensor], k: int, fill: float = -100.0
) -> Tensor:
    """The official two-stage text->image score matrix [T, I] (paper §3.5).

    For each caption the top ``k`` images by unimodal similarity ``sims`` [T, I] are re-scored
    by ``itm_fn(text_index [P], image_index [P]) -> [P, 2]`` ITM logits; the score is the raw
    match logit (class 1), every other entry ``fill``. All P = T*k pairs go to ``itm_fn`` in
    one call (chunking is the caller's business).
    """
    t, i = sims.shape
    k = min(k, i)
    topk = sims.topk(k, dim=1).indices  # [T, k]
    text_index = torch.arange(t, device=sims.device).repeat_interleave(k)
    logits = itm_fn(text_index, topk.reshape(-1))
    scores = torch.full((t, i), fill, dtype=logits.dtype, device=sims.device)
    scores.scatter_(1, topk, logits[:, 1].reshape(t, k))
    return scores
