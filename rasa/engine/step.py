"""One RaSa training forward: the model's features and logits wired into the losses of a variant.

Paper §3.2 (eq. 11: L = L_itm + λ1 L_prd + L_mlm + λ2 L_rtd + λ3 L_cl), in the official order:

1. online ViT on ``image1``, online text encoder on ``text2`` → CL features;
2. momentum update (EMA, in place) **before** the momentum features of ``image2`` / ``text2``;
3. CL (ITC + IMC) against [momentum batch, queues];
4. RA: the positive (``text2``, ``image1``) and hard negatives (by the CL similarities, never the
   same person) through the fusion encoder in ONE call → ITM (positives of the variant) and PRD;
5. SA: MLM on ``text1`` (the strong caption; 15 % BERT 80/10/10 masking) distilled from the
   momentum model fed ``image2``'s momentum tokens, as the official code; RTD on ``text1``
   masked at p_m by the same masking function, the generator (fixed / online / momentum MLM)
   sampling a token at each masked position (official: at every position), label = "differs
   from the original"; the online MLM and RTD stacks run in one batched call;
6. enqueue the momentum features and person ids.

Beside the losses it returns the training accuracy of the ITM, PRD and RTD heads and what a
constant answer scores (``acc_<head>``, ``base_<head>``; :func:`rasa.objectives.head_accuracy`),
computed from the logits the losses use, without gradients: whether each head learns beyond its
prior is then read from the training curves.

Where the official code wastes work this step does not: image cross-attention keys/values are
computed once per image and gathered for every pair; vocabulary logits exist only at the
positions that need them; per-token work runs on real tokens only, never on padding (not
under the official semantics, whose MLM term reads padded positions); the last fusion layer of
the ITM/PRD pass runs for the [CLS] query only (the heads read nothing else); the momentum text stack runs once for both the MLM soft labels and
the m-RTD generator (the official runs it twice); a variant computes only what it uses (``cl``
never runs the fusion encoder, no MLM forward without MLM, no generator without RTD).
The model's ``config.official_semantics`` (the one switch; :class:`rasa.models.ModelConfig`)
selects the official quirks (see :mod:`rasa.objectives`).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from rasa.errors import ConfigError
from rasa.models.rasa_model import gather_image_kv
from rasa.objectives import (
    LossConfig,
    contrastive_loss,
    head_accuracy,
    itm_labels,
    itm_loss,
    mask_tokens,
    mlm_distill_loss,
    mlm_distill_loss_official,
    mlm_loss,
    mlm_with_distill,
    prd_loss,
    replace_tokens,
    rtd_labels,
    rtd_loss,
    rtd_positions,
    sample_hard_negatives,
    sample_tokens,
    total_loss,
)
from rasa.variants import Variant

BATCH_KEYS = (
    "image1",
    "image2",
    "text1_ids",
    "text1_mask",
    "text2_ids",
    "text2_mask",
    "replace",
    "pid",
)


class TokenGenerator(Protocol):
    """A fixed RTD generator (f-RTD): vocabulary logits [P, V] at ``positions`` [P, 2]."""

    def logits_at(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor: ...


def _check_batch(batch: dict[str, Any], variant: Variant) -> None:
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ConfigError(
            f"training batch for variant {variant.name!r} lacks key(s) {missing}; a batch is the "
            f"collated output of rasa.data.dataset.TrainDataset with keys {list(BATCH_KEYS)}."
        )


def compute_losses(
    model: Any,
    batch: dict[str, Tensor],
    variant: Variant,
    cfg: LossConfig,
    alpha: float,
    generator: TokenGenerator | None = None,
    rng: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The named losses of ``variant`` on one batch and their weighted total ``loss``.

    ``alpha`` is the current (warmed-up) distillation weight; ``generator`` the fixed RTD
    generator (required by f-RTD); ``rng`` drives every random choice (masks, negatives,
    generator samples; the global RNG when None). Mutates the model's momentum weights and
    queues, as a training step does.
    """
    _check_batch(batch, variant)
    if variant.needs_generator and generator is None:
        raise ConfigError(
            f"variant {variant.name!r} (f-RTD) needs a fixed generator: train one with "
            "rasa.models.generator.train_generator or pass a local checkpoint."
        )
    image1, image2 = batch["image1"], batch["image2"]
    text2_ids, text2_mask = batch["text2_ids"], batch["text2_mask"]
    pids = batch["pid"].view(-1)
    bsz = image1.shape[0]
    losses: dict[str, Tensor] = {}

    # real tokens only (not under the official semantics: its MLM term reads padded positions)
    pack = not model.config.official_semantics

    # 1. online unimodal encoders
    image_tokens = model.encode_image(image1)
    text_tokens = model.encode_text(text2_ids, text2_mask, pack=pack)
    image_feat = model.image_embed(image_tokens)
    text_feat = model.text_embed(text_tokens)
    temp = model.temperature(cfg.temp_range)  # unclamped under official semantics

    # 2. momentum update, then momentum features
    needs_momentum_image = variant.cl or (variant.mlm and alpha > 0) or variant.rtd == "momentum"
    image_tokens_m = None
    with torch.no_grad():
        if needs_momentum_image:
            model.momentum_update()
            image_tokens_m = model.encode_image(image2, momentum=True)
        if variant.cl:
            image_feat_m = model.image_embed(image_tokens_m, momentum=True)
            text_feat_m = model.text_embed(
                model.encode_text(text2_ids, text2_mask, momentum=True, pack=pack), momentum=True
            )

    # 3. CL
    if variant.cl:
        cl = contrastive_loss(
            image_feat,
            text_feat,
            image_feat_m,
            text_feat_m,
            model.image_queue,
            model.text_queue,
            pids,
            model.idx_queue,
            temp,
            alpha,
        )
        losses["loss_cl"] = cl.loss if variant.imc else (cl.i2t + cl.t2i) / 2
        sim_i2t, sim_t2i = cl.sim_i2t[:, :bsz], cl.sim_t2i[:, :bsz]
    else:
        with torch.no_grad():
            sim_i2t = image_feat @ text_feat.t() / temp
            sim_t2i = sim_i2t.t()

    image_kv = model.precompute_image_kv(image_tokens) if variant.uses_fusion else None

    # 4. RA: ITM on positives + hard negatives, PRD on positives
    if variant.itm is not None or variant.prd:
        losses.update(
            _relation_aware(
                model, variant, image_kv, text_tokens, text2_mask, batch, sim_i2t, sim_t2i, rng,
                cfg.itm_negatives,
            )
        )  # fmt: skip

    # 5. SA: MLM and RTD
    if variant.mlm or variant.rtd is not None:
        losses.update(
            _sensitivity_aware(
                model, variant, cfg, alpha, batch, image_kv, image_tokens_m, generator, rng
            )
        )

    # 6. enqueue
    if variant.cl:
        model.enqueue(image_feat_m, text_feat_m, pids)

    losses["loss"] = total_loss(losses, cfg)
    return losses


def _relation_aware(
    model: Any,
    variant: Variant,
    image_kv: list[tuple[Tensor, Tensor]],
    text_tokens: Tensor,
    text_mask: Tensor,
    batch: dict[str, Tensor],
    sim_i2t: Tensor,
    sim_t2i: Tensor,
    rng: torch.Generator | None,
    negatives: str = "hard",
) -> dict[str, Tensor]:
    """Fusion of the positives and (ITM) the hard negatives in one call; ITM and PRD losses.

    ``negatives="random"`` draws each negative uniformly among the other identities of the
    batch instead of by similarity (an easier start for a fusion encoder trained from scratch).
    """
    bsz = text_tokens.shape[0]
    rows = torch.arange(bsz, device=text_tokens.device)
    text_index, image_index = [rows], [rows]
    n_neg_img = n_neg_txt = 0
    if variant.itm is not None:
        if negatives == "random":  # uniform over the other identities
            sim_t2i, sim_i2t = torch.zeros_like(sim_t2i), torch.zeros_like(sim_i2t)
        neg = sample_hard_negatives(sim_t2i.detach(), sim_i2t.detach(), batch["pid"].view(-1), rng)
        t_rows = rows[neg.image_valid]  # text t with a negative image
        i_rows = rows[neg.text_valid]  # image i with a negative text
        text_index += [t_rows, neg.text_idx[neg.text_valid]]
        image_index += [neg.image_idx[neg.image_valid], i_rows]
        n_neg_img, n_neg_txt = t_rows.numel(), i_rows.numel()
    t_idx, i_idx = torch.cat(text_index), torch.cat(image_index)
    official = model.config.official_semantics
    # The first fusion layer's self-attention sees the caption alone: computed once per
    # caption, not once per pair (its dropout masks are then shared by a caption's pairs; the
    # official code draws them per pair, which official_semantics keeps).
    prefix = text_tokens if official else model.fusion_prefix(text_tokens, text_mask, pack=True)
    fused = model.fuse(  # [P, 1, D]: the heads read the [CLS] output only
        prefix.index_select(0, t_idx),
        text_mask.index_select(0, t_idx),
        image_kv=gather_image_kv(image_kv, i_idx),
        pack=not official,
        cls_only=True,
        from_prefix=not official,
    )
    out: dict[str, Tensor] = {}
    replace = batch["replace"].view(-1)
    if variant.itm is not None:
        logits = model.itm_logits(fused)
        keep = replace.eq(0) if variant.itm == "s-itm" else None
        pos, neg = logits[:bsz], logits[bsz : bsz + n_neg_img + n_neg_txt]
        out["loss_itm"] = itm_loss(pos, neg, keep)
        pos = pos if keep is None else pos[keep]
        both = torch.cat([pos, neg])
        out.update(head_accuracy("itm", both, itm_labels(pos.shape[0], neg.shape[0], both)))
    if variant.prd:
        prd = model.prd_logits(fused[:bsz])
        out["loss_prd"] = prd_loss(prd, replace)
        out.update(head_accuracy("prd", prd, replace.long()))
    return out


def _sensitivity_aware(
    model: Any,
    variant: Variant,
    cfg: LossConfig,
    alpha: float,
    batch: dict[str, Tensor],
    image_kv: list[tuple[Tensor, Tensor]],
    image_tokens_m: Tensor | None,
    generator: TokenGenerator | None,
    rng: torch.Generator | None,
) -> dict[str, Tensor]:
    """MLM with momentum distillation and RTD; one momentum pass, one online pass."""
    ids, mask = batch["text1_ids"], batch["text1_mask"]
    bsz, length = ids.shape
    vocab = model.config.vocab_size
    tok, official = cfg.tokens, model.config.official_semantics
    out: dict[str, Tensor] = {}

    mlm_ids = mlm_pos = mlm_labels = None
    if variant.mlm:
        mlm_ids, labels, masked = mask_tokens(
            ids, mask, cfg.p_mask_mlm, vocab, tok, rng, cfg.mask_rule
        )
        mlm_pos = masked.nonzero()
        mlm_labels = labels[masked]
    rtd_pos = gen_ids = None
    if variant.rtd is not None:
        gen_ids, _, rtd_masked = mask_tokens(
            ids, mask, cfg.p_mask_rtd, vocab, tok, rng, cfg.mask_rule
        )
        rtd_pos = rtd_positions(rtd_masked, ids, mask, tok, official)

    # the momentum model: MLM soft labels and/or the m-RTD generator, in one batched pass
    teacher = gen_logits = None
    with torch.no_grad():
        m_inputs: list[tuple[Tensor, Tensor]] = []
        if variant.mlm and alpha > 0:
            m_inputs.append((mlm_ids, mlm_pos))
        if variant.rtd == "momentum":
            m_inputs.append((gen_ids, rtd_pos))
        if m_inputs:
            m_logits = _stack_logits(model, m_inputs, mask, image_tokens_m, momentum=True)
            if variant.mlm and alpha > 0:
                teacher = m_logits.pop(0)
            if variant.rtd == "momentum":
                gen_logits = m_logits.pop(0)
        if variant.rtd == "online":
            kv = [(k.detach(), v.detach()) for k, v in image_kv]
            (gen_logits,) = _stack_logits(model, [(gen_ids, rtd_pos)], mask, kv, momentum=False)
        elif variant.rtd == "fixed":
            gen_logits = generator.logits_at(gen_ids, mask, rtd_pos)

    rtd_ids = rtd_lab = None
    if variant.rtd is not None:
        rtd_ids = replace_tokens(ids, rtd_pos, sample_tokens(gen_logits, rng))
        rtd_lab = rtd_labels(rtd_ids, ids, mask, tok)

    # the online model: MLM and RTD inputs in one call of the whole text stack
    online_ids = [x for x in (mlm_ids, rtd_ids) if x is not None]
    n = len(online_ids)
    stacked = torch.cat(online_ids, dim=0)
    stacked_mask = mask.repeat(n, 1)
    kv = gather_image_kv(image_kv, torch.arange(bsz, device=ids.device).repeat(n))
    pack = not official  # the official MLM term reads the padded positions
    hidden = model.fuse(
        model.encode_text(stacked, stacked_mask, pack=pack), stacked_mask, image_kv=kv, pack=pack
    )

    if variant.mlm:
        h = hidden[:bsz]
        if official:
            full = model.mlm_logits(h, torch.ones_like(mask, dtype=torch.bool)).view(
                bsz, length, -1
            )
            student = full[mlm_pos[:, 0], mlm_pos[:, 1]]
        else:
            student = model.mlm_logits(h, mlm_pos)
        hard = mlm_loss(student, mlm_labels)
        distill = None
        if teacher is not None:
            distill = (
                mlm_distill_loss_official(full, teacher, mlm_pos)
                if official
                else mlm_distill_loss(student, teacher)
            )
        out["loss_mlm"] = mlm_with_distill(hard, distill, alpha)
    if variant.rtd is not None:
        rtd = model.rtd_logits(hidden[-bsz:])
        out["loss_rtd"] = rtd_loss(rtd, rtd_lab)
        out.update(head_accuracy("rtd", rtd, rtd_lab))
    return out


def _stack_logits(
    model: Any,
    inputs: list[tuple[Tensor, Tensor]],
    mask: Tensor,
    image: Tensor | list[tuple[Tensor, Tensor]],
    momentum: bool,
) -> list[Tensor]:
    """Whole text stack of the online/momentum model over several inputs of the same batch
    (ids [B, L] with positions [P_k, 2]) in one call; vocabulary logits only at the positions.

    ``image`` is the batch's image tokens [B, 1+M, Dv] or its precomputed cross-attention K/V.
    """
    bsz = mask.shape[0]
    n = len(inputs)
    ids = torch.cat([x for x, _ in inputs], dim=0)
    masks = mask.repeat(n, 1)
    index = torch.arange(bsz, device=mask.device).repeat(n)
    if isinstance(image, Tensor):
        kv = model.precompute_image_kv(image, momentum=momentum)
    else:
        kv = image
    pack = not model.config.official_semantics
    hidden = model.fuse(
        model.encode_text(ids, masks, momentum=momentum, pack=pack),
        masks,
        momentum=momentum,
        image_kv=gather_image_kv(kv, index),
        pack=pack,
    )
    positions = torch.cat(
        [pos + torch.tensor([k * bsz, 0], device=pos.device) for k, (_, pos) in enumerate(inputs)]
    )
    logits = model.mlm_logits(hidden, positions, momentum=momentum)
    return list(logits.split([pos.shape[0] for _, pos in inputs]))
