"""Every registered backbone builds and runs a training step (timm style: the suite walks
``list_models()``), at reduced depth where the real one is large; the ``micro`` backbone is
the one the training tests use."""

from __future__ import annotations

import pytest
import torch

from rasa.engine.step import compute_losses
from rasa.errors import ConfigError
from rasa.models import create_model, list_models
from rasa.models.registry import MICRO, TINY
from rasa.objectives import LossConfig, SpecialTokens
from rasa.variants import FULL, get_variant

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = SpecialTokens(pad=0, cls=1, sep=2, mask=3)
# Backbones whose real size is ViT-B + BERT-base / CLIP / MiniLM: one narrow block each way
# runs their code paths (their architecture, not their widths; pretrained=False: no weights).
_NARROW = dict(vision_depth=1, vision_width=64, vision_mlp_dim=128, num_layers=2, fusion_layer=1,
               text_width=64, text_heads=2, text_intermediate=128, vocab_size=1000)  # fmt: skip
SHALLOW = {
    "albef": dict(_NARROW, image_size=(32, 32)),
    "tcl": dict(_NARROW, image_size=(32, 32)),
    "clip": dict(_NARROW, image_size=(32, 16)),
    "minilm": dict(_NARROW, image_size=(32, 16)),
}
NEEDS_WEIGHTS = {"official"}  # sizes come from the checkpoint file


def batch_for(config, n: int = 4, length: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch of random images and captions that fits ``config``."""
    g = torch.Generator().manual_seed(seed)
    h, w = config.image_size
    lengths = torch.tensor([length, 5, 6, length][:n])
    mask = (torch.arange(length)[None] < lengths[:, None]).long()

    def text() -> torch.Tensor:
        ids = torch.randint(4, min(config.vocab_size, 1000), (n, length), generator=g)
        ids[:, 0] = TOK.cls
        ids[torch.arange(n), lengths - 1] = TOK.sep
        return ids.masked_fill(mask == 0, TOK.pad)

    return {
        "image1": torch.randn(n, 3, h, w, generator=g),
        "image2": torch.randn(n, 3, h, w, generator=g),
        "text1_ids": text(),
        "text1_mask": mask,
        "text2_ids": text(),
        "text2_mask": mask.clone(),
        "replace": torch.tensor([0, 1, 0, 0][:n]),
        "pid": torch.tensor([0, 0, 1, 2][:n]),
    }


@pytest.mark.parametrize("name", sorted(set(list_models()) - NEEDS_WEIGHTS))
def test_every_backbone_builds_and_runs_a_full_rasa_step(name):
    torch.manual_seed(0)
    model = create_model(name, pretrained=False, **SHALLOW.get(name, {}))
    assert model.config.name == name
    losses = compute_losses(
        model, batch_for(model.config), get_variant(FULL), LossConfig(tokens=TOK), 0.4, None,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert {k for k in losses if k.startswith("loss")} == {*get_variant(FULL).loss_names, "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert model.itm_head.weight.grad is not None


@pytest.mark.parametrize("name", sorted(NEEDS_WEIGHTS))
def test_backbones_that_need_weights_say_so(name):
    with pytest.raises(ConfigError, match="pretrained"):
        create_model(name)


def test_micro_is_smaller_than_tiny():
    assert MICRO.name == "micro" and "micro" in list_models()
    micro, tiny = create_model("micro"), create_model("tiny")
    assert micro.num_parameters() < tiny.num_parameters() / 4
    assert MICRO.image_size == (32, 16) and TINY.image_size == (128, 64)
