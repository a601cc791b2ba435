"""The packed text paths compute what the padded ones do (rasa.models.bert, issue #17).

Packing (real tokens only), the [CLS]-only last fusion layer and the per-caption first-layer
prefix are how the training step and re-ranking skip work; with dropout off (eval mode) each
must give the padded computation's numbers at every position the losses and heads read.
"""

from __future__ import annotations

import pytest
import torch

from rasa.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = create_model("micro").eval()
    cfg = model.config
    b, length = 6, 12
    ids = torch.randint(5, cfg.vocab_size, (b, length))
    lengths = torch.tensor([12, 3, 7, 1, 9, 5])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0 at padding
    images = torch.randn(b, 3, *cfg.image_size)
    return model, ids, mask, images


def _real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x[mask.bool()]


@torch.no_grad()
@pytest.mark.parametrize("momentum", [False, True])
def test_packed_text_and_fusion_equal_padded_at_real_tokens(batch, momentum):
    model, ids, mask, images = batch
    img = model.encode_image(images, momentum=momentum)
    padded = model.encode_text(ids, mask, momentum=momentum, pack=False)
    packed = model.encode_text(ids, mask, momentum=momentum, pack=True)
    torch.testing.assert_close(_real(packed, mask), _real(padded, mask), rtol=1e-5, atol=1e-5)
    fused_pad = model.fuse(padded, mask, img, momentum=momentum, pack=False)
    fused_pack = model.fuse(packed, mask, img, momentum=momentum, pack=True)
    torch.testing.assert_close(
        _real(fused_pack, mask), _real(fused_pad, mask), rtol=1e-5, atol=1e-5
    )


@torch.no_grad()
def test_cls_only_and_prefix_give_the_heads_the_same_input(batch):
    model, ids, mask, images = batch
    img = model.encode_image(images)
    text = model.encode_text(ids, mask)
    full = model.fuse(text, mask, img)[:, :1]
    cls = model.fuse(text, mask, img, pack=True, cls_only=True)
    prefix = model.fusion_prefix(text, mask, pack=True)
    from_prefix = model.fuse(prefix, mask, img, pack=True, cls_only=True, from_prefix=True)
    torch.testing.assert_close(cls, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(from_prefix, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.itm_logits(from_prefix), model.itm_logits(full))
