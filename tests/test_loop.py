"""The pieces of a training run tested directly: AdamW's parameter groups, the validation
split carved from train identities, and the bookkeeping of :class:`TrainingRun` (steps,
epochs, selection on validation, checkpoints, resume, the test split scored once per reported
checkpoint and stored for ``rasa evaluate``)."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from conftest import micro_config

from rasa.data.annotations import Annotations, Record
from rasa.engine import loop
from rasa.engine.checkpoint import BEST, LAST
from rasa.engine.data_splits import carve_validation
from rasa.engine.loop import PreemptionSignals, TrainingRun
from rasa.engine.optim import Schedule, make_optimizer, param_groups
from rasa.engine.test_scores import SCORES, evaluation_key, file_sha256, load_scores
from rasa.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- param_groups ------------------------------------------------------------------------
def _tc(**kw):
    return SimpleNamespace(**{"lr": 1e-5, "lr_new": 1e-4, "weight_decay": 0.02, **kw})


def test_param_groups_without_a_load_report_train_everything_as_new():
    model = create_model("micro")
    groups = param_groups(model, _tc())
    assert [g["name"] for g in groups] == ["new_no_decay", "new"]
    assert all(g["lr"] == g["base_lr"] == 1e-4 for g in groups)
    assert [g["weight_decay"] for g in groups] == [0.0, 0.02]


def test_param_groups_split_loaded_new_decay_and_frozen():
    model = create_model("micro")
    frozen = model.visual_encoder.patch_embed.proj.weight.requires_grad_(False)
    names = [n for n, _ in model.named_parameters()]
    model.load_report = SimpleNamespace(loaded=[n for n in names if n != "vision_proj.weight"])
    groups = {g["name"]: g for g in param_groups(model, _tc())}
    member = {id(p): name for name, g in groups.items() for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(member) == sum(len(g["params"]) for g in groups.values()) == len(trainable)
    assert id(frozen) not in member  # frozen (and the momentum copy): in no group
    params = dict(model.named_parameters())
    expected = {
        "itm_head.weight": "pretrained",  # loaded: lr, as ALBEF's ITM head in the official code
        "itm_head.bias": "pretrained_no_decay",
        "vision_proj.weight": "new",  # not in the checkpoint
        "text_encoder.encoder.layer.0.attention.self.query.weight": "pretrained",
        "text_encoder.encoder.layer.0.attention.self.query.bias": "pretrained_no_decay",
        "visual_encoder.norm.weight": "pretrained_no_decay",
        "text_encoder.embeddings.LayerNorm.weight": "pretrained_no_decay",
        "temp": "pretrained_no_decay",
    }
    for name, group in expected.items():
        assert member[id(params[name])] == group, name
    assert all((n == "vision_proj.weight") == member[id(p)].startswith("new")
               for n, p in params.items() if p.requires_grad)  # fmt: skip
    assert groups["pretrained"]["lr"] == 1e-5 and groups["new"]["lr"] == 1e-4
    assert groups["pretrained"]["weight_decay"] == 0.02
    assert groups["pretrained_no_decay"]["weight_decay"] == 0.0


# ---- carve_validation --------------------------------------------------------------------
def _ann(splits: dict[str, int]) -> Annotations:
    records, pid = [], 0
    for split, ids in splits.items():
        for _ in range(ids):
            records += [Record(f"{pid}_{i}.png", pid, split, (f"c{pid} {i}",)) for i in range(2)]
            pid += 1
    return Annotations("toy", "imgs", records)


def test_carve_validation_keeps_a_val_split():
    ann = _ann({"train": 10, "val": 2, "test": 2})
    out, note = carve_validation(ann, 0.1)
    assert out is ann and "the dataset's val split" in note


def test_carve_validation_holds_out_whole_train_identities_deterministically():
    ann = _ann({"train": 20, "test": 4})
    out, note = carve_validation(ann, 0.1)
    val = {r.pid for r in out.split("val")}
    assert len(val) == 2 and val <= {r.pid for r in ann.split("train")}
    assert not val & {r.pid for r in out.split("train")}  # whole identities
    assert [r.split for r in out.records if r.pid >= 20] == ["test"] * 8  # test untouched
    assert [(r.image, r.captions) for r in out.records] == [
        (r.image, r.captions) for r in ann.records
    ]
    assert "2 of 20 train identities" in note
    again, _ = carve_validation(replace(ann), 0.1)
    assert {r.pid for r in again.split("val")} == val  # independent of any seed
    none, note = carve_validation(ann, 0.0)
    assert none is ann and "last epoch is reported" in note


# ---- TrainingRun -------------------------------------------------------------------------
class FakeEvaluation:
    """Stands in for ``evaluate_split``: R@1 from a script of values, calls recorded with a
    digest of the weights they saw."""

    def __init__(self, val_r1: list[float]):
        self.val_r1 = list(val_r1)
        self.calls: list[tuple[str, float]] = []

    def __call__(self, model, ann, cfg, cache, split, scores=None):
        weights = float(sum(p.detach().double().sum() for p in model.parameters()))
        self.calls.append((split, weights))
        r1 = self.val_r1.pop(0) if split == "val" else round(weights % 1, 6)
        metrics = {"r1": r1, "r5": 50.0, "first_stage": {"r1": r1}, "timing": {}}
        if scores is not None:
            settings = dict(
                k=8, batch_size=64, dtype="fp32", resize="pad", device=torch.device("cpu")
            )
            scores.update(topk={"split": split, "queries": []}, settings=settings)
        return metrics


@pytest.fixture
def cfg(tmp_path):
    ann, tok = tmp_path / "annotations.json", tmp_path / "tokens.npz"
    ann.write_text("{}")  # the test-score key hashes them; nothing else reads them here
    tok.write_bytes(b"tokens")
    extra = ("train.log_every_steps=1", "train.ckpt_every_steps=3", "train.eval_every_epochs=1")
    return micro_config(ann, tok, "m-rtd", extra)


def make_run(cfg, out, epochs: int = 2, steps: int = 2) -> TrainingRun:
    torch.manual_seed(0)
    model = create_model("micro")
    schedule = Schedule(epochs, steps, epochs * steps, 0, 0.1)
    return TrainingRun(cfg, out, model=model, optimizer=make_optimizer(model, cfg.train),
                       generator=torch.Generator().manual_seed(0), schedule=schedule)  # fmt: skip


def train_run(run: TrainingRun, ann) -> None:
    """The loop of rasa.engine.train without data: a made-up gradient per step."""
    with PreemptionSignals() as signals:
        while run.epoch < run.schedule.epochs and run.step < run.schedule.total_steps:
            run.start_epoch(run.schedule.steps_per_epoch, False, "epoch")
            for _ in range(run.schedule.steps_per_epoch - run.step_in_epoch):
                loss = sum((p.float() ** 2).mean() for p in run.model.parameters())
                loss.backward()
                loss = loss.detach()
                run.optimizer_step(None)
                if run.end_step({"loss": loss.item()}, signals):
                    break
            run.end_epoch(ann, None, signals)


@pytest.mark.parametrize("val_r1, selected_epoch, test_calls", [([10.0, 20.0], 2, 1),
                                                                ([20.0, 10.0], 1, 2)])  # fmt: skip
def test_training_run_selects_on_val_and_scores_test_once_per_checkpoint(
    cfg, tmp_path, monkeypatch, val_r1, selected_epoch, test_calls
):
    fake = FakeEvaluation(val_r1)
    monkeypatch.setattr(loop, "evaluate_split", fake)
    ann = _ann({"train": 4, "val": 2, "test": 2})
    run = make_run(cfg, tmp_path / "run")
    run.open_log(False, "test run")
    train_run(run, ann)
    assert (run.step, run.epoch, run.step_in_epoch) == (4, 2, 0)
    assert [c[0] for c in fake.calls] == ["val", "val"]
    assert run.record["best"]["epoch"] == selected_epoch and run.select_name == "r1"
    metrics = run.final_report(ann, None, "val note", 0.0)
    tests = [w for split, w in fake.calls if split == "test"]
    assert len(tests) == test_calls  # the last epoch selected: its test scores serve both
    assert metrics["selected"]["epoch"] == selected_epoch
    assert (metrics["last_epoch"]["r1"] == metrics["r1"]) == (test_calls == 1)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["meta"]["checkpoint"].endswith(BEST) and written["validation"] == "val note"
    # the selected checkpoint's scores, stored beside it under its key
    key = evaluation_key(tmp_path / "run" / BEST, cfg.annotations, cfg.tokens, "test", k=8,
                         batch_size=64, dtype="fp32", resize="pad", device="cpu")  # fmt: skip
    stored_metrics, topk = load_scores(tmp_path / "run" / BEST, key)
    assert stored_metrics["r1"] == metrics["r1"] and topk["split"] == "test"
    assert load_scores(tmp_path / "run" / BEST, {**key, "k": 16}) is None
    last = {**key, "checkpoint_sha256": file_sha256(tmp_path / "run" / LAST)}
    assert load_scores(tmp_path / "run" / LAST, last) is None  # not the scored checkpoint


def test_training_run_checkpoints_and_resumes_its_position(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "evaluate_split", FakeEvaluation([1.0, 2.0, 3.0]))
    ann = _ann({"train": 4, "val": 2, "test": 2})
    run = make_run(cfg, tmp_path / "run", epochs=3)
    run.open_log(False, "first")
    run.schedule = replace(run.schedule, total_steps=3)  # stop mid-epoch 2 (step 3)
    train_run(run, ann)
    assert (run.step, run.epoch, run.step_in_epoch) == (3, 1, 1)
    again = make_run(cfg, tmp_path / "run", epochs=3)
    state = again.resume(True)
    assert state is not None and (again.step, again.epoch, again.step_in_epoch) == (3, 1, 1)
    assert again.record["val_curve"] == run.record["val_curve"]
    for a, b in zip(again.model.parameters(), run.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert make_run(cfg, tmp_path / "fresh").resume(True) is None  # nothing to resume
    assert make_run(cfg, tmp_path / "run").resume(False) is None


def test_no_validation_split_reports_the_last_epoch_scored_once(cfg, tmp_path, monkeypatch):
    fake = FakeEvaluation([])
    monkeypatch.setattr(loop, "evaluate_split", fake)
    ann = _ann({"train": 4, "test": 2})
    run = make_run(cfg, tmp_path / "run", epochs=1)
    run.open_log(False, "no val")
    train_run(run, ann)
    metrics = run.final_report(ann, None, "none", 0.0)
    assert [c[0] for c in fake.calls] == ["test"]
    assert metrics["selected"]["epoch"] == "last" and metrics["last_epoch"]["r1"] == metrics["r1"]
    assert not (tmp_path / "run" / BEST).exists() and (tmp_path / "run" / SCORES).is_file()
