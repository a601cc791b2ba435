"""Train one experiment: the RaSa recipe of paper Section 4.1, as a linear loop.

Run it as ``rasa train --experiment NAME --out DIR`` (one process) or
``torchrun --nproc_per_node 4 -m rasa train ...`` (DDP: NCCL on GPU, gloo on CPU).

Each optimizer step, in order: lr for this step (linear warm-up, then cosine) -> for each of
``grad_accum`` micro-batches: forward under bf16 autocast (``train.bf16``: true = on CUDA,
``always`` = on a CPU too; :mod:`rasa.engine.precision`) and the variant's losses
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
(EX_TEMPFAIL), which the SLURM profile treats as "requeue"; ``--resume`` continues exactly (under
DDP too: every rank's random states are saved and restored). The bookkeeping shared with the
CMMT loop (:mod:`rasa.weak.train`) lives in :mod:`rasa.engine.loop` (run state, checkpoints,
preemption, selection, final report), :mod:`rasa.engine.device` (device, seeds),
:mod:`rasa.engine.build` (model, weights, losses), :mod:`rasa.engine.optim` (optimizer groups,
schedule), :mod:`rasa.engine.data_splits` (data, validation split) and
:mod:`rasa.engine.evaluate` (evaluation).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from rasa.config import ExperimentConfig
from rasa.engine import distributed as D
from rasa.engine.build import build_model, load_summary, make_loss_config
from rasa.engine.checkpoint import unwrap
from rasa.engine.data_splits import load_training_data
from rasa.engine.device import move_to, pick_device, seed_everything
from rasa.engine.loop import EX_TEMPFAIL, Preempted, PreemptionSignals, TrainingRun
from rasa.engine.optim import Schedule, alpha_at, lr_factor, make_optimizer
from rasa.engine.precision import autocast, autocast_dtype
from rasa.objectives import loss_config_at_epoch

# EX_TEMPFAIL, Preempted, alpha_at and lr_factor are part of this module's interface.
__all__ = ["EX_TEMPFAIL", "Preempted", "StepModule", "alpha_at", "fixed_generator", "lr_factor",
           "train"]  # fmt: skip


class StepModule(torch.nn.Module):
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


def fixed_generator(variant: Any, cfg: ExperimentConfig, ann: Any, cache: Any, dev: Any) -> Any:
    """The f-RTD generator (a small MLM trained once on the training captions), else None."""
    if not variant.needs_generator:
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
    run_class: type[TrainingRun] = TrainingRun,
) -> dict[str, Any]:
    """Train ``cfg`` into ``out``; returns the metrics written to ``out/metrics.json``.

    ``dvclive=False`` writes the curves as CSV/JSONL (no DVC import); ``on_step(step)`` is
    called after every optimizer step (monitoring, tests). ``run_class`` does the bookkeeping
    (validation figures, final report): pre-training (:mod:`rasa.engine.pretrain`) passes its
    own.
    """
    from rasa.data.dataset import TrainDataset, collate
    from rasa.variants import get_variant, natural_weak_rate

    tc = cfg.train
    dev = pick_device(device)
    dist = D.init_distributed(dev.type)
    if dev.type == "cuda" and dist.world_size > 1:
        dev = torch.device("cuda", dist.local_rank)
    t_start = time.time()

    # ---- data -----------------------------------------------------------------------------
    ann, cache, val_note = load_training_data(cfg)
    variant = get_variant(cfg.variant)
    loss_cfg = make_loss_config(cfg.loss, cache)
    natural = natural_weak_rate(ann.records) if variant.itm == "itm" else None
    p_weak = variant.dataset_p_weak(loss_cfg.p_weak, natural)

    # ---- model and optimizer (same seed on every rank: identical initial weights) ---------
    seed_everything(cfg.seed)
    model = build_model(cfg.backbone, cfg.model, cache, cfg.pretrained).to(dev)
    if dist.rank:  # other dropout draws per rank (rank 0 keeps the one-process stream)
        seed_everything(cfg.seed + dist.rank)
    mc = model.config
    dataset = TrainDataset(
        ann, cfg.annotations, cache, split="train", image_size=tuple(mc.image_size),
        p_weak=p_weak, mean=mc.mean, std=mc.std, resize=tc.resize, seed=cfg.seed,
    )  # fmt: skip
    n = len(dataset)
    schedule = Schedule.from_config(n, tc, cfg.annotations)
    D.micro_batch_size(tc.batch_size, dist.world_size, tc.grad_accum)  # checks divisibility
    # f-RTD's fixed generator: trained once per token cache (rank 0 first, the others then
    # read it); its training must not move the global RNG (runs with and without a cached
    # generator file stay identical).
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        if dist.enabled and not dist.is_main:
            D.barrier()
        token_generator = fixed_generator(variant, cfg, ann, cache, dev)
        if dist.enabled and dist.is_main:
            D.barrier()
    optimizer = make_optimizer(model, tc)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1000 + dist.rank)

    run = run_class(
        cfg, out, model=model, optimizer=optimizer, generator=generator, schedule=schedule,
        dist=dist, first_stage_selection=variant.itm is None,
    )  # fmt: skip
    run.resume(resume)
    run.open_log(
        dvclive,
        f"experiment {cfg.name}: {cfg.dataset} / {cfg.backbone} / {cfg.variant}, seed "
        f"{cfg.seed}; {n} training pairs, {schedule.steps_per_epoch} steps/epoch, "
        f"{schedule.total_steps} steps; world {dist.world_size} x grad_accum {tc.grad_accum}; "
        f"device {dev}; p_weak {p_weak:.3f}; {unwrap(model).num_parameters():,} parameters. "
        f"{val_note}",
    )
    run.log.text(load_summary(model, optimizer))

    step_module = inner_step = StepModule(model, variant, loss_cfg, token_generator)
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
    amp = autocast_dtype(tc.bf16, dev)  # train.bf16: true = on CUDA, always = on a CPU too

    def logged() -> dict[str, float]:  # curves beside the losses, on logged steps only
        temp = unwrap(model).temperature(loss_cfg.temp_range)
        return {"alpha": alpha, "temperature": float(temp.detach())}

    with PreemptionSignals() as signals:
        while run.epoch < tc.epochs and run.step < schedule.total_steps:
            dataset.set_epoch(run.epoch)
            inner_step.loss_cfg = loss_config_at_epoch(loss_cfg, run.epoch)  # ITM curriculum
            plan = D.micro_batches(
                n, tc.batch_size, cfg.seed, run.epoch, dist.rank, dist.world_size,
                tc.grad_accum, start_step=run.step_in_epoch,
            )  # fmt: skip
            loader = torch.utils.data.DataLoader(
                dataset,
                batch_sampler=[mb for chunks in plan for mb in chunks],
                collate_fn=collate,
                num_workers=tc.num_workers,
                persistent_workers=False,
                # its own generator: creating the iterator must not draw from the global RNG
                # (a resumed run creates it mid-epoch; dropout would then see other numbers).
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + run.epoch),
            )
            batches = iter(loader)
            model.train()
            run.start_epoch(len(plan), progress, f"epoch {run.epoch + 1}/{tc.epochs}")
            for _ in plan:
                # lr and alpha for this step
                schedule.set_lr(optimizer, run.step)
                alpha = run.alpha(loss_cfg.alpha)
                # forward, losses, backward (accumulated)
                sums: dict[str, float] = {}
                for j in range(tc.grad_accum):
                    batch = move_to(next(batches), dev)
                    sync = nullcontext()
                    if dist.enabled and j < tc.grad_accum - 1:
                        sync = step_module.no_sync()
                    with sync:
                        with autocast(dev, amp):
                            losses = step_module(batch, alpha, generator)
                        (losses["loss"] / tc.grad_accum).backward()
                    for k, v in losses.items():
                        sums[k] = sums.get(k, 0.0) + float(v.detach()) / tc.grad_accum
                run.optimizer_step(tc.clip_grad)
                # log, progress, preemption, periodic checkpoint, step budget
                if run.end_step(sums, signals, on_step, logged):
                    break
            # epoch end: evaluate on validation, select, checkpoint
            run.end_epoch(ann, cache, signals)

    return run.final_report(ann, cache, val_note, t_start)
