"""What every training loop does around its steps: the run's state, checkpoints, preemption,
model selection on validation and the final test report (paper §4.1; DESIGN.md "Training").

A :class:`TrainingRun` holds the state a checkpoint saves (model, optimizer, the step's random
generator, step / epoch / position in the epoch, the record of validation results) and does the
bookkeeping between forward passes, so that a loop reads top to bottom::

    run = TrainingRun(cfg, out, model=..., optimizer=..., generator=..., schedule=..., dist=...)
    run.resume(resume)                       # checkpoint_last.pt, if asked and present
    run.open_log(dvclive, summary)
    with PreemptionSignals() as signals:
        while run.epoch < schedule.epochs and run.step < schedule.total_steps:
            run.start_epoch(steps, progress, "epoch 1/10")
            for ...:                         # the optimizer steps of this epoch
                run.schedule.set_lr(run.optimizer, run.step)
                ... forward, losses, backward ...
                run.optimizer_step(cfg.train.clip_grad)
                if run.end_step(losses, signals):   # log, progress, preemption, checkpoint
                    break
            run.end_epoch(ann, cache, signals)      # validate, select, checkpoint, preemption
    metrics = run.final_report(ann, cache, val_note, t_start)

Preemption: SIGTERM or SIGUSR1 (SLURM's warning) -> ``checkpoint_last.pt`` and
:class:`Preempted`, which the CLI turns into exit status 75 (EX_TEMPFAIL, "requeue"); under DDP
the decision is reduced over the ranks, so they all stop at the same step. Model selection uses
the validation split (the official code selects on test); the test split is evaluated once for
the selected checkpoint, and the last epoch's test figures are reported beside it (the same
figures, scored once, when the last epoch is the selected one). The selected checkpoint's test
scores are stored beside it (``test_scores.json``) for ``rasa evaluate`` to reuse
(:mod:`rasa.engine.test_scores`).

Resume: ``checkpoint_last.pt`` also holds the data's fingerprint (the annotation table's sha256
and the token cache's key). ``resume=True`` (``--resume``) continues only when the resolved
config and the data are those of the checkpoint, and otherwise stops naming the changed keys
(:func:`rasa.engine.checkpoint.resume_changes`); ``resume="auto"`` (``--resume=auto``, what
the workflow passes) then moves the old run aside to ``<out>.stale-<time>/`` and starts afresh,
and does the same with a checkpoint it cannot read.
"""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rasa.engine import distributed as D
from rasa.engine.checkpoint import (
    BEST,
    LAST,
    describe_changes,
    load_checkpoint,
    model_mismatch,
    restore,
    resume_changes,
    rng_state,
    save_checkpoint,
    save_model_checkpoint,
    unwrap,
)
from rasa.engine.curves import CurveLogger
from rasa.engine.device import numerics
from rasa.engine.evaluate import evaluate_split
from rasa.engine.metrics import flat_metrics
from rasa.engine.optim import Schedule, alpha_at
from rasa.errors import ConfigError, DataError

EX_TEMPFAIL = 75


class Preempted(Exception):
    """Raised after a SIGTERM/SIGUSR1 checkpoint; the CLI exits with status 75."""


class PreemptionSignals:
    """SIGTERM/SIGUSR1 handlers for the duration of a ``with`` block; they only take note."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> PreemptionSignals:
        self._old = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)

    def _note(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def received(self, device: torch.device | None = None) -> bool:
        """Whether any process got a signal (a collective call under DDP: every rank calls)."""
        flag = torch.tensor(float(self.signal is not None))
        if D.is_initialized():
            flag = D.all_reduce_mean(flag.to(device or "cpu")).cpu()
        return flag.item() > 0


def progress_bar(enabled: bool, total: int, desc: str) -> Any:
    """A tqdm bar of ``total`` steps, or None when disabled (not the main process, tests)."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


class TrainingRun:
    """The state of a run that checkpoints save, and the bookkeeping between steps.

    ``select_name`` is the validation metric of model selection (``first_stage.r1`` for a
    variant without a trained ITM head); ``extra_state()`` returns loop-specific entries that
    every ``checkpoint_last.pt`` also holds (e.g. CMMT's pseudo labels).
    """

    def __init__(
        self,
        cfg: Any,
        out: str | Path,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        schedule: Schedule,
        dist: D.DistInfo | None = None,
        first_stage_selection: bool = False,
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.cfg, self.out = cfg, Path(out)
        self.model, self.optimizer, self.generator = model, optimizer, generator
        self.schedule = schedule
        self.dist = dist or D.DistInfo()
        self.main = self.dist.is_main
        self.first_stage_selection = first_stage_selection
        self.extra_state = extra_state or dict
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.record: dict[str, Any] = {"best": None, "val_curve": [], "train_seconds": 0.0}
        self.log = CurveLogger(self.out, enabled=False, resume=False)
        self.bar: Any = None
        self.t_epoch = time.time()
        self.last_path, self.best_path = self.out / LAST, self.out / BEST

    @property
    def select_name(self) -> str:
        """The metric of model selection as recorded (``r1`` or ``first_stage.r1``)."""
        name = self.cfg.eval.select_metric
        return f"first_stage.{name}" if self.first_stage_selection else name

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are."""
        return next(unwrap(self.model).parameters()).device

    # ---- start ---------------------------------------------------------------------------
    def resume(self, requested: bool | str) -> dict[str, Any] | None:
        """Continue from ``checkpoint_last.pt`` when ``requested`` and present; its dict or None.

        Restores the weights, optimizer, this rank's random states, the position and the record.
        ``requested="auto"``: a checkpoint of another config or data, or one that cannot be
        read, is moved aside with its run (``<out>.stale-<time>/``) and the run starts afresh;
        ``True``: such a checkpoint stops the run with :class:`ConfigError`/:class:`DataError`.
        """
        if not requested:
            return None
        if not self.last_path.is_file():
            if self.main:
                print(f"--resume: no {self.last_path}; starting from scratch")
            return None
        auto = requested == "auto"
        try:
            state = load_checkpoint(self.last_path, map_location=self.device)
        except DataError as exc:
            if not auto:
                raise
            self._move_aside(f"its checkpoint cannot be used ({exc})")
            return None
        saved = {**(state.get("config") or {}), "data": state.get("data")}
        current = {**self.cfg.to_dict(), "data": self.data_fingerprint()}
        changed = resume_changes(saved, current)
        mismatch = [] if changed else model_mismatch(self.model, state["model"])
        if changed or mismatch:
            if changed:
                diff = describe_changes(saved, current, changed)
                what = f"the config or data changed since it was written ({diff})"
            else:
                what = (
                    f"the model's shapes changed since it was written ({'; '.join(mismatch[:3])})"
                )
            if auto:
                self._move_aside(what)
                return None
            raise ConfigError(
                f"{self.last_path}: --resume refused: {what}. Resuming would mix two runs. "
                f"Start afresh: use another --out, move {self.out} away, or pass "
                "--resume=auto (moves the old run aside and starts a fresh one)."
            )
        restore(state, model=self.model, optimizer=self.optimizer, generator=self.generator,
                rank=self.dist.rank)  # fmt: skip
        self.step, self.epoch = state["step"], state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.record = state["record"]
        return state

    def _move_aside(self, why: str) -> None:
        """``--resume=auto`` with an unusable checkpoint: rename ``out`` to
        ``<out>.stale-<time>`` (rank 0, after every rank has read it) and start afresh."""
        D.barrier()
        if self.main:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            stale = self.out.with_name(f"{self.out.name}.stale-{stamp}")
            n = 1
            while stale.exists():
                stale, n = self.out.with_name(f"{self.out.name}.stale-{stamp}-{n}"), n + 1
            self.out.rename(stale)
            print(f"--resume=auto: {self.out} not resumed: {why}. Moved it to {stale}; "
                  "starting afresh.")  # fmt: skip
        D.barrier()

    def data_fingerprint(self) -> dict[str, Any]:
        """What the run trains on, by content: the annotation table's sha256, the cache key."""
        if getattr(self, "_data_fingerprint", None) is None:
            ann, tokens = Path(self.cfg.annotations), Path(self.cfg.tokens)
            sha = hashlib.sha256(ann.read_bytes()).hexdigest() if ann.is_file() else None
            from rasa.data.token_cache import stored_key

            key = stored_key(tokens)  # None when absent or unreadable
            self._data_fingerprint = {"annotations_sha256": sha, "tokens_key": key}
        return self._data_fingerprint

    def open_log(self, dvclive: bool, summary: str) -> CurveLogger:
        """Create ``out`` (rank 0), save ``config.yaml``, start the log with ``summary``."""
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out / "config.yaml")
        self.log = CurveLogger(self.out, enabled=self.main, resume=self.step > 0, dvclive=dvclive)
        resumed = (
            f" Resumed at step {self.step} (epoch {self.epoch}, step {self.step_in_epoch})."
            if self.step
            else ""
        )
        self.log.text(summary + resumed)
        return self.log

    # ---- steps ---------------------------------------------------------------------------
    def alpha(self, alpha: float) -> float:
        """The distillation weight of this step (warmed up over epoch 0 if ``alpha_warmup``)."""
        tc = self.cfg.train
        return alpha_at(
            alpha, tc.alpha_warmup, self.epoch, self.step_in_epoch, self.schedule.steps_per_epoch
        )

    def optimizer_step(self, clip_grad: float | None) -> None:
        """Clip (optional), AdamW step, zero the gradients, advance the position."""
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip_grad)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.step_in_epoch += 1

    def start_epoch(self, steps: int, progress: bool, desc: str) -> None:
        """Start the clock of an epoch of ``steps`` optimizer steps (and its progress bar)."""
        self.bar = progress_bar(progress and self.main, steps, desc)
        self.t_epoch = time.time()

    def end_step(
        self,
        losses: dict[str, float],
        signals: PreemptionSignals,
        on_step: Callable[[int], None] | None = None,
        log_extra: Callable[[], dict[str, float]] | None = None,
    ) -> bool:
        """After an optimizer step: log, progress bar, ``on_step(step)``, preemption, periodic
        checkpoint; True when the step budget is spent.

        ``losses`` (with the total ``loss``) and the lr are logged every ``log_every_steps`` and
        at each epoch's end, with ``log_extra()`` (computed only then). A signal at an epoch's
        last step is handled after that epoch's checkpoint (:meth:`end_epoch`).
        """
        tc = self.cfg.train
        epoch_end = self.step_in_epoch == self.schedule.steps_per_epoch
        if self.main and (self.step % tc.log_every_steps == 0 or epoch_end):
            values = {**losses, "lr": self.optimizer.param_groups[0]["lr"]}
            self.log.step(self.step, {**values, **(log_extra() if log_extra else {})})
        if self.bar is not None:
            rate = self.bar.n * tc.batch_size / max(time.time() - self.t_epoch, 1e-9)
            self.bar.set_postfix(loss=f"{losses['loss']:.3f}", pairs_s=f"{rate:.1f}")
            self.bar.update(1)
        if on_step is not None:
            on_step(self.step)
        done = self.step >= self.schedule.total_steps
        if signals.received(self.device) and not (epoch_end or done):
            self.preempt()
        every = tc.ckpt_every_steps
        if every and self.step % every == 0 and not (epoch_end or done):
            self.save_last()
        return done

    def preempt(self, save: bool = True) -> None:
        """Checkpoint (unless just done), log and raise :class:`Preempted`."""
        if save:
            self.save_last()
        self.log.text(f"signal received: checkpoint at step {self.step}; exit {EX_TEMPFAIL}")
        raise Preempted(f"stopped by signal at step {self.step}")

    # ---- epoch end -----------------------------------------------------------------------
    def end_epoch(self, ann: Any, cache: Any, signals: PreemptionSignals) -> None:
        """Book the epoch's time, move to the next epoch if this one is complete, validate and
        select (rank 0, every ``eval_every_epochs`` and at the end), checkpoint; then stop if
        a signal came (unless the run is over)."""
        if self.bar is not None:
            self.bar.close()
        self.record["train_seconds"] += time.time() - self.t_epoch
        trained_epoch = self.epoch + 1
        if self.step_in_epoch == self.schedule.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
        last = self.epoch >= self.schedule.epochs or self.step >= self.schedule.total_steps
        due = self.epoch % self.cfg.train.eval_every_epochs == 0 or last
        if self.main and due and ann.split("val"):
            self.validate(ann, cache, trained_epoch)
        self.save_last()
        if signals.received(self.device) and not last:
            self.preempt(save=False)

    def validate(self, ann: Any, cache: Any, epoch: int) -> None:
        """Evaluate on val, record it, keep ``checkpoint_best.pt`` if the metric improved."""
        val = self.evaluate(ann, cache, "val")
        # A variant without ITM (cl, CMMT) has an untrained ITM head: select on the first stage.
        stage = val["first_stage"] if self.first_stage_selection else val
        metric = stage[self.cfg.eval.select_metric]
        self.record["val_curve"].append({"epoch": epoch, "step": self.step, **flat_metrics(val)})
        self.log.eval(self.step, "val", val)
        best = self.record["best"]
        if best is None or metric > best["value"]:
            self.record["best"] = {"epoch": epoch, "step": self.step, "value": metric,
                                   "metric": self.select_name}  # fmt: skip
            save_model_checkpoint(self.best_path, model=self.model, config=self.cfg.to_dict(),
                                  record=self.record["best"])  # fmt: skip

    def evaluate(self, ann: Any, cache: Any, split: str) -> dict[str, Any]:
        """The figures of one validation (a loop may add its own, e.g. pre-training's ITM)."""
        return evaluate_split(self.model, ann, self.cfg, cache, split)

    def save_last(self) -> None:
        """``checkpoint_last.pt`` with every rank's random states (a collective under DDP)."""
        states = D.all_gather_object(rng_state(self.generator))
        if self.main:
            s = self.schedule
            save_checkpoint(
                self.last_path, model=self.model, optimizer=self.optimizer, step=self.step,
                epoch=self.epoch, step_in_epoch=self.step_in_epoch, config=self.cfg.to_dict(),
                generator=self.generator, rng_per_rank=states,
                extra={"record": self.record, "schedule": {"total_steps": s.total_steps,
                       "warmup_steps": s.warmup_steps}, "data": self.data_fingerprint(),
                       **self.extra_state()},
            )  # fmt: skip
        D.barrier()

    # ---- end -----------------------------------------------------------------------------
    def final_report(
        self,
        ann: Any,
        cache: Any,
        val_note: str,
        t_start: float,
        extra: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Test once: the selected (best-val) checkpoint and the last epoch; write metrics.json.

        Rank 0 only (others get ``{}``); ``extra`` entries and ``meta`` updates are added to
        metrics.json; closes the log.
        """
        metrics: dict[str, Any] = {}
        if self.main:
            metrics = self._test(ann, cache, val_note, t_start, extra or {}, meta or {})
        self.log.close()
        D.barrier()
        return metrics

    def _test(self, ann, cache, val_note, t_start, extra, meta) -> dict[str, Any]:
        from rasa.io import write_json

        cfg, out, record = self.cfg, self.out, self.record
        t0 = time.time()
        selected = record["best"]
        last_selected = selected is None or selected["step"] == self.step
        if not last_selected:  # the last epoch's weights, reported beside the selected ones
            last_test = evaluate_split(self.model, ann, cfg, cache, "test")
            best = load_checkpoint(self.best_path, map_location="cpu")
            unwrap(self.model).load_state_dict(best["model"])
        scores: dict[str, Any] = {}
        test = evaluate_split(self.model, ann, cfg, cache, "test", scores=scores)
        if last_selected:  # the same weights: scored once
            last_test = test
        if selected is None:
            selected = {"epoch": "last", "note": "no validation split: last epoch"}
        eval_seconds = time.time() - t0
        self._store_test_scores(record["best"] is not None, test, scores)
        metrics = {
            **test,
            "selected": selected,
            "last_epoch": last_test,
            "val_curve": record["val_curve"],
            "validation": val_note,
            "timings": {
                "train_seconds": record["train_seconds"],
                "test_eval_seconds": eval_seconds,
                "wall_seconds_this_process": time.time() - t_start,
            },
        }
        metrics.setdefault("meta", {})
        metrics["meta"].update(
            experiment=cfg.name, dataset=cfg.dataset, backbone=cfg.backbone, variant=cfg.variant,
            seed=cfg.seed, checkpoint=str(out / (BEST if record["best"] else LAST)),
            **numerics(),
        )  # fmt: skip
        metrics.update(extra)
        metrics["meta"].update(meta)
        write_json(out / "metrics.json", metrics)
        self.log.eval(None, "test", test)
        self.log.text("test (selected): " + json.dumps(flat_metrics(test)))
        self.log.text("test (last epoch): " + json.dumps(flat_metrics(last_test)))
        return metrics

    def _store_test_scores(self, best: bool, test: dict[str, Any], scores: dict[str, Any]) -> None:
        """``test_scores.json`` beside the scored checkpoint, for ``rasa evaluate`` to reuse."""
        from rasa.engine.test_scores import evaluation_key, save_scores

        cfg = self.cfg
        ckpt = self.best_path if best else self.last_path
        key = evaluation_key(ckpt, cfg.annotations, cfg.tokens, "test", **scores["settings"])
        save_scores(ckpt, key, test, scores["topk"])
