"""CMMT losses guided by Text-IoU (ICCV 2021, §3.2 and §3.3), pure functions of tensors.

Text-IoU guided cross-modal projection matching (CMPM): with ``v̄_j`` the L2-normalised image
features, ``p_ij = softmax_j(<t_i, v̄_j> / τ)`` and ``q_ij = IoU_ij / Σ_k IoU_ik``,

    L_M = (1/B) Σ_i KL(p_i ‖ q_i) = (1/B) Σ_i Σ_j p_ij log(p_ij / (q_ij + ε)).

Sign convention: the notes write ``L_M = -(1/B) Σ_i Σ_j p_ij log(p_ij / (q_ij + ε))``; the
quantity minimised here is the KL divergence itself (no leading minus), which is ≥ 0 up to the
ε smoothing and 0 exactly when p = q, i.e. when the similarity distribution over the batch's
images follows the captions' noun-phrase overlap. ``τ``: our features are L2-normalised (the
original CMPM keeps ``t_i`` unnormalised, its norm acting as a scale), so a temperature
(``scale = 1/τ``) sets the sharpness; ``scale = 1`` is the formula as written.

Text-IoU guided hard-sample mining: for each anchor, the ``topk`` most similar candidates
(cross-modal: text i vs images j, intra-modal: image i vs images j / text i vs texts j,
self excluded) are "similar pairs"; those whose captions have ``IoU >= pos_iou`` form the
positive set P, those with ``IoU <= neg_iou`` the hard negative set Q. Loss: a triplet with
the hardest positive (least similar of P, plus the paired sample in the cross-modal case) and
the hardest negative (most similar of Q), ``relu(margin + s_neg - s_pos)``, averaged over the
anchors that have both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cmpm_textiou_loss(
    text_feat: Tensor,
    image_feat: Tensor,
    iou: Tensor,
    scale: float | Tensor = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """``(1/B) Σ_i KL(p_i ‖ q_i)`` with p from ``<t_i, v̄_j>·scale`` and q the row-normalised IoU.

    ``text_feat`` [B, E], ``image_feat`` [B, E] (normalised here), ``iou`` [B, B] >= 0 with a
    positive diagonal (IoU of a caption with itself). Rows of ``iou`` summing to 0 get q = 0.
    """
    logits = text_feat @ F.normalize(image_feat, dim=1).T * scale
    log_p = F.log_softmax(logits, dim=1)
    q = iou / iou.sum(dim=1, keepdim=True).clamp_min(eps)
    return (log_p.exp() * (log_p - torch.log(q + eps))).sum(dim=1).mean()


def _row_triplet(
    sim: Tensor, candidates: Tensor, pos: Tensor, neg: Tensor, margin: float
) -> Tensor:
    """Triplet over anchors with a positive and a negative among their candidates."""
    big = torch.finfo(sim.dtype).max
    p_mask, n_mask = candidates & pos, candidates & neg
    s_pos = torch.where(p_mask, sim, torch.full_like(sim, big)).min(dim=1).values
    s_neg = torch.where(n_mask, sim, torch.full_like(sim, -big)).max(dim=1).values
    valid = p_mask.any(dim=1) & n_mask.any(dim=1)
    if not valid.any():
        return sim.sum() * 0.0
    return F.relu(margin + s_neg[valid] - s_pos[valid]).mean()


def _similar(sim: Tensor, topk: int, exclude_self: bool) -> Tensor:
    """Boolean [B, B]: the ``topk`` most similar columns of each row (self excluded if asked)."""
    s = sim.detach().clone()
    if exclude_self:
        s.fill_diagonal_(float("-inf"))
    k = max(0, min(topk, s.shape[1] - int(exclude_self)))
    out = torch.zeros_like(s, dtype=torch.bool)
    if k:
        out.scatter_(1, s.topk(k, dim=1).indices, True)
    return out


def textiou_mining_loss(
    sim: Tensor,
    iou: Tensor,
    topk: int = 4,
    pos_iou: float = 0.5,
    neg_iou: float = 0.2,
    margin: float = 0.2,
    cross_modal: bool = True,
) -> Tensor:
    """Hard-sample mining loss on a similarity matrix ``sim`` [B, B] (rows = anchors).

    Cross-modal (``sim[i, j] = <t_i, v_j>``): the paired sample j = i is always a positive and
    never a candidate negative. Intra-modal: the diagonal (self) is left out entirely.
    """
    b = sim.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=sim.device)
    candidates = _similar(sim, topk, exclude_self=True)
    pos = iou >= pos_iou
    neg = (iou <= neg_iou) & ~eye
    if cross_modal:
        candidates = candidates | eye
        pos = pos | eye
    else:
        pos = pos & ~eye
    return _row_triplet(sim, candidates, pos, neg, margin)
