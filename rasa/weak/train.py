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
split use :func:`rasa.engine.train.carve_validation` (held-out identities: an evaluation split,
as in supervised training). Reuses private helpers of :mod:`rasa.engine.train`.
"""

from __future__ import annotations

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
from rasa.engine.checkpoint import (
    BEST,
    LAST,
    load_checkpoint,
    restore,
    save_checkpoint,
    save_model_checkpoint,
)
from rasa.engine.train import (  # noqa: PLC2701 - private helpers reused on purpose
    CurveLogger,
    _final_report,
    _flat,
    _progress,
    alpha_at,
    build_model,
    carve_validation,
    evaluate_split,
    lr_factor,
    make_loss_config,
    move_to,
    param_groups,
    pick_device,
    seed_everything,
)
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
    temp = model.temp.clamp(*loss_cfg.temp_range)
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
    from rasa.data.annotations import Annotations
    from rasa.data.dataset import TrainDataset, collate
    from rasa.data.token_cache import load_cache
    from rasa.io import write_json

    cc = CMMTConfig.from_any(cmmt if cmmt is not None else getattr(cfg, "cmmt", None))
    out, tc, dev, t_start = Path(out), cfg.train, pick_device(device), time.time()
    ann = Annotations.load(cfg.annotations)
    cache = load_cache(cfg.tokens)
    cache.check_matches(ann, cfg.annotations)
    ann, val_note = carve_validation(ann, tc.val_from_train)
    loss_cfg = make_loss_config(cfg.loss, cache)

    seed_everything(cfg.seed)
    model = build_model(cfg.backbone, cfg.model, cache).to(dev)
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
    steps_per_epoch = D.steps_per_epoch(n, tc.batch_size)
    if steps_per_epoch == 0:
        raise ConfigError(f"{cfg.annotations}: {n} train pairs < train.batch_size {tc.batch_size}.")
    total_steps = tc.epochs * steps_per_epoch
    if tc.max_steps is not None:
        total_steps = min(total_steps, tc.max_steps)
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(model, tc), weight_decay=tc.weight_decay)
    generator = torch.Generator(device=dev).manual_seed(cfg.seed * 1000)

    step, epoch, step_in_epoch = 0, 0, 0
    record: dict[str, Any] = {"best": None, "val_curve": [], "train_seconds": 0.0, "pseudo": []}
    labels: torch.Tensor | None = None
    last_path, best_path = out / LAST, out / BEST
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, map_location=dev)
        restore(state, model=model, optimizer=optimizer, generator=generator)
        step, epoch, step_in_epoch = state["step"], state["epoch"], state["step_in_epoch"]
        record, labels = state["record"], state["pseudo_labels"]
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    write_json(out / "cmmt_config.json", asdict(cc))
    log = CurveLogger(out, enabled=True, resume=resume and step > 0, dvclive=dvclive)
    log.text(
        f"CMMT experiment {cfg.name}: {cfg.dataset} / {cfg.backbone}, seed {cfg.seed}; {n} "
        f"pairs (no identities), {steps_per_epoch} steps/epoch, {total_steps} steps; device "
        f"{dev}; cmmt {asdict(cc)}. {val_note}"
    )

    def checkpoint(path: Path) -> None:
        save_checkpoint(
            path, model=model, optimizer=optimizer, step=step, epoch=epoch,
            step_in_epoch=step_in_epoch, config=cfg.to_dict(), generator=generator,
            extra={"record": record, "pseudo_labels": labels, "cmmt": asdict(cc)},
        )  # fmt: skip

    while epoch < tc.epochs and step < total_steps:
        if epoch < cc.instance_epochs:  # warm-up: every pair its own pseudo identity
            labels = torch.arange(n, device=dev)
        elif labels is None or (
            step_in_epoch == 0 and (epoch - cc.instance_epochs) % cc.recluster_every_epochs == 0
        ):
            t0 = time.time()
            img_f, txt_f, pair_image = extract_features(model, ann, cfg, cache, pairs, cc, dev)
            lab, stats = pseudo_labels(img_f, txt_f, pair_image, cc)
            stats = label_quality(stats, pairs, ann, pair_image)  # true ids: report only
            labels = torch.from_numpy(lab).to(dev)
            record["pseudo"].append({"epoch": epoch + 1, "seconds": time.time() - t0, **stats})
            log.text(f"pseudo labels epoch {epoch + 1}: {stats}")
        pairs.set_epoch(epoch)
        plan = D.micro_batches(n, tc.batch_size, cfg.seed, epoch, start_step=step_in_epoch)
        loader = DataLoader(
            pairs, batch_sampler=[mb for chunks in plan for mb in chunks], collate_fn=collate,
            num_workers=tc.num_workers, generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch),
        )  # fmt: skip
        model.train()
        bar = _progress(progress, len(plan), f"cmmt epoch {epoch + 1}/{tc.epochs}")
        t_epoch = time.time()
        for batch in loader:
            factor = lr_factor(step, total_steps, warmup_steps, tc.min_lr_ratio)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * factor
            alpha = alpha_at(loss_cfg.alpha, tc.alpha_warmup, epoch, step_in_epoch, steps_per_epoch)
            batch = move_to(batch, dev)
            losses = cmmt_losses(model, batch, labels, phrase_ids, cc, loss_cfg, alpha)
            losses["loss"].backward()
            if tc.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step, step_in_epoch = step + 1, step_in_epoch + 1
            values = {k: float(v.detach()) for k, v in losses.items()}
            if step % tc.log_every_steps == 0 or step_in_epoch == steps_per_epoch:
                log.step(step, {**values, "lr": optimizer.param_groups[0]["lr"]})
            if bar is not None:
                bar.set_postfix(loss=f"{values['loss']:.3f}")
                bar.update(1)
            if on_step is not None:
                on_step(step)
            if step >= total_steps:
                break
        if bar is not None:
            bar.close()
        record["train_seconds"] += time.time() - t_epoch
        epoch_for_log = epoch
        if step_in_epoch == steps_per_epoch:
            epoch, step_in_epoch = epoch + 1, 0
        last = epoch >= tc.epochs or step >= total_steps
        if (epoch % tc.eval_every_epochs == 0 or last) and ann.split("val"):
            val = evaluate_split(model, ann, cfg, cache, "val")
            metric = val["first_stage"][cfg.eval.select_metric]  # no ITM training in CMMT
            record["val_curve"].append({"epoch": epoch_for_log + 1, "step": step, **_flat(val)})
            log.eval(step, "val", val)
            if record["best"] is None or metric > record["best"]["value"]:
                record["best"] = {"epoch": epoch_for_log + 1, "step": step, "value": metric,
                                  "metric": f"first_stage.{cfg.eval.select_metric}"}  # fmt: skip
                save_model_checkpoint(
                    best_path, model=model, config=cfg.to_dict(), record=record["best"]
                )
        checkpoint(last_path)

    metrics = _final_report(model, ann, cfg, cache, record, out, val_note, t_start, log)
    metrics["pseudo_labels"] = record["pseudo"]
    metrics["meta"].update(method="cmmt", variant="cmmt")
    write_json(out / "metrics.json", metrics)
    log.close()
    return metrics
