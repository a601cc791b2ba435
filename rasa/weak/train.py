"""CMMT training (weakly supervised text-based person re-id, ICCV 2021) on the RaSa stack.

No identity label is read for training: the data are (image, caption) pairs only
(:class:`PairDataset`, a pid-free view of :class:`rasa.data.dataset.TrainDataset` without weak
positives, which would need identities). The loop is the supervised one (same optimiser groups,
schedule, checkpoints, logs, validation-based selection and metrics.json), with:

0. optionally (``instance_epochs``, for encoders trained from scratch whose first features
   carry no identity structure) a warm-up where every pair is its own pseudo identity;
1. intra-modal self-training (§3.1): every ``recluster_every_epochs`` epochs, features of the
   training images and captions (momentum or online encoders, no grad, batched) are clustered
   per modality by DBSCAN over k-reciprocal Jaccard distances (:mod:`rasa.weak.clustering`);
2. Mutual Pseudo Label Refinement (:mod:`rasa.weak.mplr`) rescues unclustered samples through
   their paired instance;
3. the pseudo identity of each pair (``pair_label``: image / text / intersect; unclustered =
   a class of its own) is the "person id" of RaSa's CL with identity-aware targets
   (:func:`rasa.objectives.contrastive_loss`); the queue stores pair indices and maps them to the
   CURRENT pseudo labels at every step, so re-clustering never leaves stale ids in the queue;
4. the Text-IoU guided CMPM loss and hard-sample mining (:mod:`rasa.weak.losses`).

Per re-clustering the true ids are read, AFTER clustering and only for the report, to give the
adjusted Rand index (metrics.json "pseudo_labels"). One process (no DDP). Datasets without a val
split use :func:`rasa.engine.data_splits.carve_validation` (held-out identities: an evaluation split,
as in supervised training). Run state, checkpoints (which also hold the pseudo labels),
preemption (SIGTERM/SIGUSR1 -> checkpoint, exit 75), model selection and the final report are
those of the supervised loop (:mod:`rasa.engine.loop`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from rasa.config import ExperimentConfig
from rasa.engine import distributed as D
from rasa.engine.build import build_model, load_summary, make_loss_config
from rasa.engine.data_splits import load_training_data
from rasa.engine.device import move_to, pick_device, seed_everything
from rasa.engine.loop import PreemptionSignals, TrainingRun
from rasa.engine.optim import Schedule, make_optimizer
from rasa.errors import ConfigError
from rasa.objectives import IGNORE_INDEX, contrastive_loss
from rasa.weak import clustering, mplr
from rasa.weak.losses import cmpm_textiou_loss, textiou_mining_loss
from rasa.weak.textiou import batch_iou, noun_phrases, phrase_vocabulary


@dataclass
class CMMTConfig:
    """CMMT settings (defaults: SpCL/CMMT clustering values; loss weights 1)."""

    recluster_every_epochs: int = 1
    instance_epochs: int = 0  # first epochs without clustering: each pair its own identity
    momentum_features: bool = (
        False  # online encoders (the EMA lags far behind when training from scratch)
    )
    metric: str = "jaccard"  # or "cosine"
    eps: float = 0.6
    min_samples: int = 4
    k1: int = 30
    k2: int = 6
    mplr: bool = True
    pair_label: str = "image"  # image | text | intersect
    w_cl: float = 1.0
    w_cmpm: float = 1.0
    w_mine: float = 1.0
    mine_topk: int = 4
    pos_iou: float = 0.5
    neg_iou: float = 0.2
    margin: float = 0.2
    cmpm_eps: float = 1e-8  # the ε of q + ε in L_M (the notes' formula)
    feature_batch_size: int = 64

    @classmethod
    def from_any(cls, value: Any) -> CMMTConfig:
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"cmmt: unknown key(s) {unknown}; known: {sorted(known)}.")
        return cls(**value)


class PairDataset(Dataset):
    """(image, caption) pairs WITHOUT identities: ``image1``, ``image2``, ``text1_*``, indices."""

    KEYS = ("image1", "image2", "text1_ids", "text1_mask", "caption_index")

    def __init__(self, base: Any) -> None:
        if base.p_weak != 0:
            raise ConfigError("PairDataset: weak positives need identities; use p_weak = 0.")
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.base[index]
        out = {k: item[k] for k in self.KEYS}
        out["pair_index"] = torch.tensor(index, dtype=torch.int64)
        return out


# ---- pseudo labels -------------------------------------------------------------------------
@torch.no_grad()
def extract_features(model, ann, cfg, cache, pairs: Any, cc: CMMTConfig, dev) -> tuple:
    """Image features [N_img, E] of the train gallery, text features [N_pairs, E], pair -> image."""
    from rasa.data.dataset import ImageDataset

    was_training = model.training
    model.eval()
    mc, m = model.config, cc.momentum_features
    images = ImageDataset(
        ann, cfg.annotations, "train", tuple(mc.image_size), mc.mean, mc.std, cfg.train.resize
    )
    position = {r: p for p, r in enumerate(images.record_indices)}
    pair_image = np.asarray([position[int(r)] for r in pairs.base.record_index], np.int64)
    bs = cc.feature_batch_size
    img_feats = []
    for start in range(0, len(images), bs):
        x = torch.stack([images[i]["image"] for i in range(start, min(start + bs, len(images)))])
        img_feats.append(model.image_embed(model.encode_image(x.to(dev), momentum=m), momentum=m))
    txt_feats = []
    rows = pairs.base.caption_index
    for start in range(0, len(rows), bs):
        r = rows[start : start + bs]
        mask = torch.from_numpy(cache.mask[r].astype(np.int64))
        length = max(int(mask.sum(1).max()), 1)
        ids = torch.from_numpy(cache.ids[r, :length].astype(np.int64)).to(dev)
        tokens = model.encode_text(ids, mask[:, :length].to(dev), momentum=m)
        txt_feats.append(model.text_embed(tokens, momentum=m))
    model.train(was_training)
    return torch.cat(img_feats).float().cpu(), torch.cat(txt_feats).float().cpu(), pair_image


def pseudo_labels(img_feats, txt_feats, pair_image, cc: CMMTConfig) -> tuple[np.ndarray, dict]:
    """Per-pair training labels (unclustered = singleton classes) and the clustering stats."""
    kw = dict(metric=cc.metric, eps=cc.eps, min_samples=cc.min_samples, k1=cc.k1, k2=cc.k2)
    li = clustering.cluster(img_feats, **kw)
    lt = clustering.cluster(txt_feats, **kw)
    stats: dict[str, Any] = {
        "image": clustering.summary(li),
        "text": clustering.summary(lt),
    }
    if cc.mplr:
        ref = mplr.refine(li, lt, pair_image, img_feats, txt_feats)
        li, lt = ref.image_labels, ref.text_labels
        stats["image"]["mplr_rescued"] = ref.rescued_images
        stats["text"]["mplr_rescued"] = ref.rescued_texts
    pair = clustering.pair_labels(li, lt, pair_image, cc.pair_label)
    stats["pair"] = clustering.summary(pair)
    stats["_raw"] = {"image": li, "text": lt, "pair": pair}
    return clustering.with_singletons(pair), stats


def label_quality(stats: dict, pairs: Any, ann: Any, pair_image: np.ndarray) -> dict:
    """ARI of each modality's labels vs the true ids (read here only, for the report)."""
    from sklearn.metrics import adjusted_rand_score

    records = ann.records
    true_pair = np.asarray([records[int(r)].pid for r in pairs.base.record_index])
    true_image = np.empty(int(pair_image.max()) + 1, dtype=true_pair.dtype)
    true_image[pair_image] = true_pair
    raw = stats.pop("_raw")
    truth = {"image": true_image, "text": true_pair, "pair": true_pair}
    for key, labels in raw.items():
        stats[key]["ari"] = float(
            adjusted_rand_score(truth[key], clustering.with_singletons(labels))
        )
    return stats


# ---- one step ------------------------------------------------------------------------------
def cmmt_losses(model, batch, labels: torch.Tensor, phrase_ids, cc: CMMTConfig, loss_cfg, alpha):
    """CL with pseudo identities + Text-IoU CMPM + Text-IoU hard-sample mining; updates EMA/queue."""
    pair = batch["pair_index"].view(-1)
    image_feat = model.image_embed(model.encode_image(batch["image1"]))
    text_feat = model.text_embed(model.encode_text(batch["text1_ids"], batch["text1_mask"]))
    temp = model.temperature(loss_cfg.temp_range)
    with torch.no_grad():
        model.momentum_update()
        image_feat_m = model.image_embed(model.encode_image(batch["image2"], momentum=True), True)
        text_feat_m = model.text_embed(
            model.encode_text(batch["text1_ids"], batch["text1_mask"], momentum=True), True
        )
    pids = labels[pair]
    queued = model.idx_queue.view(-1)  # pair indices (-100 = empty) -> current pseudo labels
    bank = torch.where(
        queued >= 0, labels[queued.clamp_min(0)], torch.full_like(queued, IGNORE_INDEX)
    )
    out: dict[str, torch.Tensor] = {}
    cl = contrastive_loss(
        image_feat, text_feat, image_feat_m, text_feat_m, model.image_queue, model.text_queue,
        pids, bank, temp, alpha,
    )  # fmt: skip
    out["loss_cl"] = cl.loss
    iou = batch_iou([phrase_ids[k] for k in pair.tolist()]).to(text_feat.device)
    scale = 1.0 / temp.detach()
    out["loss_cmpm"] = 0.5 * (
        cmpm_textiou_loss(text_feat, image_feat, iou, scale, cc.cmpm_eps)
        + cmpm_textiou_loss(image_feat, text_feat, iou.T, scale, cc.cmpm_eps)
    )
    mine = dict(topk=cc.mine_topk, pos_iou=cc.pos_iou, neg_iou=cc.neg_iou, margin=cc.margin)
    out["loss_mine"] = (
        textiou_mining_loss(text_feat @ image_feat.T, iou, cross_modal=True, **mine)
        + textiou_mining_loss(image_feat @ image_feat.T, iou, cross_modal=False, **mine)
        + textiou_mining_loss(text_feat @ text_feat.T, iou, cross_modal=False, **mine)
    )
    model.enqueue(image_feat_m, text_feat_m, pair)
    out["loss"] = (
        cc.w_cl * out["loss_cl"] + cc.w_cmpm * out["loss_cmpm"] + cc.w_mine * out["loss_mine"]
    )
    return out


# ---- the loop ------------------------------------------------------------------------------
def train_cmmt(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    dvclive: bool = True,
    cmmt: CMMTConfig | dict | None = None,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` with CMMT into ``out``; returns metrics.json (+ "pseudo_labels").

    ``on_step(step)`` is called after every optimizer step (monitoring, tests).
    """
    from rasa.data.dataset import TrainDataset, collate
    from rasa.io import write_json

    cc = CMMTConfig.from_any(cmmt if cmmt is not None else getattr(cfg, "cmmt", None))
    cfg = dataclasses.replace(cfg, cmmt=asdict(cc))  # config.yaml and checkpoints record them
    tc, dev, t_start = cfg.train, pick_device(device), time.time()
    ann, cache, val_note = load_training_data(cfg)
    loss_cfg = make_loss_config(cfg.loss, cache)

    seed_everything(cfg.seed)
    model = build_model(cfg.backbone, cfg.model, cache, cfg.pretrained).to(dev)
    mc = model.config
    base = TrainDataset(
        ann, cfg.annotations, cache, split="train", image_size=tuple(mc.image_size), p_weak=0.0,
        mean=mc.mean, std=mc.std, resize=tc.resize, seed=cfg.seed,
    )  # fmt: skip
    pairs = PairDataset(base)
    texts = [c for _, _, c in ann.captions("train")]  # pair order: phrase_ids[pair_index]
    assert len(texts) == len(pairs)
    phrase_ids, _ = phrase_vocabulary([noun_phrases(t) for t in texts])
    n = len(pairs)
    schedule = Schedule.from_config(n, tc, cfg.annotations)
    optimizer = make_optimizer(model, tc)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1000)

    labels: torch.Tensor | None = None
    run = TrainingRun(
        cfg, out, model=model, optimizer=optimizer, generator=generator, schedule=schedule,
        first_stage_selection=True,  # no ITM training in CMMT
        extra_state=lambda: {"pseudo_labels": labels, "cmmt": asdict(cc)},
    )  # fmt: skip
    run.record["pseudo"] = []
    state = run.resume(resume)
    if state is not None:
        labels = state["pseudo_labels"]
    log = run.open_log(
        dvclive,
        f"CMMT experiment {cfg.name}: {cfg.dataset} / {cfg.backbone}, seed {cfg.seed}; {n} "
        f"pairs (no identities), {schedule.steps_per_epoch} steps/epoch, "
        f"{schedule.total_steps} steps; device {dev}; cmmt {asdict(cc)}. {val_note}",
    )
    log.text(load_summary(model, optimizer))
    write_json(run.out / "cmmt_config.json", asdict(cc))

    with PreemptionSignals() as signals:
        while run.epoch < tc.epochs and run.step < schedule.total_steps:
            epoch = run.epoch
            if epoch < cc.instance_epochs:  # warm-up: every pair its own pseudo identity
                labels = torch.arange(n, device=dev)
            elif labels is None or (
                run.step_in_epoch == 0
                and (epoch - cc.instance_epochs) % cc.recluster_every_epochs == 0
            ):
                t0 = time.time()
                img_f, txt_f, pair_image = extract_features(model, ann, cfg, cache, pairs, cc, dev)
                lab, stats = pseudo_labels(img_f, txt_f, pair_image, cc)
                stats = label_quality(stats, pairs, ann, pair_image)  # true ids: report only
                labels = torch.from_numpy(lab).to(dev)
                run.record["pseudo"].append(
                    {"epoch": epoch + 1, "seconds": time.time() - t0, **stats}
                )
                log.text(f"pseudo labels epoch {epoch + 1}: {stats}")
            pairs.set_epoch(epoch)
            plan = D.micro_batches(n, tc.batch_size, cfg.seed, epoch, start_step=run.step_in_epoch)
            loader = DataLoader(
                pairs, batch_sampler=[mb for chunks in plan for mb in chunks], collate_fn=collate,
                num_workers=tc.num_workers,
                generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
            )  # fmt: skip
            model.train()
            run.start_epoch(len(plan), progress, f"cmmt epoch {epoch + 1}/{tc.epochs}")
            for batch in loader:
                schedule.set_lr(optimizer, run.step)
                alpha = run.alpha(loss_cfg.alpha)
                batch = move_to(batch, dev)
                losses = cmmt_losses(model, batch, labels, phrase_ids, cc, loss_cfg, alpha)
                losses["loss"].backward()
                run.optimizer_step(tc.clip_grad)
                values = {k: float(v.detach()) for k, v in losses.items()}
                if run.end_step(values, signals, on_step):
                    break
            run.end_epoch(ann, cache, signals)

    return run.final_report(
        ann, cache, val_note, t_start, extra={"pseudo_labels": run.record["pseudo"]},
        meta={"method": "cmmt", "variant": "cmmt"},
    )  # fmt: skip
