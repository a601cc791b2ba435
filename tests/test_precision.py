"""The GPU code paths, run on a CPU: bf16 autocast (``torch.autocast("cpu")``) in training and
evaluation, a ``torch.compile``d training step, and the one precision switch they share."""

from __future__ import annotations

import copy

import pytest
import torch

from rasa.engine.bench import SPECIALS, random_batch, random_captions
from rasa.engine.build import make_loss_config
from rasa.engine.evaluate import embed_images, embed_texts, similarity
from rasa.engine.metrics import retrieval_metrics
from rasa.engine.precision import autocast, autocast_dtype, precision_of
from rasa.engine.ranking import compose_scores, rerank_logits
from rasa.engine.step import compute_losses
from rasa.errors import ConfigError
from rasa.models import create_model
from rasa.variants import get_variant

SMALL = dict(image_size=(32, 16), patch_size=8, vision_width=64, vision_depth=2,
             vision_mlp_dim=128, vocab_size=120, text_width=64, text_heads=2,
             text_intermediate=128, num_layers=3, fusion_layer=2, max_position_embeddings=32,
             embed_dim=32, queue_size=64)  # fmt: skip
NO_DROPOUT = dict(hidden_dropout=0.0, attention_dropout=0.0)
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_cfg():
    return make_loss_config({}, type("Cache", (), {"meta": SPECIALS})())


def test_one_precision_switch_for_train_and_evaluate():
    assert precision_of(True) == "auto" and precision_of(False) == "fp32"
    assert precision_of("always") == "bf16"
    assert autocast_dtype(True, "cpu") is None  # train.bf16: true stays fp32 on a CPU
    assert autocast_dtype(True, "cuda") is torch.bfloat16
    assert autocast_dtype("always", "cpu") is torch.bfloat16  # explicit CPU bf16
    assert autocast_dtype("fp32", "cuda") is None
    with pytest.raises(ConfigError, match="dtype"):
        autocast_dtype("fp16", "cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
        x = torch.ones(2, 3) @ torch.ones(3, 2)
    assert x.dtype is torch.bfloat16


@pytest.mark.parametrize("variant", ["m-rtd", "o-rtd", "cl"])
def test_bf16_autocast_training_steps_run_on_cpu_and_track_fp32(variant):
    torch.manual_seed(0)
    model = create_model("tiny", **SMALL, **NO_DROPOUT)
    ref = copy.deepcopy(model)
    var, cfg = get_variant(variant), loss_cfg()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(3):
        batch = random_batch(8, (32, 16), 120, caption_length=(5, 12), seed=step)
        with torch.no_grad():  # fp32 reference of the same step on the same weights
            ref.load_state_dict(model.state_dict())
            want = compute_losses(
                ref, batch, var, cfg, 0.4, None, torch.Generator().manual_seed(step)
            )
        with autocast(CPU, autocast_dtype("bf16", CPU)):
            got = compute_losses(
                model, batch, var, cfg, 0.4, None, torch.Generator().manual_seed(step)
            )
        got["loss"].backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(bool(g.isfinite().all()) for g in grads)
        assert all(g.dtype is torch.float32 for g in grads)  # autocast keeps fp32 weights
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert set(got) == set(want)
        for key in want:
            assert got[key].dtype is torch.float32
            assert float(got[key].detach()) == pytest.approx(
                float(want[key]), rel=0.03, abs=0.02
            ), key


def _identity_task(n_ids: int, seed: int):
    """A learnable retrieval task: per identity a prototype image and a prototype caption;
    samples are noisy copies (images + Gaussian noise, captions with replaced tokens)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n_ids, 3, 32, 16, generator=g)
    captions, mask = random_captions(n_ids, (8, 14), 120, g)

    def sample(pids: torch.Tensor, gen: torch.Generator):
        img = images[pids] + 0.5 * torch.randn(pids.shape[0], 3, 32, 16, generator=gen)
        ids, m = captions[pids].clone(), mask[pids]
        swap = (torch.rand(ids.shape, generator=gen) < 0.1) & (ids > 4) & m.bool()
        ids[swap] = torch.randint(5, 120, (int(swap.sum()),), generator=gen)
        return img, ids, m

    return sample


def _scores(model, sample, dtype: str):
    g = torch.Generator().manual_seed(99)
    gallery_pids = torch.arange(120).repeat_interleave(2)  # 240 images
    query_pids = torch.arange(120).repeat_interleave(5)  # 600 captions
    images, _, _ = sample(gallery_pids, g)
    _, ids, mask = sample(query_pids, g)
    amp = autocast_dtype(dtype, CPU)
    image_tokens, image_feats = embed_images(model, images.split(64), CPU, amp, progress=False)
    text_tokens, text_feats = embed_texts(model, ids, mask, 64, CPU, amp, progress=False)
    sims = similarity(text_feats, image_feats, CPU)
    result = rerank_logits(
        model, text_tokens, mask, sims, image_tokens, 16, autocast_dtype=amp, pair_batch=128
    )
    scores = compose_scores(sims, result, "ours")
    return scores, retrieval_metrics(scores, query_pids, gallery_pids)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.slow
def test_bf16_evaluation_of_a_trained_tiny_model_matches_fp32():
    """A tiny model trained 250 steps (its recipe: lr 1e-3, no distillation); 600 queries x 240 images, k 16: R@1 and mAP within
    1 point, rank correlation of the scores >= 0.99."""
    torch.manual_seed(0)
    model = create_model("tiny", **SMALL)
    sample = _identity_task(120, seed=1)
    var, cfg = get_variant("m-rtd"), loss_cfg()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.02)  # tiny's recipe
    gen, rng = torch.Generator().manual_seed(2), torch.Generator().manual_seed(3)
    model.train()
    for _ in range(250):
        pids = torch.randperm(120, generator=gen)[:16].repeat_interleave(2)
        img1, ids1, m1 = sample(pids, gen)
        img2, ids2, m2 = sample(pids, gen)
        batch = {"image1": img1, "image2": img2, "text1_ids": ids1, "text1_mask": m1,
                 "text2_ids": ids2, "text2_mask": m2, "pid": pids,
                 "replace": torch.zeros_like(pids)}  # fmt: skip
        compute_losses(model, batch, var, cfg, 0.0, None, rng)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    fp32_scores, fp32 = _scores(model, sample, "fp32")
    bf16_scores, bf16 = _scores(model, sample, "bf16")
    assert fp32["r1"] > 10 and fp32["r5"] > 30, fp32  # it learned: chance is under 1 and 5
    assert abs(bf16["r1"] - fp32["r1"]) <= 1.0, (bf16, fp32)
    assert abs(bf16["mAP"] - fp32["mAP"]) <= 1.0, (bf16, fp32)
    assert _spearman(bf16_scores, fp32_scores) >= 0.99


@pytest.mark.slow
def test_compiled_training_step_gives_the_eager_losses():
    torch.manual_seed(0)
    model = create_model("tiny", **SMALL, **NO_DROPOUT)
    twin = copy.deepcopy(model)
    var, cfg = get_variant("m-rtd"), loss_cfg()

    def step(m, batch, seed):
        return compute_losses(m, batch, var, cfg, 0.4, None, torch.Generator().manual_seed(seed))

    compiled = torch.compile(step)
    for i in range(2):
        batch = random_batch(8, (32, 16), 120, caption_length=(5, 12), seed=i)
        eager = step(model, batch, i)
        got = compiled(twin, batch, i)
        eager["loss"].backward()
        got["loss"].backward()
        for key in eager:
            assert float(got[key].detach()) == pytest.approx(
                float(eager[key].detach()), rel=1e-4, abs=1e-5
            ), key
        for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
            if p.grad is not None:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-5, msg=name)
        model.zero_grad(set_to_none=True)
        twin.zero_grad(set_to_none=True)
