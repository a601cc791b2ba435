"""Train one experiment: the RaSa recipe of paper Section 4.1, as a linear loop.

Run it as ``rasa train --experiment NAME --out DIR`` (one process) or
``torchrun --nproc_per_node 4 -m rasa train ...`` (DDP: NCCL on GPU, gloo on CPU).

Each optimizer step, in order: lr for this step (linear warm-up, then cosine) -> for each of
``grad_accum`` micro-batches: forward under bf16 autocast (CUDA only) and the variant's losses
(:func:`rasa.engine.step.compute_losses`, which also does the EMA update of the momentum
model and the queue update, in the official order) -> backward -> clip (optional) -> AdamW
step -> log -> periodic checkpoint; at epoch ends: evaluation on the validation split, model
selection on it, checkpoint. The test split is evaluated once, for the selected checkpoint
(and, reported beside it, for the last epoch).

Facts followed (DESIGN.md, "Training facts"): AdamW with weight decay 0.02 (none on biases and
norms), lr 1e-5 for pretrained parts and 1e-4 for new heads, momentum distillation weight
alpha = 0.4 warmed up over the first epoch as in the official code (alpha * min(1, i / steps
per epoch) in epoch 0), global batch 52 (``batch_size``: split over processes and
accumulation steps). Deviation: the official code selects the best epoch on the test split; we
select on validation (for datasets without one, held-out training identities).

Preemption: SIGTERM or SIGUSR1 -> save ``checkpoint_last.pt`` and exit with status 75
(EX_TEMPFAIL), which the SLURM profile treats as "requeue"; ``--resume`` continues exactly.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rasa.config import ExperimentConfig
from rasa.engine import distributed as D
from rasa.engine.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    restore,
    save_checkpoint,
    save_model_checkpoint,
    unwrap,
)
from rasa.errors import ConfigError

EX_TEMPFAIL = 75


class Preempted(Exception):
    """Raised after a SIGTERM/SIGUSR1 checkpoint; the CLI exits with status 75."""


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): warm-up, then cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def alpha_at(alpha: float, warmup: bool, epoch: int, step_in_epoch: int, steps: int) -> float:
    """Momentum-distillation weight; official: ``alpha * min(1, i / len(loader))`` in epoch 0."""
    if warmup and epoch == 0:
        return alpha * min(1.0, step_in_epoch / max(1, steps))
    return alpha


class _Step(torch.nn.Module):
    """Wraps ``compute_losses`` in a ``forward`` so DDP can prepare gradient reduction."""

    def __init__(self, model: torch.nn.Module, variant: Any, loss_cfg: Any, generator: Any) -> None:
        super().__init__()
        self.model = model
        self.variant = variant
        self.loss_cfg = loss_cfg
        self.token_generator = generator  # fixed f-RTD generator (not trained here)

    def forward(self, batch: dict, alpha: float, rng: torch.Generator | None) -> dict:
        from rasa.engine.step import compute_losses

        return compute_losses(
            self.model, batch, self.variant, self.loss_cfg, alpha, self.token_generator, rng
        )


def make_loss_config(loss: dict[str, Any], cache: Any) -> Any:
    """``LossConfig`` from the ``loss`` section, with the special-token ids of the cache."""
    from rasa.objectives import LossConfig, SpecialTokens

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in loss.items()}
    return LossConfig(**kwargs, tokens=SpecialTokens.from_meta(cache.meta))


def fixed_generator(variant: Any, cfg: ExperimentConfig, ann: Any, cache: Any, dev: Any) -> Any:
    """The f-RTD generator (a small MLM trained once on the training captions), else None."""
    if variant.rtd != "fixed":
        return None
    from rasa.models.generator import load_or_train_generator

    return load_or_train_generator(cfg, ann, cache, dev)


def train(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    dvclive: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out``; returns the metrics written to ``out/metrics.json``.

    ``dvclive=False`` writes the curves as CSV/JSONL (no DVC import); ``on_step(step)`` is
    called after every optimizer step (monitoring, tests).
    """
    from rasa.data.annotations import Annotations
    from rasa.data.dataset import TrainDataset, collate
    from rasa.data.token_cache import load_cache
    from rasa.variants import get_variant, natural_weak_rate

    out = Path(out)
    tc = cfg.train
    dev = pick_device(device)
    dist = D.init_distributed(dev.type)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    main = dist.is_main
    t_start = time.time()

    # ---- data -----------------------------------------------------------------------------
    ann = Annotations.load(cfg.annotations)
    cache = load_cache(cfg.tokens)
    cache.check_matches(ann, cfg.annotations)
    ann, val_note = carve_validation(ann, tc.val_from_train)
    variant = get_variant(cfg.variant)
    loss_cfg = make_loss_config(cfg.loss, cache)
    natural = natural_weak_rate(ann.records) if variant.itm == "itm" else None
    p_weak = variant.dataset_p_weak(loss_cfg.p_weak, natural)

    # ---- model and optimizer (same seed on every rank: identical initial weights) ---------
    seed_everything(cfg.seed)
    model = build_model(cfg.backbone, cfg.model, cache).to(dev)
    if dist.rank:  # other dropout draws per rank (rank 0 keeps the one-process stream)
        seed_everything(cfg.seed + dist.rank)
    mc = model.config
    dataset = TrainDataset(
        ann, cfg.annotations, cache, split="train", image_size=tuple(mc.image_size),
        p_weak=p_weak, mean=mc.mean, std=mc.std, resize=tc.resize, seed=cfg.seed,
    )  # fmt: skip
    n = len(dataset)
    steps_per_epoch = D.steps_per_epoch(n, tc.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"{cfg.annotations}: the train split has {n} pairs, fewer than train.batch_size = "
            f"{tc.batch_size}; lower the batch size."
        )
    D.micro_batch_size(tc.batch_size, dist.world_size, tc.grad_accum)  # checks divisibility
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    # f-RTD's fixed generator: trained once per token cache (rank 0 first, the others then
    # read it); its training must not move the global RNG (runs with and without a cached
    # generator file stay identical).
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        if dist.enabled and not main:
            D.barrier()
        token_generator = fixed_generator(variant, cfg, ann, cache, dev)
        if dist.enabled and main:
            D.barrier()
    groups = param_groups(model, tc)
    optimizer = torch.optim.AdamW(groups, weight_decay=tc.weight_decay, betas=(0.9, 0.999))
    generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + dist.rank)

    select_name = cfg.eval.select_metric
    if variant.itm is None:
        select_name = f"first_stage.{select_name}"
    step, epoch, step_in_epoch = 0, 0, 0
    record: dict[str, Any] = {"best": None, "val_curve": [], "train_seconds": 0.0}
    last_path, best_path = out / LAST, out / BEST
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=dev)
        restore(state, model=model, optimizer=optimizer, generator=generator)
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        record = state["record"]
    elif resume:
        if main:
            print(f"--resume: no {last_path}; starting from scratch")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")

    step_module = _Step(model, variant, loss_cfg, token_generator)
    if dist.enabled:
        # Queues and momentum weights stay equal across ranks by construction (gathered
        # enqueue, EMA of synchronised weights): no buffer broadcast every forward.
        ddp = torch.nn.parallel.DistributedDataParallel
        no_sync = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(ddp).parameters
            else {"broadcast_buffers": False}
        )
        step_module = ddp(step_module, find_unused_parameters=True, **no_sync)
    if tc.compile:
        step_module = torch.compile(step_module)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if tc.bf16 and dev.type == "cuda"
        else nullcontext()
    )

    log = CurveLogger(out, enabled=main, resume=resume and step > 0, dvclive=dvclive)
    log.text(
        f"experiment {cfg.name}: {cfg.dataset} / {cfg.backbone} / {cfg.variant}, seed "
        f"{cfg.seed}; {n} training pairs, {steps_per_epoch} steps/epoch, {total_steps} steps; "
        f"world {dist.world_size} x grad_accum {tc.grad_accum}; device {dev}; p_weak "
        f"{p_weak:.3f}; {unwrap(model).num_parameters():,} parameters. {val_note}"
        + (f" Resumed at step {step} (epoch {epoch}, step {step_in_epoch})." if step else "")
    )

    stop = {"signal": None}

    def _on_signal(signum, _frame):  # noqa: ANN001 - signal handler signature
        stop["signal"] = signum

    old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGUSR1)}

    def checkpoint(path: Path) -> None:
        if main:
            save_checkpoint(
                path, model=model, optimizer=optimizer, step=step, epoch=epoch,
                step_in_epoch=step_in_epoch, config=cfg.to_dict(), generator=generator,
                extra={"record": record, "schedule": {"total_steps": total_steps,
                                                      "warmup_steps": warmup_steps}},
            )  # fmt: skip
        D.barrier()

    try:
        while epoch < tc.epochs and step < total_steps:
            dataset.set_epoch(epoch)
            plan = D.micro_batches(
                n, tc.batch_size, cfg.seed, epoch, dist.rank, dist.world_size, tc.grad_accum,
                start_step=step_in_epoch,
            )  # fmt: skip
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=[mb for chunks in plan for mb in chunks],
                collate_fn=collate,
                num_workers=tc.num_workers,
                persistent_workers=False,
                # its own generator: creating the iterator must not draw from the global RNG
                # (a resumed run creates it mid-epoch; dropout would then see other numbers).
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            )
            batches = iter(loader)
            model.train()
            bar = _progress(progress and main, len(plan), f"epoch {epoch + 1}/{tc.epochs}")
            t_epoch = time.time()
            for _ in plan:
                # lr and alpha for this step
                factor = lr_factor(step, total_steps, warmup_steps, tc.min_lr_ratio)
                for g in optimizer.param_groups:
                    g["lr"] = g["base_lr"] * factor
                alpha = alpha_at(
                    loss_cfg.alpha, tc.alpha_warmup, epoch, step_in_epoch, steps_per_epoch
                )
                # forward, losses, backward (accumulated)
                sums: dict[str, float] = {}
                for j in range(tc.grad_accum):
                    batch = move_to(next(batches), dev)
                    sync = nullcontext()
                    if dist.enabled and j < tc.grad_accum - 1:
                        sync = step_module.no_sync()
                    with sync:
                        with autocast:
                            losses = step_module(batch, alpha, generator)
                        (losses["loss"] / tc.grad_accum).backward()
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) / tc.grad_accum
                if tc.clip_grad:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_in_epoch += 1
                # log
                if main and (step % tc.log_every_steps == 0 or step_in_epoch == steps_per_epoch):
                    temp = float(unwrap(model).temperature().detach())
                    log.step(step, {**sums, "lr": optimizer.param_groups[0]["lr"],
                                    "alpha": alpha, "temperature": temp})  # fmt: skip
                if bar is not None:
                    dt = time.time() - t_epoch
                    bar.set_postfix(loss=f"{sums['loss']:.3f}",
                                    pairs_s=f"{bar.n * tc.batch_size / max(dt, 1e-9):.1f}")  # fmt: skip
                    bar.update(1)
                if on_step is not None:
                    on_step(step)
                # periodic checkpoint, preemption, step budget
                flag = torch.tensor(float(stop["signal"] is not None))
                if dist.enabled:
                    flag = D.all_reduce_mean(flag.to(dev)).cpu()
                done = step >= total_steps
                if flag.item() > 0 and not (step_in_epoch == steps_per_epoch or done):
                    checkpoint(last_path)
                    log.text(f"signal received: checkpoint at step {step}; exit {EX_TEMPFAIL}")
                    raise Preempted(f"stopped by signal at step {step}")
                if tc.ckpt_every_steps and step % tc.ckpt_every_steps == 0:
                    if step_in_epoch < steps_per_epoch and not done:
                        checkpoint(last_path)
                if done:
                    break
            if bar is not None:
                bar.close()
            record["train_seconds"] += time.time() - t_epoch
            # epoch end: evaluate on validation, select, checkpoint
            finished_epoch = step_in_epoch == steps_per_epoch
            epoch_for_log = epoch
            if finished_epoch:
                epoch, step_in_epoch = epoch + 1, 0
            last = epoch >= tc.epochs or step >= total_steps
            if main and (epoch % tc.eval_every_epochs == 0 or last) and ann.split("val"):
                val = evaluate_split(model, ann, cfg, cache, "val")
                # A variant without ITM (cl) has an untrained ITM head: select on the first stage.
                stage = val if variant.itm is not None else val["first_stage"]
                metric = stage[cfg.eval.select_metric]
                record["val_curve"].append({"epoch": epoch_for_log + 1, "step": step, **_flat(val)})
                log.eval(step, "val", val)
                if record["best"] is None or metric > record["best"]["value"]:
                    record["best"] = {"epoch": epoch_for_log + 1, "step": step, "value": metric,
                                      "metric": select_name}  # fmt: skip
                    save_model_checkpoint(
                        best_path, model=model, config=cfg.to_dict(), record=record["best"]
                    )
            checkpoint(last_path)
            if stop["signal"] is not None and not last:
                log.text(f"signal received: checkpoint at step {step}; exit {EX_TEMPFAIL}")
                raise Preempted(f"stopped by signal at step {step}")
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)

    metrics: dict[str, Any] = {}
    if main:
        metrics = _final_report(model, ann, cfg, cache, record, out, val_note, t_start, log)
    log.close()
    D.barrier()
    return metrics


def _final_report(model, ann, cfg, cache, record, out, val_note, t_start, log) -> dict[str, Any]:
    """Test once: the selected (best-val) checkpoint and the last epoch; write metrics.json."""
    from rasa.io import write_json

    t0 = time.time()
    last_test = evaluate_split(model, ann, cfg, cache, "test")
    selected = record["best"]
    if selected is not None:
        best = load_checkpoint(out / BEST, map_location="cpu")
        unwrap(model).load_state_dict(best["model"])
        test = evaluate_split(model, ann, cfg, cache, "test")
    else:
        test = last_test
        selected = {"epoch": "last", "note": "no validation split: last epoch"}
    eval_seconds = time.time() - t0
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
    )  # fmt: skip
    write_json(out / "metrics.json", metrics)
    log.eval(None, "test", test)
    log.text("test (selected): " + json.dumps(_flat(test)))
    log.text("test (last epoch): " + json.dumps(_flat(last_test)))
    return metrics


def evaluate_split(model, ann, cfg: ExperimentConfig, cache, split: str) -> dict[str, Any]:
    """Two-stage retrieval metrics of ``model`` on ``split`` (:mod:`rasa.engine.evaluate`).

    Evaluation timings go to ``metrics["timing"]``; everything else is deterministic.
    """
    from rasa.engine.evaluate import evaluate_model, rerank_k

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    dev = next(inner.parameters()).device
    dtype = "bf16" if cfg.train.bf16 and dev.type == "cuda" else "fp32"
    with torch.no_grad():
        metrics, _ = evaluate_model(
            inner, ann, cfg.annotations, cache, split, k=rerank_k(cfg.variant, cfg.eval.k_test),
            batch_size=cfg.eval.batch_size, device=dev, dtype=dtype, resize=cfg.train.resize,
            progress=False,
        )  # fmt: skip
    inner.train(was_training)
    return metrics


def _flat(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("r1", "r5", "r10", "mAP", "mINP", "r_mean")
    out = {k: m[k] for k in keys if k in m}
    fs = m.get("first_stage") or {}
    out.update({f"first_stage_{k}": fs[k] for k in keys if k in fs})
    return out


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


# ---- helpers -----------------------------------------------------------------------------
def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine.")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()
    }


def build_model(backbone: str, overrides: dict[str, Any], cache: Any) -> torch.nn.Module:
    """``create_model`` with the vocabulary of the token cache for tokenizers we train.

    A ``wordpiece:N`` cache has its own vocabulary: the (from-scratch) text embedding takes its
    size and pad id. A pretrained vocabulary (``minilm``, ``bert:DIR``) must fit the model's.
    """
    from rasa.models import create_model

    kwargs = dict(overrides)
    spec = str(cache.meta.get("spec", ""))
    if spec.startswith("wordpiece"):
        kwargs.setdefault("vocab_size", cache.vocab_size)
        kwargs.setdefault("pad_token_id", cache.pad_id)
    model = create_model(backbone, **kwargs)
    if cache.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"token cache {cache.path}: vocabulary of {cache.vocab_size} tokens ({spec}) does "
            f"not fit backbone {backbone!r} ({model.config.vocab_size} embeddings); use the "
            "backbone's tokenizer (backbones.<name>.tokenizer in params.yaml)."
        )
    return model


NEW_HEADS = ("itm_head", "prd_head", "mrtd_head")


def param_groups(model: torch.nn.Module, tc: Any) -> list[dict[str, Any]]:
    """AdamW groups: pretrained vs new (lr vs lr_new) x decay vs no decay (biases, norms).

    New = the ITM/PRD/mRTD heads plus every tensor the backbone loader reports as new
    (``model.load_report.new``); a model built without loading anything is all new.
    """
    report = getattr(model, "load_report", None)
    loaded = set(report.loaded) if report is not None else set()
    buckets: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        new = name.startswith(NEW_HEADS) or name not in loaded
        decay = p.ndim >= 2 and "norm" not in name.lower() and not name.endswith("temp")
        buckets.setdefault((new, decay), []).append(p)
    groups = []
    for (new, decay), params in sorted(buckets.items()):
        lr = tc.lr_new if new else tc.lr
        groups.append({
            "params": params, "lr": lr, "base_lr": lr,
            "weight_decay": tc.weight_decay if decay else 0.0,
            "name": f"{'new' if new else 'pretrained'}{'' if decay else '_no_decay'}",
        })  # fmt: skip
    return groups


def carve_validation(ann: Any, fraction: float) -> tuple[Any, str]:
    """Datasets without a val split (ICFG-PEDES): hold out train identities for validation.

    Deterministic and independent of the experiment seed: ``round(fraction * ids)`` identities
    drawn with ``numpy.random.default_rng(0)`` from the sorted train ids are relabelled "val".
    Caption order is unchanged, so the token cache still matches.
    """
    from dataclasses import replace

    if ann.split("val"):
        return ann, "Validation: the dataset's val split."
    pids = sorted({r.pid for r in ann.split("train")})
    n_val = round(fraction * len(pids))
    if n_val == 0:
        return ann, "No val split and val_from_train = 0: the last epoch is reported."
    held = set(np.random.default_rng(0).choice(pids, size=n_val, replace=False).tolist())
    records = [
        replace(r, split="val") if r.split == "train" and r.pid in held else r for r in ann.records
    ]
    note = (
        f"Validation: the dataset has no val split; {n_val} of {len(pids)} train identities "
        f"(fraction {fraction}, rng seed 0) are held out as val and not trained on."
    )
    return replace(ann, records=records), note


class CurveLogger:
    """Readable ``train_log.txt`` plus per-step curves (dvclive in ``curve/``; rank 0 only).

    Without dvclive, curves go to ``curve/train.csv`` / ``curve/eval.jsonl`` instead.
    The log is appended line by line (a stream, not a result file).
    """

    def __init__(self, out: Path, enabled: bool, resume: bool, dvclive: bool = True) -> None:
        self.enabled = enabled
        self.live = None
        self.csv_header: list[str] | None = None
        if not enabled:
            return
        self.out = out
        self.log_path = out / "train_log.txt"
        if not resume:
            self.log_path.write_text("", encoding="utf-8")
        try:
            if not dvclive:
                raise RuntimeError("disabled by the caller")
            from dvclive import Live

            # dvclive runs `dvc init` in the enclosing git repository when it is no DVC repo.
            self.live = Live(str(out / "curve"), resume=resume, save_dvc_exp=False, dvcyaml=False)
        except Exception as exc:  # noqa: BLE001 - any dvclive failure falls back to CSV
            self.text(f"dvclive unavailable ({type(exc).__name__}: {exc}); curves as CSV/JSONL")
            (out / "curve").mkdir(parents=True, exist_ok=True)

    def text(self, line: str) -> None:
        if not self.enabled:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(f"{stamp} {line}\n")

    def step(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.text(f"step {step} " + " ".join(f"{k}={v:.5g}" for k, v in values.items()))
        if self.live is not None:
            self.live.step = step
            for k, v in values.items():
                self.live.log_metric(f"train/{k}", v)
            self.live.next_step()
            return
        path = self.out / "curve" / "train.csv"
        if self.csv_header is None:
            self.csv_header = ["step", *values]
            if not path.exists():
                path.write_text(",".join(self.csv_header) + "\n", encoding="utf-8")
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(",".join(str(x) for x in [step, *values.values()]) + "\n")

    def eval(self, step: int | None, split: str, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        flat = _flat(metrics)
        self.text(f"eval {split} step {step}: " + json.dumps(flat))
        if self.live is not None and step is not None:
            self.live.step = step
            for k, v in flat.items():
                self.live.log_metric(f"{split}/{k}", v)
            self.live.next_step()
        elif step is not None:
            with open(self.out / "curve" / "eval.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"step": step, "split": split, **flat}) + "\n")

    def close(self) -> None:
        if self.live is not None:
            self.live.end()
