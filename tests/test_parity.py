"""Parity with the official RaSa implementation on fixed inputs (inference outputs).

Every fixture directory under tests/fixtures/ holding ``checkpoint.pth`` + ``outputs.pt`` (see
its README) is loaded with our official loader and run through our model; each output must
satisfy ``max|ours - x| <= 1e-5 + 3e-5 * max|x|`` in float32 on the CPU. No size is assumed:
everything comes from the fixture files.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from rasa.models import gather_image_kv, official_two_stage_scores
from rasa.models.loaders import load_official

FIXTURES = Path(__file__).parent / "fixtures"
DIRS = sorted(
    p
    for p in FIXTURES.iterdir()
    if (p / "checkpoint.pth").is_file() and (p / "outputs.pt").is_file()
)


def close(ours: torch.Tensor, ref: torch.Tensor) -> tuple[bool, float, float]:
    err = (ours.float() - ref.float()).abs().max().item()
    tol = 1e-5 + 3e-5 * ref.float().abs().max().item()
    return err <= tol, err, tol


@torch.no_grad()
def run_official_inputs(model, inp: dict, out: dict) -> dict[str, torch.Tensor]:
    """Our model on the fixture inputs, producing the fixture's output names."""
    r: dict[str, torch.Tensor] = {}
    ids, mask = inp["input_ids"], inp["attention_mask"]
    image_tokens = model.encode_image(inp["images"])
    text_tokens = model.encode_text(ids, mask)
    r["image_tokens"], r["text_tokens"] = image_tokens, text_tokens
    r["image_feat"] = model.image_embed(image_tokens)
    r["text_feat"] = model.text_embed(text_tokens)
    image_tokens_m = model.encode_image(inp["images"], momentum=True)
    r["image_feat_m"] = model.image_embed(image_tokens_m, momentum=True)
    r["text_feat_m"] = model.text_embed(model.encode_text(ids, mask, momentum=True), momentum=True)
    r["sims"] = r["text_feat"] @ r["image_feat"].T
    n_text, n_img = r["sims"].shape

    kv = model.precompute_image_kv(image_tokens)

    def itm_fn(t: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        fused = model.fuse(text_tokens[t], mask[t], image_kv=gather_image_kv(kv, i))
        return model.itm_logits(fused)

    t = torch.arange(n_text).repeat_interleave(n_img)
    i = torch.arange(n_img).repeat(n_text)
    fused = model.fuse(text_tokens[t], mask[t], image_kv=gather_image_kv(kv, i))
    r["itm_logits"] = model.itm_logits(fused).view(n_text, n_img, 2)
    r["prd_logits"] = model.prd_logits(fused).view(n_text, n_img, 2)

    own = inp["caption_image"]
    r["rtd_logits"] = model.rtd_logits(model.text_image(ids, mask, image_tokens[own]))
    positions = out["mlm_positions"]
    hidden = model.text_image(inp["mlm_input_ids"], mask, image_tokens[own])
    r["mlm_logits"] = model.mlm_logits(hidden, positions)
    hidden_m = model.text_image(inp["mlm_input_ids"], mask, image_tokens_m[own], momentum=True)
    r["mlm_logits_m"] = model.mlm_logits(hidden_m, positions, momentum=True)

    k = int(model.checkpoint_config["k_test"])
    r["scores_topk"] = official_two_stage_scores(r["sims"], itm_fn, k)
    r["scores_all"] = official_two_stage_scores(r["sims"], itm_fn, n_img)
    return r


@pytest.fixture(scope="module", params=DIRS, ids=lambda p: p.name)
def parity(request):
    d: Path = request.param
    model = load_official(d / "checkpoint.pth").eval()
    inp = torch.load(d / "inputs.pt", weights_only=True)
    out = torch.load(d / "outputs.pt", weights_only=True)
    return model, inp, out, run_official_inputs(model, inp, out)


def test_fixtures_found():
    assert DIRS, "no parity fixture (checkpoint.pth + outputs.pt) under tests/fixtures/"


def test_loader_accounts_for_every_key(parity):
    model, *_ = parity
    report = model.load_report
    assert report.ok and not report.new, report.format()


def test_sizes_come_from_the_checkpoint(parity):
    model, inp, out, _ = parity
    cfg = model.config
    assert tuple(inp["images"].shape[-2:]) == cfg.image_size
    assert out["image_tokens"].shape[1:] == (1 + cfg.grid[0] * cfg.grid[1], cfg.vision_width)
    assert out["image_feat"].shape[1] == cfg.embed_dim
    assert out["mlm_logits"].shape[1] == cfg.vocab_size


OUTPUTS = [
    "image_tokens",
    "image_feat",
    "text_tokens",
    "text_feat",
    "image_feat_m",
    "text_feat_m",
    "sims",
    "itm_logits",
    "prd_logits",
    "rtd_logits",
    "mlm_logits",
    "mlm_logits_m",
    "scores_topk",
    "scores_all",
]


@pytest.mark.parametrize("name", OUTPUTS)
def test_output_matches_official(parity, name):
    _, _, out, ours = parity
    assert ours[name].shape == out[name].shape
    ok, err, tol = close(ours[name], out[name])
    assert ok, f"{name}: max abs error {err:.3g} > tolerance {tol:.3g}"


def test_scores_all_equal_itm_match_logit(parity):
    _, _, out, ours = parity
    assert close(ours["scores_all"], ours["itm_logits"][..., 1])[0]
    assert close(out["scores_all"], out["itm_logits"][..., 1])[0]


def test_precomputed_kv_equals_direct_fusion(parity):
    model, inp, _, ours = parity
    with torch.no_grad():
        text, mask = ours["text_tokens"], inp["attention_mask"]
        image = ours["image_tokens"][inp["caption_image"]]
        direct = model.fuse(text, mask, image)
        kv = model.precompute_image_kv(ours["image_tokens"])
        cached = model.fuse(text, mask, image_kv=gather_image_kv(kv, inp["caption_image"]))
    torch.testing.assert_close(cached, direct, rtol=0, atol=1e-6)


def test_mlm_loss_matches_official(parity):
    _, inp, out, ours = parity
    labels = inp["mlm_labels"][inp["mlm_labels"] != -100]
    loss = torch.nn.functional.cross_entropy(ours["mlm_logits"], labels)
    assert close(loss, out["mlm_loss"])[0]


def test_enqueue_after_momentum_update_matches_official(parity):
    """The official step: EMA update, momentum features of (image2, text2), enqueue (wraps)."""
    model, inp, out, _ = parity
    if "queue_ptr_after" not in out:
        pytest.skip("fixture has no queue state after a training step")
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.momentum_update(model.config.momentum)
        image_feat_m = model.image_embed(model.encode_image(inp["train_image2"], True), True)
        text_tokens_m = model.encode_text(inp["train_text2_ids"], inp["train_text2_mask"], True)
        model.enqueue(image_feat_m, model.text_embed(text_tokens_m, True), inp["train_idx"])
    assert torch.equal(model.queue_ptr, out["queue_ptr_after"])
    assert torch.equal(model.idx_queue, out["idx_queue_after"])
    for name in ("image_queue", "text_queue"):
        ok, err, tol = close(getattr(model, name), out[f"{name}_after"])
        assert ok, f"{name}: max abs error {err:.3g} > tolerance {tol:.3g}"
