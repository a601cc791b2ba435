"""The training loop on a micro model and a small SynthPEDES set: outputs, exact resume, exit 75.

Same seed -> bit-identical metrics on CPU, also across a preemption (SIGTERM -> checkpoint ->
--resume) or a SIGKILL after a periodic checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest
import torch
from conftest import micro_sets, synth_set

from rasa.engine.train import EX_TEMPFAIL, Preempted, alpha_at, lr_factor, train

ROOT = Path(__file__).resolve().parent.parent

TRAIN = [
    "train.batch_size=16", "train.epochs=2", "train.eval_every_epochs=1", "train.num_workers=0",
    "train.log_every_steps=2", "train.ckpt_every_steps=0", "eval.k_test=8", "loss.alpha=0.4",
]  # fmt: skip
MICRO = [*micro_sets(), *TRAIN]  # the micro model (rasa.models.registry) and a short run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """A 30-identity SynthPEDES CUHK-PEDES set, parsed and tokenized (a few seconds)."""
    return synth_set(tmp_path_factory.mktemp("synth"), n_ids=30, vocab=300)


def micro_config(data, variant: str = "m-rtd", extra: tuple[str, ...] = ()):
    return conftest.micro_config(*data, variant, (*TRAIN, *extra))


def deterministic(metrics: dict) -> dict:
    """Metrics without wall-clock timings (and the paths of the run)."""
    out = {k: v for k, v in metrics.items() if k not in ("timings", "timing", "meta")}
    out["last_epoch"] = {k: v for k, v in out["last_epoch"].items() if k != "timing"}
    return out


def test_lr_schedule_and_alpha_warmup():
    f = [lr_factor(s, 10, 2, 0.1) for s in range(10)]
    assert f[0] == 0.5 and f[1] == 1.0  # linear warm-up
    assert (
        f[2] == pytest.approx(1.0)
        and f[-1] > 0.1
        and all(a >= b for a, b in zip(f[1:], f[2:], strict=False))
    )
    assert lr_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert alpha_at(0.4, True, 0, 0, 10) == 0.0
    assert alpha_at(0.4, True, 0, 5, 10) == pytest.approx(0.2)
    assert alpha_at(0.4, True, 1, 0, 10) == 0.4 and alpha_at(0.4, False, 0, 0, 10) == 0.4


def test_train_writes_outputs_and_resumes_exactly_after_sigterm(data, tmp_path, capsys):
    cfg = micro_config(data, extra=("train.batch_size=32",))  # 5 steps per epoch
    ref = train(cfg, tmp_path / "ref", progress=False, dvclive=False)
    out = tmp_path / "ref"
    for name in ("checkpoint_last.pt", "checkpoint_best.pt", "metrics.json", "config.yaml",
                 "train_log.txt", "curve/train.csv", "curve/eval.jsonl"):  # fmt: skip
        assert (out / name).is_file(), name
    written = json.loads((out / "metrics.json").read_text())
    assert written["r1"] == ref["r1"] and "first_stage" in written
    assert len(written["val_curve"]) == 2 and written["selected"]["metric"] == "r1"
    header = (out / "curve/train.csv").read_text().splitlines()[0].split(",")
    for key in ("loss", "loss_cl", "loss_itm", "loss_prd", "loss_mlm", "loss_rtd", "lr",
                "temperature", "acc_itm", "base_itm", "acc_prd", "base_prd", "acc_rtd",
                "base_rtd"):  # fmt: skip
        assert key in header
    # the report reads the heads' accuracy per epoch from the same run directory
    from rasa.report.curves import head_accuracy_by_epoch, head_accuracy_markdown, read_run

    heads = head_accuracy_by_epoch(read_run(out))
    assert set(heads) == {"itm", "prd", "rtd"}
    epochs = [e for e, _, _ in heads["itm"]]
    assert epochs == list(range(1, len(written["val_curve"]) + 1))
    assert all(0 <= a <= 1 and 0.5 <= b <= 1 for rows in heads.values() for _, a, b in rows)
    assert "| m-rtd | RTD | 1 |" in head_accuracy_markdown([read_run(out)])

    # `rasa evaluate` on the selected checkpoint reproduces the test figures of metrics.json.
    from rasa.cli import main

    ann, tok = data
    args = ["evaluate", "--checkpoint", str(out / "checkpoint_best.pt"), "--annotations",
            str(ann), "--tokens", str(tok), "--split", "test", "--k-test", "8", "--out",
            str(tmp_path / "eval.json"), "--topk-out", str(tmp_path / "topk.json")]  # fmt: skip
    assert main(args) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["r1"] == ref["r1"] and again["first_stage"] == ref["first_stage"]
    assert (tmp_path / "topk.json").is_file()
    # ... by reusing the training run's scores of that checkpoint (test_scores.json), which
    # equal a fresh evaluation's; another k scores afresh.
    assert "scored on test by its training run: reused" in capsys.readouterr().out
    reused, topk = again, (tmp_path / "topk.json").read_text()
    (out / "test_scores.json").unlink()
    assert main(args) == 0 and "reused" not in capsys.readouterr().out
    fresh = json.loads((tmp_path / "eval.json").read_text())
    assert {**fresh, "timing": None} == {**reused, "timing": None}
    assert (tmp_path / "topk.json").read_text() == topk

    # Preempted at step 3 (mid epoch 1): checkpoint, Preempted; --resume finishes identically.
    def kill_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted):
        train(cfg, tmp_path / "cut", progress=False, dvclive=False, on_step=kill_at_3)
    state = torch.load(tmp_path / "cut/checkpoint_last.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["step_in_epoch"]) == (3, 0, 3)
    assert not (tmp_path / "cut/metrics.json").exists()
    resumed = train(cfg, tmp_path / "cut", resume=True, progress=False, dvclive=False)
    assert deterministic(resumed) == deterministic(ref)


def test_same_seed_same_metrics_and_grad_accum_runs(data, tmp_path):
    cfg = micro_config(data, "cl", ("train.epochs=1", "train.grad_accum=2"))
    a = train(cfg, tmp_path / "a", progress=False, dvclive=False)
    b = train(cfg, tmp_path / "b", progress=False, dvclive=False)
    assert deterministic(a) == deterministic(b)


def _cli(args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rasa", "train", *args, "--no-progress", "--no-dvclive"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.time() - t0 < timeout, "no checkpoint appeared"
        time.sleep(0.05)


def _cli_args(data, out: Path) -> list[str]:
    ann, tok = data
    sets = [x for s in MICRO if not s.startswith("train.ckpt") for x in ("--set", s)]
    return ["--experiment", "synth-cuhk-tiny-m-rtd", "--annotations", str(ann), "--tokens",
            str(tok), *sets, "--set", "train.ckpt_every_steps=3", "--out", str(out)]  # fmt: skip


@pytest.mark.slow
def test_cli_sigkill_then_resume_is_bit_identical_and_sigterm_exits_75(data, tmp_path):
    ref = _cli(_cli_args(data, tmp_path / "ref"))
    assert ref.wait() == 0, ref.stdout.read().decode()
    # SIGKILL after the first periodic checkpoint, then --resume.
    run = _cli(_cli_args(data, tmp_path / "cut"))
    _wait_for(tmp_path / "cut/checkpoint_last.pt", run)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (tmp_path / "cut/metrics.json").exists()
    resumed = _cli([*_cli_args(data, tmp_path / "cut"), "--resume"])
    assert resumed.wait() == 0, resumed.stdout.read().decode()
    a = json.loads((tmp_path / "ref/metrics.json").read_text())
    b = json.loads((tmp_path / "cut/metrics.json").read_text())
    assert deterministic(a) == deterministic(b)
    # SIGTERM -> checkpoint and exit status 75.
    run = _cli(_cli_args(data, tmp_path / "term"))
    _wait_for(tmp_path / "term/checkpoint_last.pt", run)
    run.send_signal(signal.SIGTERM)
    assert run.wait() == EX_TEMPFAIL, run.stdout.read().decode()
