"""RaSa's training objectives (paper §3.2, eqs. 1–11) as pure functions of tensors.

- CL (eqs. 7–10): :func:`contrastive_loss` — ITC + IMC against momentum queues, identity-aware
  targets (same person id = positive) with momentum distillation.
- RA (eqs. 1–3): :func:`sample_hard_negatives`, :func:`itm_loss` (ITM / s-ITM / p-ITM share it;
  they differ in the positives fed, see :mod:`rasa.variants`), :func:`prd_loss`.
- SA (eqs. 4–6): :func:`mask_tokens` (BERT 80/10/10), :func:`mlm_loss`,
  :func:`mlm_distill_loss` (and the official code's sequence-axis quirk,
  :func:`mlm_distill_loss_official`), :func:`sample_tokens`, :func:`replace_tokens`,
  :func:`rtd_labels`, :func:`rtd_loss`.
- Total (eq. 11): :func:`total_loss`, L = L_itm + λ1 L_prd + L_mlm + λ2 L_rtd + λ3 L_cl.

Nothing here touches a model: the model returns features and logits
(:mod:`rasa.engine.step` wires them), these functions turn them into losses. Randomness
(masks, negatives, generator samples) comes only from an explicit ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from rasa.errors import ConfigError

IGNORE_INDEX = -100  # label ignored by the losses; also marks an empty slot of ``idx_queue``


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecialTokens:
    """Ids of the special tokens (defaults: bert-base-uncased); never masked or replaced."""

    pad: int = 0
    cls: int = 101
    sep: int = 102
    mask: int = 103

    @classmethod
    def from_meta(cls, meta: dict) -> SpecialTokens:
        """From a token cache's ``meta`` (keys ``pad_id``, ``cls_id``, ``sep_id``, ``mask_id``)."""
        try:
            return cls(
                pad=int(meta["pad_id"]),
                cls=int(meta["cls_id"]),
                sep=int(meta["sep_id"]),
                mask=int(meta["mask_id"]),
            )
        except KeyError as exc:
            raise ConfigError(
                f"token cache meta lacks key {exc.args[0]!r}; expected 'pad_id', 'cls_id', "
                "'sep_id' and 'mask_id' (rebuild the cache with `rasa data tokenize`)."
            ) from None

    @property
    def never_masked(self) -> tuple[int, ...]:
        return (self.pad, self.cls, self.sep)


@dataclass(frozen=True)
class LossConfig:
    """Weights and rates of RaSa's losses (paper §4.1 values by default).

    ``alpha`` is the *final* distillation weight; the step receives the current (warmed-up)
    value as an argument. The official code's quirks (MLM distillation ``log_softmax`` over
    the sequence axis, RTD generator sampling at every position, unclamped temperature) are
    not switched here but by the model's ``ModelConfig.official_semantics``, which
    :func:`rasa.engine.step.compute_losses` reads: one switch, so model and losses agree.
    """

    lambda_prd: float = 0.5  # λ1
    lambda_rtd: float = 0.5  # λ2
    lambda_cl: float = 0.5  # λ3
    lambda_itm: float = 1.0
    lambda_mlm: float = 1.0
    p_weak: float = 0.1  # p^w: probability of feeding a weak positive (p-ITM)
    p_mask_mlm: float = 0.15
    p_mask_rtd: float = 0.3  # p^m
    mask_rule: tuple[float, float] = (0.8, 0.1)  # masked → [MASK], → random token; rest kept
    alpha: float = 0.4
    temp_range: tuple[float, float] = (0.001, 0.5)  # ALBEF's clamp of the learnable τ
    itm_negatives: str = "hard"  # ITM negatives: "hard" (∝ softmax of similarity) or "random"
    itm_random_epochs: int = 0  # a curriculum: random ITM negatives in the first N epochs
    tokens: SpecialTokens = field(default_factory=SpecialTokens)

    def __post_init__(self) -> None:
        for name in ("p_weak", "p_mask_mlm", "p_mask_rtd", "alpha"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"LossConfig.{name} = {value!r}; expected a value in [0, 1].")
        for name in ("lambda_prd", "lambda_rtd", "lambda_cl", "lambda_itm", "lambda_mlm"):
            value = getattr(self, name)
            if value < 0:
                raise ConfigError(f"LossConfig.{name} = {value!r}; expected a weight >= 0.")
        p_mask, p_random = self.mask_rule
        if p_mask < 0 or p_random < 0 or p_mask + p_random > 1:
            raise ConfigError(
                f"LossConfig.mask_rule = {self.mask_rule!r}; expected (p_mask_token, p_random) "
                "with both >= 0 and a sum <= 1 (BERT: (0.8, 0.1))."
            )
        if self.itm_random_epochs < 0:
            raise ConfigError(
                f"LossConfig.itm_random_epochs = {self.itm_random_epochs!r}; expected >= 0."
            )
        if self.itm_negatives not in ("hard", "random"):
            raise ConfigError(
                f"LossConfig.itm_negatives = {self.itm_negatives!r}; expected 'hard' or 'random'."
            )
        lo, hi = self.temp_range
        if not 0 < lo < hi:
            raise ConfigError(f"LossConfig.temp_range = {self.temp_range!r}; expected 0 < lo < hi.")


def loss_config_at_epoch(cfg: LossConfig, epoch: int) -> LossConfig:
    """The losses of epoch ``epoch`` (0-based): random ITM negatives while
    ``epoch < itm_random_epochs`` (pre-training's curriculum), else ``cfg`` itself."""
    if epoch < cfg.itm_random_epochs and cfg.itm_negatives != "random":
        return replace(cfg, itm_negatives="random")
    return cfg


def _rng_device(generator: torch.Generator | None, fallback: torch.device) -> torch.device:
    """Where random numbers are drawn: on the generator's device (a CPU generator may drive a
    GPU batch; the draws are then moved), else beside the data."""
    return generator.device if generator is not None else fallback


# ---------------------------------------------------------------------------------------------
# CL: ITC + IMC with queues (eqs. 7-10)
# ---------------------------------------------------------------------------------------------
def identity_targets(pids: Tensor, bank_pids: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Same-person indicator of each batch row against a bank of ids, normalised per row.

    ``pids`` [B], ``bank_pids`` [K] (batch ∪ queue; ``IGNORE_INDEX`` never matches) -> [B, K].
    A row without any positive stays all-zero.
    """
    pos = pids.view(-1, 1).eq(bank_pids.view(1, -1)) & bank_pids.view(1, -1).ne(IGNORE_INDEX)
    pos = pos.to(dtype)
    return pos / pos.sum(dim=1, keepdim=True).clamp_min(1.0)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """``mean_i -Σ_j targets_ij · log_softmax(logits_i)_j`` (rows = samples)."""
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


class ContrastiveOutput(NamedTuple):
    loss: Tensor  # (ITC + IMC) / 2 = mean of the four terms
    i2t: Tensor
    t2i: Tensor
    i2i: Tensor
    t2t: Tensor
    sim_i2t: Tensor  # [B, B+Q] online image features against the text bank, / τ
    sim_t2i: Tensor  # [B, B+Q]


def contrastive_loss(
    image_feat: Tensor,
    text_feat: Tensor,
    image_feat_m: Tensor,
    text_feat_m: Tensor,
    image_queue: Tensor,
    text_queue: Tensor,
    pids: Tensor,
    idx_queue: Tensor,
    temp: Tensor | float,
    alpha: float,
) -> ContrastiveOutput:
    """CL of RaSa: ITC (i2t, t2i) + IMC (i2i, t2t), each against [momentum batch, queue].

    Features are L2-normalised: online ``image_feat``/``text_feat`` [B, E] (with grad),
    momentum ``image_feat_m``/``text_feat_m`` [B, E]; queues [E, Q] (columns are features),
    ``idx_queue`` [Q] or [1, Q] person ids (-100 = empty). Targets per term:
    ``alpha · softmax(momentum sims) + (1 - alpha) · identity targets``; each term is the
    soft-target cross-entropy averaged over the batch; the loss is the mean of the four.
    """
    image_bank = torch.cat([image_feat_m.t(), image_queue], dim=1).detach()  # [E, B+Q]
    text_bank = torch.cat([text_feat_m.t(), text_queue], dim=1).detach()
    bank_pids = torch.cat([pids.view(-1), idx_queue.view(-1)])
    targets = identity_targets(
        pids, bank_pids, torch.promote_types(image_feat.dtype, torch.float32)
    )

    with torch.no_grad():
        t = temp.detach() if isinstance(temp, Tensor) else temp

        def distilled(sim_m: Tensor) -> Tensor:
            if alpha == 0:
                return targets
            return alpha * F.softmax(sim_m, dim=1) + (1 - alpha) * targets

        tgt_i2t = distilled(image_feat_m @ text_bank / t)
        tgt_t2i = distilled(text_feat_m @ image_bank / t)
        tgt_i2i = distilled(image_feat_m @ image_bank / t)
        tgt_t2t = distilled(text_feat_m @ text_bank / t)

    sim_i2t = image_feat @ text_bank / temp
    sim_t2i = text_feat @ image_bank / temp
    i2t = soft_cross_entropy(sim_i2t, tgt_i2t)
    t2i = soft_cross_entropy(sim_t2i, tgt_t2i)
    i2i = soft_cross_entropy(image_feat @ image_bank / temp, tgt_i2i)
    t2t = soft_cross_entropy(text_feat @ text_bank / temp, tgt_t2t)
    loss = (i2t + t2i + i2i + t2t) / 4
    return ContrastiveOutput(loss, i2t, t2i, i2i, t2t, sim_i2t, sim_t2i)


# ---------------------------------------------------------------------------------------------
# RA: hard negatives, ITM (eq. 1), PRD (eq. 2)
# ---------------------------------------------------------------------------------------------
class HardNegatives(NamedTuple):
    image_idx: Tensor  # [B] for text row t: batch index of its negative image
    image_valid: Tensor  # [B] bool: False when every image of the batch is of t's person
    text_idx: Tensor  # [B] for image row i: batch index of its negative text
    text_valid: Tensor  # [B] bool


def _sample_other_identity(sim: Tensor, same: Tensor, generator: torch.Generator | None):
    """Sample one column per row ∝ softmax(sim) restricted to ``~same``; rows with none -> invalid."""
    logits = sim.detach().float().masked_fill(same, float("-inf"))
    valid = (~same).any(dim=1)
    logits = torch.where(valid.view(-1, 1), logits, torch.zeros_like(logits))
    probs = F.softmax(logits, dim=1)  # renormalised over other identities: no underflow to 0
    dev = _rng_device(generator, probs.device)
    idx = torch.multinomial(probs.to(dev), 1, generator=generator).view(-1).to(sim.device)
    rows = torch.arange(sim.shape[0], device=sim.device)
    return torch.where(valid, idx, rows), valid


def sample_hard_negatives(
    sim_t2i: Tensor, sim_i2t: Tensor, pids: Tensor, generator: torch.Generator | None = None
) -> HardNegatives:
    """Hard negatives of the batch (ALBEF/RaSa): one image per text and one text per image.

    ``sim_t2i``/``sim_i2t`` [B, B] (batch part of the CL similarities). The negative is drawn
    with probability ∝ softmax(similarity) over the batch items of *another* person id — the
    same distribution as the official code, computed as a masked softmax so that it cannot
    underflow. When every item of the batch shares the row's person id (the official code
    crashes in ``multinomial``), the row has no negative: ``*_valid`` is False, the index
    points at the row itself and the ITM loss leaves that negative out.
    """
    same = pids.view(-1, 1).eq(pids.view(1, -1))
    image_idx, image_valid = _sample_other_identity(sim_t2i, same, generator)
    text_idx, text_valid = _sample_other_identity(sim_i2t, same, generator)
    return HardNegatives(image_idx, image_valid, text_idx, text_valid)


def itm_loss(pos_logits: Tensor, neg_logits: Tensor, pos_keep: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of matched (class 1) vs unmatched (class 0) pairs, eq. (1).

    ``pos_logits`` [B, 2] of the positive pairs, ``neg_logits`` [N, 2] of the negative pairs,
    ``pos_keep`` [B] bool selects which positives count (s-ITM drops weak ones). The mean runs
    over all counted pairs, as the official ``cross_entropy`` over [positives, negatives].
    """
    if pos_keep is not None:
        pos_logits = pos_logits[pos_keep]
    logits = torch.cat([pos_logits, neg_logits], dim=0)
    if logits.shape[0] == 0:
        return pos_logits.sum() * 0.0
    return F.cross_entropy(logits, itm_labels(pos_logits.shape[0], neg_logits.shape[0], logits))


def itm_labels(n_pos: int, n_neg: int, like: Tensor) -> Tensor:
    """ITM targets of ``n_pos`` positive then ``n_neg`` negative pairs (on ``like``'s device)."""
    return torch.cat(
        [
            torch.ones(n_pos, dtype=torch.long, device=like.device),
            torch.zeros(n_neg, dtype=torch.long, device=like.device),
        ]
    )


def prd_loss(prd_logits: Tensor, replace: Tensor) -> Tensor:
    """Positive Relation Detection, eq. (2): class 1 = weak positive (``replace`` = 1)."""
    return F.cross_entropy(prd_logits, replace.long())


# ---------------------------------------------------------------------------------------------
# SA: masking, MLM (eq. 4) with distillation, RTD (eq. 5)
# ---------------------------------------------------------------------------------------------
def choose_mask(
    ids: Tensor,
    attention_mask: Tensor,
    prob: float,
    tokens: SpecialTokens,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Bernoulli(``prob``) positions [B, L] bool; never padding, [PAD], [CLS] or [SEP]."""
    dev = _rng_device(generator, ids.device)
    draw = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device) < prob
    special = torch.zeros_like(draw)
    for tok in tokens.never_masked:
        special |= ids.eq(tok)
    return draw & attention_mask.bool() & ~special


def mask_tokens(
    ids: Tensor,
    attention_mask: Tensor,
    prob: float,
    vocab_size: int,
    tokens: SpecialTokens,
    generator: torch.Generator | None = None,
    rule: tuple[float, float] = (0.8, 0.1),
) -> tuple[Tensor, Tensor, Tensor]:
    """BERT masking: choose positions with ``prob``; there 80 % [MASK], 10 % random, 10 % kept.

    Returns ``(masked_ids, labels, masked)``: ``labels`` hold the original id at chosen
    positions and -100 elsewhere; ``masked`` [B, L] bool. ``rule`` = (p_mask, p_random).
    """
    masked = choose_mask(ids, attention_mask, prob, tokens, generator)
    dev = _rng_device(generator, ids.device)
    u = torch.rand(ids.shape, generator=generator, device=dev).to(ids.device)
    random_words = torch.randint(
        vocab_size, ids.shape, generator=generator, device=dev, dtype=ids.dtype
    ).to(ids.device)
    p_mask, p_random = rule
    out = ids.clone()
    out = torch.where(masked & (u < p_mask), torch.full_like(ids, tokens.mask), out)
    to_random = masked & (u >= p_mask) & (u < p_mask + p_random)
    out = torch.where(to_random, random_words, out)
    labels = torch.where(masked, ids, torch.full_like(ids, IGNORE_INDEX))
    return out, labels, masked


def mlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Hard cross-entropy at the masked positions: ``logits`` [P, V], ``labels`` [P]."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels)


def mlm_distill_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Momentum distillation of MLM: ``mean_p -Σ_v softmax(teacher)_v · log_softmax(student)_v``.

    Both [P, V] at the masked positions; softmax and log_softmax over the vocabulary.
    """
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    soft = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(soft * F.log_softmax(student_logits.float(), dim=-1)).sum(dim=-1).mean()


def mlm_distill_loss_official(
    student_logits_full: Tensor, teacher_logits: Tensor, positions: Tensor
) -> Tensor:
    """The official code's distillation term (quirk): ``log_softmax`` over the SEQUENCE axis.

    ``student_logits_full`` [B, L, V] at every position (padding included: L is the padded
    width, so the value depends on it), ``teacher_logits`` [P, V] and ``positions`` [P, 2]
    (row, column) of the masked tokens. Only for comparisons with the official code.
    """
    log_p = F.log_softmax(student_logits_full.float(), dim=1)  # over L, not V
    picked = log_p[positions[:, 0], positions[:, 1]]  # [P, V]
    soft = F.softmax(teacher_logits.detach().float(), dim=-1)
    return -(soft * picked).sum(dim=-1).mean()


def mlm_with_distill(hard: Tensor, distill: Tensor | None, alpha: float) -> Tensor:
    """``(1 - α) · CE + α · distill`` (plain CE when ``distill`` is None or α = 0)."""
    if distill is None or alpha == 0:
        return hard
    return (1 - alpha) * hard + alpha * distill


def sample_tokens(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token per row sampled from ``softmax(logits)`` [P, V] -> [P] (the RTD generator)."""
    if logits.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    # inverse-CDF sampling: one uniform per row (torch.multinomial draws V exponentials per
    # row, ~10x slower at a 30k vocabulary); zero-probability tokens are never drawn
    cdf = F.softmax(logits.detach().float(), dim=-1).cumsum(dim=-1)
    dev = _rng_device(generator, logits.device)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=dev).to(cdf.device)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return idx.view(-1).clamp_max(cdf.shape[1] - 1)


def replace_tokens(ids: Tensor, positions: Tensor, sampled: Tensor) -> Tensor:
    """Copy of ``ids`` [B, L] with ``sampled`` [P] written at ``positions`` [P, 2]."""
    out = ids.clone()
    out[positions[:, 0], positions[:, 1]] = sampled.to(ids.dtype)
    return out


def rtd_positions(
    masked: Tensor, ids: Tensor, attention_mask: Tensor, tokens: SpecialTokens, official: bool
) -> Tensor:
    """[P, 2] positions where the generator samples: the masked ones, or (``official``) every
    real token except [CLS] as the official code does."""
    where = (attention_mask.bool() & ids.ne(tokens.cls)) if official else masked
    return where.nonzero()


def rtd_labels(
    rtd_ids: Tensor, orig_ids: Tensor, attention_mask: Tensor, tokens: SpecialTokens
) -> Tensor:
    """Replaced-token labels [B, L]: 1 where the token differs from the original, 0 where equal
    (a sampled token equal to the original is not a replacement), -100 at padding and [CLS]
    (the classifier works on f_1 … f_N, paper eq. 5)."""
    labels = rtd_ids.ne(orig_ids).long()
    ignore = ~attention_mask.bool() | orig_ids.eq(tokens.cls)
    return labels.masked_fill(ignore, IGNORE_INDEX)


def rtd_loss(rtd_logits: Tensor, labels: Tensor) -> Tensor:
    """Token-level cross-entropy of the replaced-token detector, eq. (5): [B, L, 2], [B, L]."""
    flat = labels.view(-1)
    if not bool(flat.ne(IGNORE_INDEX).any()):
        return rtd_logits.sum() * 0.0
    return F.cross_entropy(rtd_logits.reshape(-1, 2).float(), flat, ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------
# diagnostics of the binary heads (ITM, PRD, RTD): logged beside the losses, never optimised
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def head_accuracy(name: str, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """``acc_<name>``: the share of counted targets (``labels`` != -100) that the two-class
    head's argmax gets right; ``base_<name>``: the share of the commoner class among them, what
    one constant answer scores (a head at its prior has acc = base). NaN when none count."""
    flat = labels.reshape(-1)
    keep = flat.ne(IGNORE_INDEX)
    pred = logits.detach().reshape(flat.numel(), -1).argmax(dim=-1)
    n = keep.sum().float()
    ones = (flat.eq(1) & keep).sum().float()
    return {
        f"acc_{name}": (pred.eq(flat) & keep).sum().float() / n,
        f"base_{name}": torch.maximum(ones, n - ones) / n,
    }


# ---------------------------------------------------------------------------------------------
# total (eq. 11)
# ---------------------------------------------------------------------------------------------
def total_loss(losses: dict[str, Tensor], cfg: LossConfig) -> Tensor:
    """L = λ_itm L_itm + λ1 L_prd + λ_mlm L_mlm + λ2 L_rtd + λ3 L_cl over the terms present."""
    weights = {
        "loss_itm": cfg.lambda_itm,
        "loss_prd": cfg.lambda_prd,
        "loss_mlm": cfg.lambda_mlm,
        "loss_rtd": cfg.lambda_rtd,
        "loss_cl": cfg.lambda_cl,
    }
    terms = [weights[k] * v for k, v in losses.items() if k in weights]
    if not terms:
        raise ValueError("total_loss: no loss term among " + ", ".join(sorted(losses)))
    return torch.stack(terms).sum()
