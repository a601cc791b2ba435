"""Two-stage ranking: the batched re-ranking equals a per-query loop, whatever the chunk sizes,
and reproduces the official fixture's ``scores_topk``/``scores_all`` (layout "official")."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rasa.engine.metrics import retrieval_metrics
from rasa.engine.ranking import (
    RerankResult,
    compose_scores,
    rerank_logits,
    rerank_naive,
    rerank_topk,
)
from rasa.errors import ConfigError, RasaError
from rasa.models.config import ModelConfig
from rasa.models.rasa_model import RaSaModel

# every official parity fixture (sizes are read from the files, never assumed)
FIXTURES = sorted(
    p
    for p in (Path(__file__).parent / "fixtures").iterdir()
    if (p / "checkpoint.pth").is_file() and (p / "outputs.pt").is_file()
)


def tiny_model(seed: int = 0) -> RaSaModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        name="test-tiny",
        image_size=(16, 8),
        patch_size=4,
        vision_width=32,
        vision_depth=1,
        vision_mlp_dim=64,
        vocab_size=50,
        text_width=32,
        text_heads=2,
        text_intermediate=48,
        num_layers=3,
        fusion_layer=1,
        max_position_embeddings=16,
        embed_dim=16,
        queue_size=8,
        init_std=0.2,
    )
    return RaSaModel(cfg).eval()


def random_inputs(model: RaSaModel, q: int, g: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h, w = model.config.image_size
    images = torch.randn(g, 3, h, w, generator=gen)
    ids = torch.randint(5, model.config.vocab_size, (q, 12), generator=gen)
    lengths = torch.randint(3, 13, (q,), generator=gen)
    mask = (torch.arange(12)[None] < lengths[:, None]).to(torch.uint8)
    ids = ids * mask
    with torch.no_grad():
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(ids, mask)
        sims = model.text_embed(text_tokens) @ model.image_embed(image_tokens).T
    return text_tokens, mask, image_tokens, sims


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def setup():
    model = tiny_model()
    return model, *random_inputs(model, q=13, g=9)


@pytest.mark.parametrize("layout", ["ours", "official"])
# share_min: 0/None = every chunk gathers K/V per pair, 1 = every image gets its own broadcast
# chunks, 3 = a mix (images in >= 3 pairs broadcast, the rest gathered)
@pytest.mark.parametrize(
    ("k", "pair_batch", "image_block", "share_min"),
    [(4, 5, 2, 0), (4, 5, 2, 1), (9, 1000, 1000, None), (20, 3, 4, 1), (6, 8, 4, 3)],
)
def test_batched_equals_per_query_loop(
    setup, layout, k, pair_batch, image_block, share_min
) -> None:
    model, text_tokens, mask, image_tokens, sims = setup
    fast = rerank_topk(
        model, text_tokens, mask, sims, image_tokens, k, layout=layout,
        pair_batch=pair_batch, image_block=image_block, share_min=share_min,
    )  # fmt: skip
    ref = rerank_naive(model, text_tokens, mask, sims, image_tokens, k, layout=layout)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize(("k", "pair_batch", "image_block"), [(4, 5, 2), (13, 1000, 1000)])
def test_image_to_text_equals_per_image_loop(setup, k, pair_batch, image_block) -> None:
    model, text_tokens, mask, image_tokens, sims = setup
    fast = rerank_topk(
        model, text_tokens, mask, sims, image_tokens, k, direction="i2t",
        pair_batch=pair_batch, image_block=image_block,
    )  # fmt: skip
    ref = rerank_naive(model, text_tokens, mask, sims, image_tokens, k, direction="i2t")
    assert fast.shape == (sims.shape[1], sims.shape[0])
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_precomputed_kv_and_candidate_order(setup) -> None:
    model, text_tokens, mask, image_tokens, sims = setup
    with torch.no_grad():
        kv = model.precompute_image_kv(image_tokens)
    a = rerank_logits(model, text_tokens, mask, sims, image_tokens, 5, pair_batch=7)
    b = rerank_logits(model, text_tokens, mask, sims, k=5, image_kv=kv, image_block=3)
    torch.testing.assert_close(a.itm_logits, b.itm_logits, atol=2e-5, rtol=1e-5)
    # candidates are the top 5 by similarity, best first
    top = sims.topk(5, dim=1).indices
    assert torch.equal(a.topk_index, top)


def test_ours_layout_puts_candidates_first_in_probability_order() -> None:
    sims = torch.tensor([[0.9, 0.1, 0.5, -0.2], [0.0, 0.3, 0.2, 0.1]])
    topk = torch.tensor([[0, 2], [1, 2]])
    logits = torch.tensor([[[0.0, -1.0], [0.0, 2.0]], [[1.0, 1.0], [3.0, 0.0]]])
    scores = compose_scores(sims, RerankResult(topk, logits), "ours")
    assert torch.argsort(scores, dim=1, descending=True).tolist() == [[2, 0, 1, 3], [1, 2, 3, 0]]
    assert scores[0, 2].item() == pytest.approx(2 + torch.sigmoid(torch.tensor(2.0)).item())
    official = compose_scores(sims, RerankResult(topk, logits), "official")
    assert official.tolist() == [[-1.0, -100.0, 2.0, -100.0], [-100.0, 1.0, 0.0, -100.0]]
    with pytest.raises(ConfigError, match="layout"):
        compose_scores(sims, RerankResult(topk, logits), "best")


def test_bad_shapes_raise(setup) -> None:
    model, text_tokens, mask, image_tokens, sims = setup
    with pytest.raises(RasaError, match="caption rows"):
        rerank_logits(model, text_tokens[:3], mask[:3], sims, image_tokens, 4)
    with pytest.raises(RasaError, match="gallery columns"):
        rerank_logits(model, text_tokens, mask, sims, image_tokens[:2], 4)


def test_restores_training_mode(setup) -> None:
    model, text_tokens, mask, image_tokens, sims = setup
    model.train()
    try:
        rerank_logits(model, text_tokens, mask, sims, image_tokens, 2)
        assert model.training
    finally:
        model.eval()


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_official_fixture_scores_topk(fixture: Path) -> None:
    from rasa.models.loaders import load_official

    model = load_official(fixture / "checkpoint.pth")
    inputs = torch.load(fixture / "inputs.pt", weights_only=True)
    outputs = torch.load(fixture / "outputs.pt", weights_only=True)
    cfg = torch.load(fixture / "checkpoint.pth", weights_only=True)["config"]
    model.eval()
    with torch.no_grad():
        image_tokens = model.encode_image(inputs["images"])
        text_tokens = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        sims = model.text_embed(text_tokens) @ model.image_embed(image_tokens).T
    g = image_tokens.shape[0]
    for k, key in ((cfg["k_test"], "scores_topk"), (g, "scores_all")):
        ours = rerank_topk(
            model, text_tokens, inputs["attention_mask"], sims, image_tokens, k,
            layout="official", pair_batch=5, image_block=4,
        )  # fmt: skip
        ref = outputs[key]
        tol = 1e-5 + 3e-5 * ref.abs().max().item()
        assert (ours - ref).abs().max().item() <= tol, key
    m = retrieval_metrics(ours, inputs["txt2person"], inputs["img2person"])
    for key, value in outputs["metrics_all"].items():
        assert m[key] == pytest.approx(float(value), abs=1e-3)


def test_rerank_computes_image_kv_only_for_candidates_and_prefix_once_per_caption():
    """Images that never reach a top k get no cross-attention K/V; the first fusion layer's
    self-attention runs once per caption, not once per (caption, image) pair."""
    model = tiny_model()
    text_tokens, mask, image_tokens = random_inputs(model, q=5, g=40)[:3]
    sims = torch.randn(5, 40, generator=torch.Generator().manual_seed(3))
    seen = {"kv": 0, "prefix": 0}
    kv_fn, prefix_fn = model.precompute_image_kv, model.fusion_prefix

    def count_kv(tokens, *a, **kw):
        seen["kv"] += tokens.shape[0]
        return kv_fn(tokens, *a, **kw)

    def count_prefix(tokens, *a, **kw):
        seen["prefix"] += tokens.shape[0]
        return prefix_fn(tokens, *a, **kw)

    model.precompute_image_kv, model.fusion_prefix = count_kv, count_prefix
    result = rerank_logits(model, text_tokens, mask, sims, image_tokens, k=3, image_block=4)
    assert seen["kv"] == result.topk_index.unique().numel() <= 15
    assert seen["prefix"] == 5
    del model.precompute_image_kv, model.fusion_prefix
    ref = rerank_naive(model, text_tokens, mask, sims, image_tokens, k=3, layout="official")
    fast = compose_scores(sims, result, "official")
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
