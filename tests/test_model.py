"""RaSa model: registry, shapes of every interface method, momentum EMA, queues, helpers."""

from __future__ import annotations

import pytest
import torch

from rasa.errors import ConfigError
from rasa.models import (
    ModelConfig,
    RaSaModel,
    create_model,
    gather_image_kv,
    list_models,
    official_two_stage_scores,
    register_model,
)
from rasa.models.vit import interpolate_pos_embed, pos_grid

# Odd sizes on purpose: non-square image, 3 heads of width 16, 1 text + 2 fusion layers.
SMALL = dict(
    image_size=(48, 32),
    patch_size=16,
    vision_width=64,
    vision_depth=2,
    vision_mlp_dim=96,
    vocab_size=97,
    text_width=48,
    text_heads=3,
    text_intermediate=80,
    num_layers=3,
    fusion_layer=1,
    max_position_embeddings=20,
    embed_dim=24,
    queue_size=10,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


@pytest.fixture(scope="module")
def model() -> RaSaModel:
    torch.manual_seed(0)
    return create_model("tiny", **SMALL).eval()


def batch(b: int = 3, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, 48, 32, generator=g)
    ids = torch.randint(5, 97, (b, length), generator=g)
    lengths = torch.arange(b) % (length - 2) + 3
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return images, ids * mask, mask


# ---------------------------------------------------------------------------- registry
def test_registry_lists_backbones():
    assert {"tiny", "minilm", "albef", "tcl", "official"} <= set(list_models())


def test_unknown_backbone_lists_known_ones():
    with pytest.raises(ConfigError, match="known backbones: .*tiny"):
        create_model("nope")


def test_duplicate_registration_raises():
    def tiny(pretrained=None, **kw):  # same name as the registered builder
        raise AssertionError

    with pytest.raises(ConfigError, match="twice"):
        register_model(tiny)


def test_unknown_override_raises():
    with pytest.raises(ConfigError, match="unknown model config key"):
        create_model("tiny", not_a_field=1)


def test_inconsistent_config_raises():
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(text_width=100, text_heads=3)


def test_config_roundtrip():
    cfg = ModelConfig(name="x", **SMALL)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.vision_heads == 1 and cfg.grid == (3, 2) and cfg.num_fusion_layers == 2


# ---------------------------------------------------------------------------- shapes
def test_interface_shapes(model):
    images, ids, mask = batch()
    cfg = model.config
    with torch.no_grad():
        image_tokens = model.encode_image(images)
        assert image_tokens.shape == (3, 1 + 3 * 2, 64)
        text_tokens = model.encode_text(ids, mask)
        assert text_tokens.shape == (3, 7, 48)
        for momentum in (False, True):
            e = model.image_embed(model.encode_image(images, momentum), momentum)
            assert e.shape == (3, cfg.embed_dim)
            torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
            t = model.text_embed(model.encode_text(ids, mask, momentum), momentum)
            torch.testing.assert_close(t.norm(dim=-1), torch.ones(3))
        fused = model.fuse(text_tokens, mask, image_tokens)
        assert fused.shape == (3, 7, 48)
        assert model.itm_logits(fused).shape == (3, 2)
        assert model.prd_logits(fused).shape == (3, 2)
        assert model.rtd_logits(fused).shape == (3, 7, 2)
        kv = model.precompute_image_kv(image_tokens)
        assert len(kv) == cfg.num_fusion_layers
        assert kv[0][0].shape == (3, 3, 7, 16)


def test_padding_does_not_change_real_tokens(model):
    images, ids, mask = batch()
    longer = torch.cat([ids, torch.zeros(3, 4, dtype=ids.dtype)], 1)
    longer_mask = torch.cat([mask, torch.zeros(3, 4, dtype=mask.dtype)], 1)
    with torch.no_grad():
        a = model.encode_text(ids, mask)
        b = model.encode_text(longer, longer_mask)
        image = model.encode_image(images)
        fa = model.fuse(a, mask, image)
        fb = model.fuse(b, longer_mask, image)
    torch.testing.assert_close(b[:, :7][mask.bool()], a[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fb[:, 0], fa[:, 0], atol=1e-5, rtol=1e-5)


def test_precomputed_kv_gathered_and_broadcast(model):
    images, ids, mask = batch()
    with torch.no_grad():
        image_tokens = model.encode_image(images)
        text_tokens = model.encode_text(ids, mask)
        kv = model.precompute_image_kv(image_tokens)
        pick = torch.tensor([2, 0, 2])
        direct = model.fuse(text_tokens, mask, image_tokens[pick])
        cached = model.fuse(text_tokens, mask, image_kv=gather_image_kv(kv, pick))
        torch.testing.assert_close(cached, direct)
        one = gather_image_kv(kv, torch.tensor([1]))  # one image for every caption
        broad = model.fuse(text_tokens, mask, image_kv=one)
        torch.testing.assert_close(broad, model.fuse(text_tokens, mask, image_tokens[[1, 1, 1]]))


def test_mlm_logits_only_at_positions(model):
    images, ids, mask = batch()
    with torch.no_grad():
        hidden = model.text_image(ids, mask, model.encode_image(images))
        full = model.mlm_head(hidden)  # [B, L, V], the wasteful reference
        pos = torch.tensor([[0, 1], [2, 3], [1, 0]])
        torch.testing.assert_close(model.mlm_logits(hidden, pos), full[pos[:, 0], pos[:, 1]])
        sel = torch.zeros_like(mask, dtype=torch.bool)
        sel[pos[:, 0], pos[:, 1]] = True
        assert model.mlm_logits(hidden, sel).shape == (3, model.config.vocab_size)
    assert model.mlm_head.decoder.weight is model.text_encoder.embeddings.word_embeddings.weight


def test_two_stage_scores_against_naive_loop():
    g = torch.Generator().manual_seed(1)
    sims = torch.randn(5, 7, generator=g)
    itm = torch.randn(5, 7, 2, generator=g)
    scores = official_two_stage_scores(sims, lambda t, i: itm[t, i], k=3)
    ref = torch.full((5, 7), -100.0)
    for t in range(5):
        for i in sims[t].topk(3).indices:
            ref[t, i] = itm[t, i, 1]
    torch.testing.assert_close(scores, ref)
    torch.testing.assert_close(
        official_two_stage_scores(sims, lambda t, i: itm[t, i], 9), itm[..., 1]
    )


# ---------------------------------------------------------------------------- temperature
def test_temperature_clamped_unless_official():
    m = create_model("tiny", **SMALL)
    with torch.no_grad():
        m.temp.fill_(0.9)
    assert m.temperature().item() == pytest.approx(0.5)
    off = create_model("tiny", **SMALL, official_semantics=True)
    with torch.no_grad():
        off.temp.fill_(0.9)
    assert off.temperature().item() == pytest.approx(0.9)


# ---------------------------------------------------------------------------- momentum
def test_momentum_starts_equal_and_has_no_grad(model):
    for name, name_m in RaSaModel.MOMENTUM_PAIRS:
        online, ema = getattr(model, name).parameters(), getattr(model, name_m).parameters()
        for p, pm in zip(online, ema, strict=True):
            assert torch.equal(p, pm) and not pm.requires_grad


def test_momentum_update_matches_naive_ema():
    torch.manual_seed(0)
    m = create_model("tiny", **SMALL)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ptrs = [p.data_ptr() for p in m.visual_encoder_m.parameters()]
    m.momentum_update(0.9)
    after = m.state_dict()
    for key, value in after.items():
        for name, name_m in RaSaModel.MOMENTUM_PAIRS:
            if key.startswith(name_m + "."):
                online = before[name + key[len(name_m) :]]
                expected = 0.9 * before[key] + 0.1 * online
                torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    assert ptrs == [p.data_ptr() for p in m.visual_encoder_m.parameters()]  # in place
    # the tied decoder weight is updated once, not twice
    torch.testing.assert_close(
        m.mlm_head_m.decoder.weight,
        0.9 * before["mlm_head_m.decoder.weight"] + 0.1 * before["mlm_head.decoder.weight"],
    )


def test_gradients_reach_online_not_momentum(model):
    m = create_model("tiny", **SMALL)
    images, ids, mask = batch()
    image_tokens = m.encode_image(images)
    text = m.encode_text(ids, mask)
    loss = (
        m.itm_logits(m.fuse(text, mask, image_tokens)).sum()
        + (m.image_embed(image_tokens) @ m.text_embed(text).T / m.temperature()).sum()
    )
    loss.backward()
    assert m.visual_encoder.patch_embed.proj.weight.grad is not None
    assert m.text_encoder.embeddings.word_embeddings.weight.grad is not None
    assert m.temp.grad is not None
    assert all(p.grad is None for p in m.text_encoder_m.parameters())


# ---------------------------------------------------------------------------- queues
def test_queue_init():
    m = create_model("tiny", **SMALL)
    assert m.image_queue.shape == (24, 10) and m.idx_queue.shape == (1, 10)
    torch.testing.assert_close(m.image_queue.norm(dim=0), torch.ones(10))
    assert (m.idx_queue == -100).all() and m.queue_ptr.item() == 0


def test_enqueue_wraps_around():
    m = create_model("tiny", **SMALL)
    m.queue_ptr.fill_(8)
    feats = torch.arange(4 * 24, dtype=torch.float32).view(4, 24)
    m.enqueue(feats, -feats, torch.tensor([5, 6, 7, 8]))
    assert m.queue_ptr.item() == 2
    assert m.idx_queue[0].tolist() == [7, 8] + [-100] * 6 + [5, 6]
    torch.testing.assert_close(m.image_queue[:, [8, 9, 0, 1]], feats.T)
    torch.testing.assert_close(m.text_queue[:, [8, 9, 0, 1]], -feats.T)


def test_enqueue_more_than_queue_keeps_the_last():
    m = create_model("tiny", **SMALL)
    m.queue_ptr.fill_(3)
    feats = torch.randn(13, 24)
    idx = torch.arange(13)
    m.enqueue(feats, feats, idx)
    # the naive sequential writer, column by column
    ref = torch.full((10,), -100)
    for j in range(13):
        ref[(3 + j) % 10] = idx[j]
    assert m.idx_queue[0].tolist() == ref.tolist()
    assert m.queue_ptr.item() == (3 + 13) % 10


# ---------------------------------------------------------------------------- ViT
def test_pos_embed_interpolation():
    pe = torch.randn(1, 1 + 4 * 2, 8)
    assert interpolate_pos_embed(pe, (4, 2), (4, 2)) is pe
    out = interpolate_pos_embed(pe, (4, 2), (6, 3))
    assert out.shape == (1, 1 + 18, 8)
    assert torch.equal(out[:, 0], pe[:, 0])  # CLS row kept
    const = torch.ones(1, 1 + 8, 8)
    torch.testing.assert_close(interpolate_pos_embed(const, (4, 2), (6, 3)), torch.ones(1, 19, 8))
    assert pos_grid(1 + 8, (64, 32), 16) == (4, 2)
    assert pos_grid(1 + 16, None, 16) == (4, 4)
    with pytest.raises(ValueError):
        pos_grid(1 + 8, None, 16)


def test_vit_is_timm_with_eps_and_exact_gelu(model):
    vit = model.visual_encoder
    assert vit.norm.eps == 1e-6
    assert vit.blocks[0].mlp.fc1.out_features == 96
    assert (
        isinstance(vit.blocks[0].mlp.act, torch.nn.GELU)
        and vit.blocks[0].mlp.act.approximate == "none"
    )


def test_tiny_default_init_spreads_caption_embeddings():
    """BERT's 0.02 init embeds all captions almost identically; tiny's init_std does not."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (16, 12), generator=g)
    ids[:, 0] = 101  # every caption starts with [CLS]
    mask = torch.ones_like(ids)

    def mean_cos(std: float) -> float:
        torch.manual_seed(0)
        m = create_model("tiny", init_std=std, vision_depth=1, queue_size=8).eval()
        with torch.no_grad():
            e = m.text_embed(m.encode_text(ids, mask))
        s = e @ e.T
        return ((s.sum() - s.diag().sum()) / (16 * 15)).item()

    assert mean_cos(0.02) > 0.999
    assert mean_cos(create_model("tiny", vision_depth=1, queue_size=8).config.init_std) < 0.95


def test_non_square_images_and_parameter_count():
    m = create_model("tiny")
    assert m.config.image_size == (128, 64)
    n_all, n_online = m.num_parameters(), m.num_parameters(momentum=False)
    assert n_online < n_all < 2 * n_online + 1
    images = torch.randn(1, 3, 128, 64)
    with torch.no_grad():
        assert m.encode_image(images).shape == (1, 1 + 8 * 4, 128)


def test_dropout_off_in_eval_is_deterministic(model):
    images, ids, mask = batch()
    with torch.no_grad():
        a = model.text_image(ids, mask, model.encode_image(images))
        b = model.text_image(ids, mask, model.encode_image(images))
    assert torch.equal(a, b)
