"""Parity of the training losses with the official RaSa code (tests/fixtures/*/README.md).

Reproduces, from an official checkpoint and its fixed inputs, the official ``mlm_loss``,
``mlm_loss_distill_official`` (the sequence-axis quirk, under ``official_semantics``),
``train_loss_cl``, ``train_loss_prd`` and the queue state after one training step, within the
README tolerance ``max |ours - ref| <= 1e-5 + 3e-5 * max |ref|``. Every fixture directory with
a ``checkpoint.pth`` is run; no size is assumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rasa.engine.step import compute_losses
from rasa.models.loaders import load_official
from rasa.objectives import (
    LossConfig,
    mlm_distill_loss,
    mlm_distill_loss_official,
    mlm_loss,
    mlm_with_distill,
)
from rasa.variants import Variant, get_variant

FIXTURES = sorted(
    p for p in (Path(__file__).parent / "fixtures").iterdir() if (p / "checkpoint.pth").is_file()
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    ours, ref = ours.detach().float(), ref.float()
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(ref.shape)}"
    err = (ours - ref).abs().max().item()
    tol = 1e-5 + 3e-5 * ref.abs().max().item()
    assert err <= tol, f"{what}: max abs error {err:.3g} > tolerance {tol:.3g}"


@pytest.fixture(scope="module", params=FIXTURES, ids=lambda p: p.name)
def fixture(request):
    d = request.param
    inputs = torch.load(d / "inputs.pt", weights_only=True)
    outputs = torch.load(d / "outputs.pt", weights_only=True)
    return d, inputs, outputs


def _model(d: Path, official_semantics: bool = False):
    torch.manual_seed(0)
    model = load_official(d / "checkpoint.pth", official_semantics=official_semantics)
    return model.eval()  # eval: dropout off, as the fixture


def _alpha(d: Path) -> float:
    ckpt = torch.load(d / "checkpoint.pth", weights_only=True, map_location="cpu")
    return float(ckpt["config"]["alpha"])


def test_mlm_loss_from_official_logits(fixture):
    _, inputs, outputs = fixture
    pos = outputs["mlm_positions"]
    labels = inputs["mlm_labels"][pos[:, 0], pos[:, 1]]
    assert torch.equal(pos, (inputs["mlm_labels"] != -100).nonzero())
    assert_close(mlm_loss(outputs["mlm_logits"], labels), outputs["mlm_loss"], "mlm_loss")


def test_mlm_losses_from_our_model(fixture):
    d, inputs, outputs = fixture
    model = _model(d)
    ids, att = inputs["mlm_input_ids"], inputs["attention_mask"]
    pos = outputs["mlm_positions"]
    labels = inputs["mlm_labels"][pos[:, 0], pos[:, 1]]
    cap_img = inputs["caption_image"]
    b, length = ids.shape
    with torch.no_grad():
        img = model.encode_image(inputs["images"])[cap_img]
        img_m = model.encode_image(inputs["images"], momentum=True)[cap_img]
        hidden = model.fuse(model.encode_text(ids, att), att, img)
        full = model.mlm_logits(hidden, torch.ones_like(att, dtype=torch.bool)).view(b, length, -1)
        student = model.mlm_logits(hidden, pos)
        hidden_m = model.fuse(model.encode_text(ids, att, momentum=True), att, img_m, momentum=True)
        teacher = model.mlm_logits(hidden_m, pos, momentum=True)
    assert_close(student, outputs["mlm_logits"], "mlm_logits")
    assert_close(full[pos[:, 0], pos[:, 1]], outputs["mlm_logits"], "mlm_logits (full)")
    assert_close(teacher, outputs["mlm_logits_m"], "mlm_logits_m")
    hard = mlm_loss(student, labels)
    assert_close(hard, outputs["mlm_loss"], "mlm_loss")
    alpha = _alpha(d)
    official = mlm_with_distill(hard, mlm_distill_loss_official(full, teacher, pos), alpha)
    assert_close(official, outputs["mlm_loss_distill_official"], "mlm_loss_distill_official")
    # the correct semantics (log_softmax over the vocabulary) is another number; computed from
    # the official logits it equals ours
    correct = mlm_with_distill(hard, mlm_distill_loss(student, teacher), alpha)
    ref_correct = mlm_with_distill(
        outputs["mlm_loss"],
        mlm_distill_loss(outputs["mlm_logits"], outputs["mlm_logits_m"]),
        alpha,
    )
    assert_close(correct, ref_correct, "mlm distillation (vocabulary axis)")
    assert abs(correct.item() - official.item()) > 1e-3


# CL + PRD alone, and full RaSa (whose random losses must not disturb CL, PRD or the queues)
PARITY_CASES = [
    (Variant("cl+prd", "CL + PRD (parity)", "test", prd=True), True),
    (get_variant("m-rtd"), False),
    (get_variant("m-rtd"), True),
]


@pytest.mark.parametrize(
    ("variant", "official"),
    PARITY_CASES,
    ids=[f"{v.name}-{'official' if o else 'correct'}" for v, o in PARITY_CASES],
)
def test_training_step_cl_prd_and_queues(fixture, variant, official):
    d, inputs, outputs = fixture
    model = _model(d, official_semantics=official)  # the one switch: the model's config
    batch = {
        "image1": inputs["train_image1"],
        "image2": inputs["train_image2"],
        "text1_ids": inputs["train_text1_ids"],
        "text1_mask": inputs["train_text1_mask"],
        "text2_ids": inputs["train_text2_ids"],
        "text2_mask": inputs["train_text2_mask"],
        "pid": inputs["train_idx"],
        "replace": inputs["train_replace"],
    }
    cfg = LossConfig()  # bert-base-uncased special ids
    rng = torch.Generator().manual_seed(0)
    losses = compute_losses(model, batch, variant, cfg, float(inputs["train_alpha"]), rng=rng)
    assert {k for k in losses if k.startswith("loss")} == {*variant.loss_names, "loss"}
    assert_close(losses["loss_cl"], outputs["train_loss_cl"], "train_loss_cl")
    assert_close(losses["loss_prd"], outputs["train_loss_prd"], "train_loss_prd")
    assert torch.equal(model.queue_ptr, outputs["queue_ptr_after"])
    assert torch.equal(model.idx_queue, outputs["idx_queue_after"])
    assert_close(model.image_queue, outputs["image_queue_after"], "image_queue_after")
    assert_close(model.text_queue, outputs["text_queue_after"], "text_queue_after")
    assert torch.isfinite(losses["loss"])
