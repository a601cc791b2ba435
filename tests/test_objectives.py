"""Every loss of rasa.objectives on tiny hand-checkable tensors and against naive references."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rasa.errors import ConfigError
from rasa.objectives import (
    IGNORE_INDEX,
    LossConfig,
    SpecialTokens,
    contrastive_loss,
    identity_targets,
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
    soft_cross_entropy,
    total_loss,
)

TOK = SpecialTokens(pad=0, cls=1, sep=2, mask=3)


# ---------------------------------------------------------------------------------------------
# CL
# ---------------------------------------------------------------------------------------------
def test_identity_targets_normalised_and_empty_queue_slots_never_match():
    pids = torch.tensor([0, 1])
    bank = torch.tensor([0, 1, 0, IGNORE_INDEX, 1, 1])
    t = identity_targets(pids, bank)
    assert torch.allclose(t[0], torch.tensor([0.5, 0, 0.5, 0, 0, 0]))
    assert torch.allclose(t[1], torch.tensor([0, 1 / 3, 0, 0, 1 / 3, 1 / 3]))
    # a batch id of -100 does not match the empty slots either
    t2 = identity_targets(torch.tensor([IGNORE_INDEX]), torch.tensor([IGNORE_INDEX, 5]))
    assert t2.sum() == 0


def test_contrastive_loss_hand_value():
    # orthonormal features, temp 1, no queue, alpha 0: every term is -log(e / (e + 1)).
    eye = torch.eye(2)
    empty_q = torch.zeros(2, 0)
    out = contrastive_loss(
        eye, eye, eye, eye, empty_q, empty_q, torch.tensor([0, 1]), torch.zeros(0), 1.0, 0.0
    )
    expected = math.log(1 + math.exp(-1))
    for term in (out.i2t, out.t2i, out.i2i, out.t2t, out.loss):
        assert term.item() == pytest.approx(expected, abs=1e-6)
    assert out.sim_i2t.shape == (2, 2)


def _naive_cl(img, txt, img_m, txt_m, iq, tq, pids, idxq, temp, alpha):
    """Loop-by-loop reference of the README's CL definition."""
    bank_i = [img_m[j] for j in range(len(img_m))] + [iq[:, j] for j in range(iq.shape[1])]
    bank_t = [txt_m[j] for j in range(len(txt_m))] + [tq[:, j] for j in range(tq.shape[1])]
    bank_p = list(pids.tolist()) + list(idxq.view(-1).tolist())

    def term(queries, queries_m, bank):
        total = 0.0
        for b in range(len(queries)):
            pos = [1.0 if (p == pids[b].item() and p != -100) else 0.0 for p in bank_p]
            s = sum(pos)
            pos = [x / s for x in pos]
            sims = [float(queries[b] @ v) / temp for v in bank]
            sims_m = [float(queries_m[b] @ v) / temp for v in bank]
            z = math.log(sum(math.exp(x) for x in sims))
            zm = sum(math.exp(x) for x in sims_m)
            tgt = [
                alpha * math.exp(x) / zm + (1 - alpha) * p for x, p in zip(sims_m, pos, strict=True)
            ]
            total += -sum(t * (x - z) for t, x in zip(tgt, sims, strict=True))
        return total / len(queries)

    return (
        term(img, img_m, bank_t)
        + term(txt, txt_m, bank_i)
        + term(img, img_m, bank_i)
        + term(txt, txt_m, bank_t)
    ) / 4


def test_contrastive_loss_matches_naive_reference_with_queue_and_distillation():
    g = torch.Generator().manual_seed(0)

    def feats(n):
        return F.normalize(torch.randn(n, 4, generator=g, dtype=torch.float64), dim=-1)

    img, txt, img_m, txt_m = feats(3), feats(3), feats(3), feats(3)
    iq, tq = feats(5).t(), feats(5).t()
    pids = torch.tensor([0, 1, 0])
    idxq = torch.tensor([[1, -100, 0, 2, -100]])
    out = contrastive_loss(img, txt, img_m, txt_m, iq, tq, pids, idxq, 0.3, 0.4)
    ref = _naive_cl(img, txt, img_m, txt_m, iq, tq, pids, idxq, 0.3, 0.4)
    assert out.loss.item() == pytest.approx(ref, rel=1e-10)


def test_contrastive_loss_gradients_reach_online_features_and_temperature_only():
    img = F.normalize(torch.randn(2, 3), dim=-1).requires_grad_()
    img_m = F.normalize(torch.randn(2, 3), dim=-1).requires_grad_()
    temp = torch.tensor(0.07, requires_grad=True)
    q = torch.zeros(3, 0)
    out = contrastive_loss(img, img, img_m, img_m, q, q, torch.tensor([0, 1]), q[0], temp, 0.4)
    out.loss.backward()
    assert img.grad is not None and temp.grad is not None
    assert img_m.grad is None


def test_soft_cross_entropy_equals_hard_ce_on_one_hot():
    logits = torch.tensor([[1.0, 2.0, 0.5], [0.0, 0.0, 3.0]])
    target = torch.tensor([1, 2])
    assert soft_cross_entropy(logits, F.one_hot(target, 3).float()).item() == pytest.approx(
        F.cross_entropy(logits, target).item()
    )


# ---------------------------------------------------------------------------------------------
# RA
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_hard_negatives_never_same_person(seed):
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(1, 9, (1,), generator=g))
    pids = torch.randint(0, 3, (b,), generator=g)
    sims = torch.randn(b, b, generator=g) * 20  # large scale: plain softmax would underflow
    neg = sample_hard_negatives(sims, sims.t(), pids, g)
    for idx, valid in ((neg.image_idx, neg.image_valid), (neg.text_idx, neg.text_valid)):
        has_other = (pids.view(-1, 1) != pids.view(1, -1)).any(dim=1)
        assert torch.equal(valid, has_other)
        assert (pids[idx][valid] != pids[valid]).all()
        assert torch.equal(idx[~valid], torch.arange(b)[~valid])


def test_hard_negatives_all_same_person_batch_has_no_negative():
    pids = torch.tensor([4, 4, 4])
    neg = sample_hard_negatives(torch.randn(3, 3), torch.randn(3, 3), pids)
    assert not neg.image_valid.any() and not neg.text_valid.any()
    assert torch.equal(neg.image_idx, torch.arange(3))


def test_hard_negatives_follow_softmax_over_other_identities():
    pids = torch.tensor([0, 0, 1, 2])
    sims = torch.tensor([[9.0, 9.0, 1.0, 0.0]]).repeat(4, 1)
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(4)
    for _ in range(400):
        neg = sample_hard_negatives(sims, sims, pids, g)
        counts += torch.bincount(neg.image_idx[:2], minlength=4)  # rows of person 0
    freq = counts / counts.sum()
    expected = math.e / (math.e + 1)  # softmax over columns 2, 3 only
    assert freq[:2].sum() == 0
    assert freq[2].item() == pytest.approx(expected, abs=0.04)


def test_itm_loss_hand_values_and_keep_mask():
    zeros = torch.zeros(2, 2)
    assert itm_loss(zeros, torch.zeros(4, 2)).item() == pytest.approx(math.log(2))
    pos = torch.tensor([[0.0, 1.0], [5.0, -5.0]])
    neg = torch.tensor([[1.0, 0.0]])
    lse = math.log(1 + math.exp(-1))  # CE of a margin-1 correct prediction
    keep = torch.tensor([True, False])
    assert itm_loss(pos, neg, keep).item() == pytest.approx(lse, abs=1e-6)
    full = (lse + (10 + math.log(1 + math.exp(-10))) + lse) / 3
    assert itm_loss(pos, neg).item() == pytest.approx(full, abs=1e-5)


def test_prd_loss_class_one_is_weak():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    good = prd_loss(logits, torch.tensor([0, 1]))
    bad = prd_loss(logits, torch.tensor([1, 0]))
    assert good.item() == pytest.approx(math.log(1 + math.exp(-2)), abs=1e-6)
    assert bad.item() == pytest.approx(2 + math.log(1 + math.exp(-2)), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# SA: masking, MLM, distillation
# ---------------------------------------------------------------------------------------------
def _batch(b=64, L=20, vocab=50):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (b, L), generator=g)
    lengths = torch.randint(3, L + 1, (b,), generator=g)
    pos = torch.arange(L).view(1, -1)
    mask = (pos < lengths.view(-1, 1)).long()
    ids[:, 0] = TOK.cls
    ids[torch.arange(b), lengths - 1] = TOK.sep
    ids[mask == 0] = TOK.pad
    return ids, mask


def test_mask_tokens_never_masks_specials_and_follows_bert_rule():
    ids, att = _batch(b=400, L=24)
    g = torch.Generator().manual_seed(3)
    out, labels, masked = mask_tokens(ids, att, 0.15, 50, TOK, g)
    special = (ids == TOK.pad) | (ids == TOK.cls) | (ids == TOK.sep) | (att == 0)
    assert not masked[special].any()
    assert torch.equal(out[~masked], ids[~masked])
    assert torch.equal(labels[masked], ids[masked])
    assert (labels[~masked] == IGNORE_INDEX).all()
    n = masked.sum().item()
    assert n / (~special).sum().item() == pytest.approx(0.15, abs=0.02)
    to_mask = (out[masked] == TOK.mask).float().mean().item()
    kept = (out[masked] == ids[masked]).float().mean().item()
    assert to_mask == pytest.approx(0.8, abs=0.04)
    # kept = 10 % kept + random draws that hit the original (1/50 of 10 %)
    assert kept == pytest.approx(0.1 + 0.1 / 50, abs=0.03)


def test_mask_tokens_is_deterministic_given_generator():
    ids, att = _batch()
    a = mask_tokens(ids, att, 0.3, 50, TOK, torch.Generator().manual_seed(5))
    b = mask_tokens(ids, att, 0.3, 50, TOK, torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_mlm_loss_and_distillation_hand_values():
    assert mlm_loss(torch.zeros(3, 4), torch.tensor([0, 1, 2])).item() == pytest.approx(math.log(4))
    # uniform teacher vs uniform student: -Σ 1/V log(1/V) = log V
    assert mlm_distill_loss(torch.zeros(2, 5), torch.zeros(2, 5)).item() == pytest.approx(
        math.log(5)
    )
    student = torch.tensor([[2.0, 0.0]])
    teacher = torch.tensor([[0.0, 0.0]])
    ref = -(0.5 * math.log(math.e**2 / (math.e**2 + 1)) + 0.5 * math.log(1 / (math.e**2 + 1)))
    assert mlm_distill_loss(student, teacher).item() == pytest.approx(ref, abs=1e-6)
    ce = torch.tensor(2.0)
    assert mlm_with_distill(ce, torch.tensor(1.0), 0.4).item() == pytest.approx(1.6)
    assert mlm_with_distill(ce, None, 0.4).item() == 2.0


def test_official_distillation_differs_from_correct_and_depends_on_padded_length():
    g = torch.Generator().manual_seed(0)
    full = torch.randn(2, 4, 6, generator=g)
    teacher = torch.randn(3, 6, generator=g)
    positions = torch.tensor([[0, 1], [1, 0], [1, 2]])
    student = full[positions[:, 0], positions[:, 1]]
    correct = mlm_distill_loss(student, teacher)
    official = mlm_distill_loss_official(full, teacher, positions)
    assert abs(correct.item() - official.item()) > 1e-3
    # naive: log_softmax over the sequence axis
    ref = 0.0
    for (b, pos), t in zip(positions.tolist(), teacher, strict=True):
        soft = torch.softmax(t, 0)
        col = full[b]  # [L, V]
        logp = col[pos] - torch.logsumexp(col, dim=0)
        ref += -(soft * logp).sum().item()
    assert official.item() == pytest.approx(ref / 3, rel=1e-6)
    # two more padding positions change the official value, not the correct one
    padded = torch.cat([full, torch.randn(2, 2, 6, generator=g)], dim=1)
    assert (
        abs(mlm_distill_loss_official(padded, teacher, positions).item() - official.item()) > 1e-4
    )
    assert mlm_distill_loss(padded[positions[:, 0], positions[:, 1]], teacher) == correct


# ---------------------------------------------------------------------------------------------
# SA: RTD
# ---------------------------------------------------------------------------------------------
def test_rtd_labels_hand_example():
    orig = torch.tensor([[1, 10, 11, 12, 2, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1, 0]])
    positions = torch.tensor([[0, 1], [0, 3]])
    rtd = replace_tokens(orig, positions, torch.tensor([10, 40]))  # first sample = original
    assert rtd.tolist() == [[1, 10, 11, 40, 2, 0]]
    labels = rtd_labels(rtd, orig, att, TOK)
    assert labels.tolist() == [[IGNORE_INDEX, 0, 0, 1, 0, IGNORE_INDEX]]


def test_rtd_positions_correct_vs_official():
    ids = torch.tensor([[1, 10, 11, 2, 0]])
    att = torch.tensor([[1, 1, 1, 1, 0]])
    masked = torch.tensor([[False, False, True, False, False]])
    assert rtd_positions(masked, ids, att, TOK, official=False).tolist() == [[0, 2]]
    assert rtd_positions(masked, ids, att, TOK, official=True).tolist() == [[0, 1], [0, 2], [0, 3]]


def test_sample_tokens_follows_distribution():
    logits = torch.tensor([[0.0, -1e9, math.log(3.0)]]).repeat(4000, 1)
    s = sample_tokens(logits, torch.Generator().manual_seed(0))
    assert (s != 1).all()
    assert (s == 2).float().mean().item() == pytest.approx(0.75, abs=0.03)


def test_rtd_loss_hand_value_ignores_pad_and_cls():
    logits = torch.zeros(1, 4, 2)
    logits[0, 0] = torch.tensor([100.0, -100.0])  # ignored position, would dominate
    labels = torch.tensor([[IGNORE_INDEX, 0, 1, IGNORE_INDEX]])
    assert rtd_loss(logits, labels).item() == pytest.approx(math.log(2))
    none = torch.full((1, 4), IGNORE_INDEX)
    assert rtd_loss(logits, none).item() == 0.0


# ---------------------------------------------------------------------------------------------
# total and config
# ---------------------------------------------------------------------------------------------
def test_total_loss_weights():
    cfg = LossConfig()
    losses = {
        "loss_itm": torch.tensor(1.0),
        "loss_prd": torch.tensor(2.0),
        "loss_mlm": torch.tensor(3.0),
        "loss_rtd": torch.tensor(4.0),
        "loss_cl": torch.tensor(5.0),
    }
    assert total_loss(losses, cfg).item() == pytest.approx(1 + 1 + 3 + 2 + 2.5)
    assert total_loss({"loss_cl": torch.tensor(2.0)}, cfg).item() == pytest.approx(1.0)


def test_loss_config_validation():
    with pytest.raises(ConfigError, match="p_weak"):
        LossConfig(p_weak=1.5)
    with pytest.raises(ConfigError, match="mask_rule"):
        LossConfig(mask_rule=(0.9, 0.2))
    assert SpecialTokens.from_meta({"pad_id": 0, "cls_id": 5, "sep_id": 6, "mask_id": 7}).cls == 5
    with pytest.raises(ConfigError, match="mask_id"):
        SpecialTokens.from_meta({"pad_id": 0, "cls_id": 5, "sep_id": 6})
