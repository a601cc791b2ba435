"""`rasa pretrain` (issue #12): ALBEF's objectives on corpus pairs through the training loop,
held-out ITM figures, the pre-trained checkpoint (tokenizer record, weights_only), resume; and
the re-ranking k relative to the gallery."""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from rasa.cli import main
from rasa.engine.evaluate import relative_k

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """params.yaml of the repository with a tiny corpus, the corpus drawn and tokenized."""
    root = tmp_path_factory.mktemp("pretrain")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["root"] = str(root / "data")
    params["pretrain"]["corpus"] = {"ids": {"cuhk": 16, "coco": 24}, "seed": 5, "heldout": 0.1}
    params["pretrain"]["tokenizer"] = "wordpiece:300"
    params["pretrain"]["model"] = {"image_size": [32, 16], "queue_size": 32}
    params["pretrain"]["train"].update(
        epochs=2, batch_size=8, max_steps=8, log_every_steps=1, ckpt_every_steps=0
    )
    params["pretrain"]["eval"] = {"k_test": 8, "k_test_fraction": 0.04, "batch_size": 32}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    corpus = root / "data" / "pretrain-corpus"
    assert main(["data", "corpus", "--params", str(path), "--out", str(corpus)]) == 0
    tokens = corpus / "tokens-wordpiece-300.npz"
    args = ["data", "tokenize", "--annotations", str(corpus / "annotations.json")]
    assert main([*args, "--tokenizer", "wordpiece:300", "--out", str(tokens)]) == 0
    return path, tokens


def _export(folder: Path) -> dict:
    """The export of a pre-training run as one dict (model, model_config, config, record,
    tokenizer), read as fine-tuning reads it."""
    from rasa.models.loaders.common import read_export

    weights, rest = read_export(folder / "model.safetensors")
    return {"model": weights, **rest}


def _pretrain(params: Path, out: Path, *extra: str) -> int:
    argv = ["pretrain", "--params", str(params), "--out", str(out), "--no-progress"]
    return main([*argv, "--no-dvclive", "--device", "cpu", *extra])


def test_pretrain_writes_a_loadable_checkpoint_with_its_tokenizer(setup, tmp_path) -> None:
    params, tokens = setup
    assert _pretrain(params, tmp_path, "--set", "variant=albef") == 0
    state = _export(tmp_path)
    from rasa.data.token_cache import load_cache

    cache = load_cache(tokens)
    record = state["tokenizer"]
    assert record["tokenizer_json"] == cache.meta["tokenizer_json"]
    assert record["spec"] == "wordpiece:300" and len(record["sha256"]) == 64
    assert state["config"]["variant"] == "albef" and state["record"]["step"] == 8
    assert state["model_config"]["vocab_size"] == cache.vocab_size
    # fine-tuning starts from it: a model of ours built from the file has its weights
    from rasa.models import create_model

    model = create_model("tiny", pretrained=str(tmp_path / "model.safetensors"),
                         **{k: state["model_config"][k] for k in ("image_size", "vocab_size",
                                                                  "queue_size")})  # fmt: skip
    for key in ("itm_head.weight", "text_proj.weight", "temp"):
        assert torch.equal(model.state_dict()[key], state["model"][key])
    assert state["model"]["idx_queue"].eq(-100).all()  # corpus ids never match a person

    metrics = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    for key in ("itm_loss", "itm_acc", "itm_acc_pos", "itm_acc_neg", "r1"):
        assert key in metrics
    assert "r1" in metrics["first_stage"] and metrics["at_fraction"]["k"] == 7  # floor 10 > gallery
    pairs = metrics["itm_pairs"]
    assert pairs["hardest_negative"] > pairs["positive"] > 0 and pairs["in_batch_negative"] > 0
    for key in ("itm_loss_hardest", "itm_acc_random", "itm_loss_random"):
        assert 0 <= metrics[key] < 10
    # per-objective curves: ALBEF's three losses, ITC without IMC
    with open(tmp_path / "curve" / "train.csv", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    assert {"loss_cl", "loss_itm", "loss_mlm"} <= set(header) and "loss_prd" not in header


def test_fine_tuning_cache_with_the_corpus_tokenizer_sizes_the_model(setup, tmp_path) -> None:
    """A fine-tuning cache made with `cache:<corpus tokens>` gives the corpus's vocabulary."""
    from rasa.data.token_cache import build_cache, load_cache
    from rasa.engine.build import build_model

    _, tokens = setup
    corpus = load_cache(tokens)
    ann = tokens.parent / "annotations.json"
    cache = build_cache(ann, f"cache:{tokens}", tmp_path / "t.npz", progress=False)
    assert cache.meta["tokenizer_json"] == corpus.meta["tokenizer_json"]
    model = build_model("tiny", {"image_size": [32, 16]}, cache)
    assert model.config.vocab_size == corpus.vocab_size


def test_pretrain_resumes_to_the_same_weights(setup, tmp_path) -> None:
    """Preempted (SIGTERM) after step 2 and resumed: the same weights as an uninterrupted run."""
    from rasa.config import load_params
    from rasa.engine.loop import Preempted
    from rasa.engine.pretrain import pretrain, resolve_pretrain

    params, _ = setup
    cfg = resolve_pretrain(load_params(params), ["train.max_steps=4"])
    kw = {"device": "cpu", "progress": False, "dvclive": False}
    full, part = tmp_path / "full", tmp_path / "part"
    pretrain(cfg, full, **kw)

    def stop(step: int) -> None:
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        pretrain(cfg, part, on_step=stop, **kw)
    assert not (part / "model.safetensors").exists()
    pretrain(cfg, part, resume=True, **kw)
    # the same bytes: weights, metadata and tokenizer (what `dvc repro` must reproduce)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (full / name).read_bytes() == (part / name).read_bytes()


def test_pretrain_without_corpus_says_what_to_run(tmp_path, capsys) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["data"]["root"] = str(tmp_path / "nothing")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert _pretrain(path, tmp_path / "out") == 2
    assert "rasa data corpus" in capsys.readouterr().err


def test_random_negatives_and_itc_without_imc() -> None:
    """The two switches of pre-training recipes: ITM negatives drawn uniformly (never the same
    identity) and ITC alone as the contrastive loss (ALBEF), on a real step."""
    from rasa.engine.step import compute_losses
    from rasa.models import create_model
    from rasa.objectives import LossConfig
    from rasa.variants import get_variant

    torch.manual_seed(0)
    model = create_model("tiny", image_size=(32, 16), vocab_size=64, queue_size=16)
    b = 6
    ids = torch.randint(5, 64, (b, 7))
    ids[:, 0] = 101 % 64
    batch = {
        "image1": torch.randn(b, 3, 32, 16), "image2": torch.randn(b, 3, 32, 16),
        "text1_ids": ids, "text1_mask": torch.ones(b, 7, dtype=torch.long),
        "text2_ids": ids, "text2_mask": torch.ones(b, 7, dtype=torch.long),
        "replace": torch.zeros(b, dtype=torch.long), "pid": torch.arange(b),
    }  # fmt: skip
    cfg = LossConfig(lambda_cl=1.0, p_weak=0.0, itm_negatives="random")
    out = compute_losses(model, batch, get_variant("itc-itm"), cfg, 0.0, None,
                         torch.Generator().manual_seed(0))  # fmt: skip
    assert set(out) == {"loss_cl", "loss_itm", "loss", "acc_itm", "base_itm"}
    assert torch.isfinite(out["loss"])
    with pytest.raises(Exception, match="itm_negatives"):
        LossConfig(itm_negatives="easy")


def test_itm_curriculum_random_then_hard() -> None:
    from rasa.objectives import LossConfig, loss_config_at_epoch

    cfg = LossConfig(itm_random_epochs=2)
    assert [loss_config_at_epoch(cfg, e).itm_negatives for e in range(4)] == [
        "random", "random", "hard", "hard"
    ]  # fmt: skip
    assert loss_config_at_epoch(LossConfig(), 0) is not None
    assert loss_config_at_epoch(LossConfig(), 0).itm_negatives == "hard"
    with pytest.raises(Exception, match="itm_random_epochs"):
        LossConfig(itm_random_epochs=-1)


def test_pretrain_curriculum_runs(setup, tmp_path) -> None:
    """Random negatives in epoch 0, hard ones from epoch 1 (2 epochs of 4 steps each)."""
    params, _ = setup
    sets = ["--set", "loss.itm_random_epochs=1", "--set", "train.max_steps=null"]
    sets += ["--set", "train.epochs=2", "--set", "variant=itc-itm"]
    assert _pretrain(params, tmp_path, *sets) == 0
    state = _export(tmp_path)
    assert state["config"]["loss"]["itm_random_epochs"] == 1
    assert state["record"]["epoch"] == 2


@pytest.mark.parametrize(
    ("gallery", "fraction", "expected"),
    [(3074, 128 / 3074, 128), (3074, 0.04, 123), (69, 0.04, 10), (6, 0.04, 6), (500, 1.0, 500)],
)
def test_relative_k(gallery, fraction, expected) -> None:
    assert relative_k(gallery, fraction) == expected


def test_relative_k_equals_reranking_at_that_k(tmp_path) -> None:
    """The figures at the relative k equal an evaluation re-ranking exactly that many."""
    import numpy as np
    from PIL import Image

    from rasa.data.annotations import Annotations, Record
    from rasa.data.token_cache import build_cache
    from rasa.engine.evaluate import evaluate_model
    from rasa.models import create_model

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    words = "a man woman red blue green shirt bag hat black white".split()
    records = []
    for i in range(30):
        name = f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(
            tmp_path / "imgs" / name
        )
        split = "train" if i < 4 else "test"
        records.append(Record(name, i // 2, split, (" ".join(rng.choice(words, 6)),)))
    ann = Annotations("toy", "imgs", records)
    path = tmp_path / "annotations.json"
    ann.save(path)
    cache = build_cache(path, "wordpiece:80", tmp_path / "t.npz", max_len=12, progress=False)
    torch.manual_seed(0)
    model = create_model("tiny", image_size=(32, 16), vocab_size=cache.vocab_size).eval()
    kw = {"device": "cpu", "progress": False}
    both, _ = evaluate_model(model, ann, path, cache, "test", k=20, k_fraction=0.45, **kw)
    at_12, _ = evaluate_model(model, ann, path, cache, "test", k=12, **kw)
    at_20, _ = evaluate_model(model, ann, path, cache, "test", k=20, **kw)
    assert both["at_fraction"]["k"] == 12 == relative_k(26, 0.45)
    for key in ("r1", "r5", "mAP"):
        assert both["at_fraction"][key] == pytest.approx(at_12[key], abs=1e-9)
        assert both[key] == pytest.approx(at_20[key], abs=1e-9)


def test_fine_tuning_starts_from_the_pretrained_checkpoint(setup, tmp_path) -> None:
    """The whole route of issue #12: `rasa pretrain` -> a fine-tuning set tokenized with the
    corpus tokenizer (`checkpoint:` spec) -> `rasa train --set pretrained=<model.safetensors>`:
    loaded weights at lr, the heads m-rtd adds (PRD, m-RTD) new at lr_new."""
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache

    params, _ = setup
    pre, export = tmp_path / "pre", tmp_path / "export"
    assert _pretrain(params, pre, "--set", "variant=itc-itm", "--export", str(export)) == 0
    assert not (pre / "model.safetensors").exists()
    # the export is a small run folder the report reads: config, curves, held-out metrics
    assert {"model.safetensors", "tokenizer.json", "metrics.json", "config.yaml"} <= {
        p.name for p in export.iterdir()
    }  # fmt: skip
    data = tmp_path / "ft"
    generate("cuhk", n_ids=12, seed=3, out=data / "raw", progress=False)
    parse_to_file("auto", data / "raw", data / "annotations.json")
    spec = f"checkpoint:{export / 'model.safetensors'}"
    build_cache(data / "annotations.json", spec, data / "tokens.npz", progress=False)
    sets = ["model.image_size=[32, 16]", "model.queue_size=32", "train.batch_size=8",
            "train.max_steps=2", "train.epochs=1", "train.lr=1e-4", "train.lr_new=1e-3",
            "train.eval_every_epochs=1", "train.ckpt_every_steps=0", "eval.k_test=4",
            f"tokenizer={spec}", f"pretrained={export / 'model.safetensors'}"]  # fmt: skip
    argv = ["train", "--params", str(params), "--experiment", "synth-cuhk-tiny-m-rtd",
            "--annotations", str(data / "annotations.json"), "--tokens",
            str(data / "tokens.npz"), "--out", str(tmp_path / "run"), "--no-progress",
            "--no-dvclive", "--device", "cpu"]  # fmt: skip
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    log = (tmp_path / "run" / "train_log.txt").read_text(encoding="utf-8")
    new = next(line for line in log.splitlines() if line.strip().startswith("new ("))
    assert "prd_head" in new and "mrtd_head" in new  # the heads m-rtd adds: new, at lr_new
    loaded = next(line for line in log.splitlines() if line.strip().startswith("loaded:"))
    assert "itm_head.weight" in loaded and "text_encoder.encoder" in loaded
    assert "pretrained lr 0.0001" in log and "new lr 0.001" in log
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert len(config["pretrained"]["sha256"]) == 64
    state = torch.load(tmp_path / "run" / "checkpoint_best.pt", weights_only=True)
    assert state["tokenizer"]["sha256"] == _export(export)["tokenizer"]["sha256"]
