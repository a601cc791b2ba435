"""The training step: each Table 4 variant computes exactly its losses, trains exactly its
parameters, runs only the passes it needs; momentum update and enqueue; the f-RTD generator."""

from __future__ import annotations

import copy

import pytest
import torch

from rasa.engine.step import compute_losses
from rasa.errors import ConfigError
from rasa.models import create_model
from rasa.models.generator import (
    FixedGenerator,
    GeneratorConfig,
    freeze,
    load_generator,
    train_generator,
)
from rasa.objectives import IGNORE_INDEX, LossConfig, SpecialTokens, head_accuracy, total_loss
from rasa.variants import Variant, get_variant, list_variants

TOK = SpecialTokens(pad=0, cls=1, sep=2, mask=3)
VOCAB, B, L = 40, 4, 8
SMALL = dict(
    image_size=(32, 16),
    patch_size=8,
    vision_width=32,
    vision_depth=1,
    vision_mlp_dim=64,
    vocab_size=VOCAB,
    text_width=32,
    text_heads=2,
    text_intermediate=64,
    num_layers=3,
    fusion_layer=1,
    max_position_embeddings=16,
    embed_dim=16,
    queue_size=10,
    hidden_dropout=0.0,
    attention_dropout=0.0,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def make_model(official_semantics: bool = False):
    torch.manual_seed(0)
    return create_model("tiny", **SMALL, official_semantics=official_semantics)


def make_batch(pids=(0, 0, 1, 2), replace=(0, 1, 0, 0), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(pids)
    lengths = torch.tensor([L, 5, 6, L][:n])

    def text():
        ids = torch.randint(4, VOCAB, (n, L), generator=g)
        mask = (torch.arange(L).view(1, -1) < lengths.view(-1, 1)).long()
        ids[:, 0] = TOK.cls
        ids[torch.arange(n), lengths - 1] = TOK.sep
        return ids.masked_fill(mask == 0, TOK.pad), mask

    t1, m1 = text()
    t2, m2 = text()
    return {
        "image1": torch.randn(n, 3, 32, 16, generator=g),
        "image2": torch.randn(n, 3, 32, 16, generator=g),
        "text1_ids": t1,
        "text1_mask": m1,
        "text2_ids": t2,
        "text2_mask": m2,
        "replace": torch.tensor(replace),
        "pid": torch.tensor(pids),
    }


def tiny_generator():
    torch.manual_seed(1)
    cfg = GeneratorConfig(
        vocab_size=VOCAB, width=16, layers=1, heads=1, intermediate=32, max_len=16
    )
    return freeze(FixedGenerator(cfg))


def run(model, variant, alpha=0.4, batch=None, generator=None, seed=0):
    cfg = LossConfig(tokens=TOK)
    if generator is None and variant.rtd == "fixed":
        generator = tiny_generator()
    rng = torch.Generator().manual_seed(seed)
    return compute_losses(model, batch or make_batch(), variant, cfg, alpha, generator, rng)


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_variants())
def test_variant_computes_exactly_its_losses(name):
    variant = get_variant(name)
    losses = run(make_model(), variant)
    assert {k for k in losses if k.startswith("loss")} == {*variant.loss_names, "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    heads = {"itm": variant.itm is not None, "prd": variant.prd, "rtd": variant.rtd is not None}
    expected = {f"{kind}_{h}" for h, on in heads.items() if on for kind in ("acc", "base")}
    assert {k for k in losses if not k.startswith("loss")} == expected
    assert all(0.0 <= losses[k].item() <= 1.0 for k in expected)
    assert all(not losses[k].requires_grad for k in expected)
    parts = {k: v for k, v in losses.items() if k != "loss"}
    assert losses["loss"].item() == pytest.approx(total_loss(parts, LossConfig()).item())


def _grad_groups(model):
    """Which parameter groups received a gradient."""
    fusion = model.config.fusion_layer
    groups = {
        "itm_head": model.itm_head,
        "prd_head": model.prd_head,
        "mrtd_head": model.mrtd_head,
        "mlm_transform": model.mlm_head.transform,
        "crossattention": torch.nn.ModuleList(
            layer.crossattention for layer in model.text_encoder.encoder.layer[fusion:]
        ),
        "fusion_layers": torch.nn.ModuleList(model.text_encoder.encoder.layer[fusion:]),
        "text_layers": torch.nn.ModuleList(model.text_encoder.encoder.layer[:fusion]),
        "visual_encoder": model.visual_encoder,
        "projections": torch.nn.ModuleList([model.vision_proj, model.text_proj]),
    }
    out = {}
    for name, module in groups.items():
        grads = [p.grad for p in module.parameters()]
        out[name] = [g is not None and bool(g.abs().sum() > 0) for g in grads]
    out["temp"] = [model.temp.grad is not None]
    return out


@pytest.mark.parametrize("name", list_variants())
def test_gradients_reach_exactly_the_trained_parameters(name):
    variant = get_variant(name)
    model = make_model()
    run(model, variant)["loss"].backward()
    got = _grad_groups(model)
    expected = {
        "itm_head": variant.itm is not None,
        "prd_head": variant.prd,
        "mrtd_head": variant.rtd is not None,
        "mlm_transform": variant.mlm,
        "crossattention": variant.uses_fusion,
        "fusion_layers": variant.uses_fusion,
        "text_layers": True,
        "visual_encoder": True,
        "projections": True,
        "temp": True,
    }
    for group, want in expected.items():
        assert all(x == want for x in got[group]), f"{name}: {group} grads {got[group]}"
    momentum = [
        p
        for n, p in model.named_parameters()
        if n.split(".")[0].endswith("_m") and p.grad is not None
    ]
    assert not momentum


def test_full_rasa_trains_every_online_parameter():
    model = make_model()
    run(model, get_variant("m-rtd"))["loss"].backward()
    online = {n: p for n, p in model.named_parameters() if not n.split(".")[0].endswith("_m")}
    missing = [n for n, p in online.items() if p.grad is None]
    assert not missing


class Spy:
    """Counts calls of model methods (and their ``momentum`` flag / rows)."""

    def __init__(self, model, names):
        self.calls: list[tuple[str, bool, int]] = []
        for name in names:
            orig = getattr(model, name)

            def wrapped(*args, _orig=orig, _name=name, **kw):
                out = _orig(*args, **kw)
                self.calls.append((_name, bool(kw.get("momentum", False)), out.shape[0]))
                return out

            setattr(model, name, wrapped)

    def count(self, name, momentum=None):
        return sum(1 for n, m, _ in self.calls if n == name and (momentum is None or m == momentum))


def test_cl_never_runs_fusion_or_mlm():
    model = make_model()
    spy = Spy(model, ["fuse", "mlm_logits", "encode_text"])
    run(model, get_variant("cl"))
    assert spy.count("fuse") == 0 and spy.count("mlm_logits") == 0
    assert spy.count("encode_text", momentum=False) == 1
    assert spy.count("encode_text", momentum=True) == 1


def test_momentum_text_stack_runs_once_for_mlm_and_m_rtd():
    model = make_model()
    spy = Spy(model, ["fuse", "mlm_logits", "encode_text"])
    run(model, get_variant("m-rtd"))
    # CL features of text2 + ONE pass for the MLM soft labels and the generator together
    assert spy.count("encode_text", momentum=True) == 2
    assert spy.count("fuse", momentum=True) == 1
    # online: text2 for CL + one batched MLM/RTD pass; fusion: RA once, SA once
    assert spy.count("encode_text", momentum=False) == 2
    assert spy.count("fuse", momentum=False) == 2
    rows = sum(r for n, _, r in spy.calls if n == "mlm_logits")
    assert 0 < rows < B * L  # vocabulary logits only at masked positions


def test_official_semantics_computes_full_vocabulary_logits_for_the_quirk():
    model = make_model(official_semantics=True)  # the one switch: the model's config
    spy = Spy(model, ["mlm_logits"])
    run(model, get_variant("mlm"))
    assert (("mlm_logits", False, B * L)) in spy.calls


def test_no_generator_without_rtd_and_fixed_generator_used_by_f_rtd():
    gen = tiny_generator()
    calls = []
    orig = gen.logits_at

    def spy(ids, mask, positions):
        calls.append(positions.shape[0])
        return orig(ids, mask, positions)

    gen.logits_at = spy
    run(make_model(), get_variant("mlm"), generator=gen)
    assert calls == []
    run(make_model(), get_variant("f-rtd"), generator=gen)
    assert len(calls) == 1 and calls[0] > 0
    with pytest.raises(ConfigError, match="generator"):
        compute_losses(
            make_model(), make_batch(), get_variant("f-rtd"), LossConfig(tokens=TOK), 0.4
        )


def test_momentum_update_and_enqueue():
    model = make_model()
    with torch.no_grad():
        for p in model.vision_proj.parameters():
            p.add_(1.0)  # online != momentum
    before_m = model.vision_proj_m.weight.clone()
    online = model.vision_proj.weight.clone()
    model.queue_ptr[0] = 8  # wraps around Q = 10
    run(model, get_variant("cl"))
    m = model.config.momentum
    assert torch.allclose(model.vision_proj_m.weight, m * before_m + (1 - m) * online, atol=1e-6)
    assert model.queue_ptr.item() == (8 + B) % 10
    assert model.idx_queue[0, [8, 9, 0, 1]].tolist() == [0, 0, 1, 2]
    assert (model.idx_queue[0, 2:8] == -100).all()
    assert torch.allclose(model.image_queue.norm(dim=0)[[8, 9, 0, 1]], torch.ones(B), atol=1e-5)


def _itm_always_negative(model):
    with torch.no_grad():
        model.itm_head.weight.zero_()
        model.itm_head.bias.copy_(torch.tensor([10.0, -10.0]))


def test_s_itm_drops_weak_positives_from_itm():
    batch = make_batch(replace=(1, 1, 1, 1))
    model = make_model()
    _itm_always_negative(model)
    s = run(model, get_variant("s-itm"), batch=batch)["loss_itm"]
    model = make_model()
    _itm_always_negative(model)
    p = run(model, get_variant("p-itm"), batch=batch)["loss_itm"]
    assert s.item() < 1e-6  # only negatives, all predicted negative
    assert p.item() == pytest.approx(20 * B / (3 * B), rel=1e-4)  # 4 positives of 12 pairs


def test_all_same_person_batch_has_positives_only():
    batch = make_batch(pids=(3, 3, 3, 3))
    model = make_model()
    _itm_always_negative(model)
    losses = run(model, get_variant("m-rtd"), batch=batch)
    assert losses["loss_itm"].item() == pytest.approx(20.0, rel=1e-4)
    assert torch.isfinite(losses["loss"])


def test_step_is_deterministic_given_rng():
    model = make_model()
    twin = copy.deepcopy(model)
    a = run(model, get_variant("m-rtd"), seed=3)
    b = run(twin, get_variant("m-rtd"), seed=3)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_missing_batch_key_raises():
    batch = make_batch()
    del batch["replace"]
    with pytest.raises(ConfigError, match="replace"):
        run(make_model(), get_variant("cl"), batch=batch)


def test_custom_variant_without_cl_skips_momentum_and_queue():
    model = make_model()
    before = model.queue_ptr.clone()
    losses = run(model, Variant("itm-only", "ITM", "test", itm="itm", cl=False))
    assert {k for k in losses if k.startswith("loss")} == {"loss_itm", "loss"}
    assert torch.equal(model.queue_ptr, before)


# ---------------------------------------------------------------------------------------------
# the fixed generator of f-RTD
# ---------------------------------------------------------------------------------------------
def test_train_generator_learns_saves_and_loads(tmp_path):
    g = torch.Generator().manual_seed(0)
    # captions over a tiny "language": token k+1 always follows token k
    starts = torch.randint(4, VOCAB - 10, (64, 1), generator=g)
    ids = torch.cat(
        [torch.full((64, 1), TOK.cls), starts + torch.arange(8), torch.full((64, 1), TOK.sep)], 1
    )
    mask = torch.ones_like(ids)
    cfg = GeneratorConfig(
        vocab_size=VOCAB, width=32, layers=1, heads=2, intermediate=64, max_len=16
    )
    out = tmp_path / "gen.pt"
    gen = train_generator(
        ids, mask, TOK, VOCAB, out=out, config=cfg, steps=60, lr=3e-3, progress=False
    )
    assert not any(p.requires_grad for p in gen.parameters())
    pos = torch.tensor([[0, 4], [1, 5]])
    masked = ids[:2].clone()
    masked[pos[:, 0], pos[:, 1]] = TOK.mask
    logits = gen.logits_at(masked, mask[:2], pos)
    assert logits.shape == (2, VOCAB)
    acc = (logits.argmax(-1) == ids[pos[:, 0], pos[:, 1]]).float().mean()
    assert acc.item() >= 0.5  # learned the successor rule
    loaded = load_generator(out, vocab_size=VOCAB)
    assert torch.equal(loaded.logits_at(masked, mask[:2], pos), logits)
    with pytest.raises(ConfigError, match="vocabulary"):
        load_generator(out, vocab_size=VOCAB + 1)
    with pytest.raises(ConfigError, match="does not exist"):
        load_generator(tmp_path / "nope.pt")


def test_captions_without_maskable_tokens_give_finite_losses():
    batch = make_batch()
    for key in ("text1", "text2"):
        ids = torch.zeros_like(batch[f"{key}_ids"])
        ids[:, 0], ids[:, 1] = TOK.cls, TOK.sep
        batch[f"{key}_ids"] = ids
        batch[f"{key}_mask"] = (ids != TOK.pad).long()
    model = make_model()
    losses = run(model, get_variant("m-rtd"), batch=batch)
    assert losses["loss_mlm"].item() == 0.0
    assert torch.isfinite(losses["loss_rtd"])  # [SEP] is still a (never replaced) token
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])


class _Cache:
    """A TokenCache stand-in: ids, mask, meta, vocab_size, len."""

    def __init__(self, ids):
        self.ids, self.mask = ids, (ids > 0).astype("uint8")
        self.meta = {"pad_id": 0, "cls_id": 1, "sep_id": 2, "mask_id": 3, "vocab_size": VOCAB}
        self.vocab_size = VOCAB

    def __len__(self):
        return len(self.ids)


def test_train_generator_from_cache_sees_only_the_training_split(tmp_path, monkeypatch):
    import rasa.models.generator as generator_module
    from rasa.data.annotations import Annotations, Record

    ann = Annotations(
        "toy",
        "imgs",
        [
            Record("a.jpg", 0, "train", ("a", "b")),
            Record("b.jpg", 1, "test", ("c",)),
            Record("c.jpg", 2, "train", ("d",)),
        ],
    )
    cache = _Cache(torch.tensor([[1, 5, 2], [1, 6, 2], [1, 7, 2], [1, 8, 2]]).numpy())
    seen = {}

    def fake_train(ids, mask, tokens, vocab_size, out=None, **kw):
        seen.update(ids=ids.tolist(), tokens=tokens, vocab=vocab_size, out=out, kw=kw)
        return "generator"

    monkeypatch.setattr(generator_module, "train_generator", fake_train)
    out = generator_module.train_generator_from_cache(ann, cache, tmp_path / "g.pt", steps=3)
    assert out == "generator"
    assert seen["ids"] == [[1, 5, 2], [1, 6, 2], [1, 8, 2]]  # flat captions 0, 1, 3 (train)
    assert seen["tokens"] == TOK and seen["vocab"] == VOCAB and seen["kw"] == {"steps": 3}
    with pytest.raises(ConfigError, match="rebuild"):
        generator_module.train_generator_from_cache(ann, _Cache(cache.ids[:2]), tmp_path / "h.pt")


def test_load_or_train_generator_trains_once_per_cache(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import rasa.models.generator as generator_module
    from rasa.data.annotations import Annotations, Record

    ann = Annotations(
        "toy", "imgs", [Record(f"{i}.jpg", i // 2, "train", ("a",)) for i in range(4)]
    )
    cache = _Cache(torch.tensor([[1, 5, 6, 2], [1, 6, 7, 2], [1, 7, 8, 2], [1, 8, 9, 2]]).numpy())
    cache.meta["key"] = "k1"
    cfg = SimpleNamespace(tokens=str(tmp_path / "tokens.npz"), model={})
    small = GeneratorConfig(
        vocab_size=VOCAB, width=16, layers=1, heads=1, intermediate=32, max_len=8
    )
    kw = dict(config=small, steps=2, progress=False)
    gen = generator_module.load_or_train_generator(cfg, ann, cache, **kw)
    path = generator_module.default_generator_path(cfg.tokens)
    assert path.is_file() and gen.meta["cache_key"] == "k1"

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(generator_module, "train_generator_from_cache", no_training)
    again = generator_module.load_or_train_generator(cfg, ann, cache, **kw)
    pos = torch.tensor([[0, 1]])
    ids = torch.as_tensor(cache.ids[:1]).long()
    assert torch.equal(again.logits_at(ids, ids > 0, pos), gen.logits_at(ids, ids > 0, pos))
    cache.meta["key"] = "k2"  # another cache at the same path: retrain
    with pytest.raises(AssertionError, match="retrained"):
        generator_module.load_or_train_generator(cfg, ann, cache, **kw)
    user = SimpleNamespace(tokens=cfg.tokens, model={"extra": {"rtd_generator": str(path)}})
    assert generator_module.load_or_train_generator(user, ann, cache).vocab_size == VOCAB


def test_batched_momentum_pass_equals_separate_passes():
    from rasa.engine.step import _stack_logits

    model = make_model().eval()
    batch = make_batch()
    ids, mask = batch["text1_ids"], batch["text1_mask"]
    other = ids.clone()
    other[:, 2] = TOK.mask
    pa, pb = torch.tensor([[0, 1], [2, 3]]), torch.tensor([[1, 2], [3, 2], [0, 2]])
    with torch.no_grad():
        image = model.encode_image(batch["image2"], momentum=True)
        a, b = _stack_logits(model, [(ids, pa), (other, pb)], mask, image, momentum=True)
        (a1,) = _stack_logits(model, [(ids, pa)], mask, image, momentum=True)
        (b1,) = _stack_logits(model, [(other, pb)], mask, image, momentum=True)
        hidden = model.fuse(
            model.encode_text(other, mask, momentum=True), mask, image, momentum=True
        )
        ref = model.mlm_logits(hidden, pb, momentum=True)
    assert torch.allclose(a, a1, atol=1e-5) and torch.allclose(b, b1, atol=1e-5)
    assert torch.allclose(b, ref, atol=1e-5)


def test_head_accuracy_counts_labelled_targets_against_the_commoner_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
    labels = torch.tensor([0, 1, 0, IGNORE_INDEX])  # the last one is not counted
    out = head_accuracy("x", logits, labels)
    assert out["acc_x"].item() == pytest.approx(2 / 3)
    assert out["base_x"].item() == pytest.approx(2 / 3)  # two of the three counted are class 0
    tokens = head_accuracy("t", logits.view(2, 2, 2), labels.view(2, 2))  # [B, L, 2] like RTD
    assert tokens["acc_t"].item() == pytest.approx(2 / 3)
    none = head_accuracy("n", logits, torch.full((4,), IGNORE_INDEX))
    assert torch.isnan(none["acc_n"]) and torch.isnan(none["base_n"])
