"""Pre-training on image–caption pairs with ALBEF's objectives (issue #12; ALBEF, Li et al. 2021).

RaSa fine-tunes ALBEF, whose fusion encoder and ITM head were pre-trained with ITC (momentum
distillation, queues), ITM on in-batch hard negatives and MLM; from scratch, RaSa's fusion
branch never leaves its prior on our synthetic sets (DESIGN.md, "The regime matters").
``rasa pretrain --params params.yaml --out DIR`` runs those objectives on the SynthPEDES corpus
(:mod:`rasa.data.corpus`: pairs only, every image its own identity) with the training loop of
:mod:`rasa.engine.train` (same steps, checkpoints, resume, preemption, curves); the objective
set is a pre-training entry of :data:`rasa.variants.PRETRAINING` (``albef``: ITC + ITM + MLM;
``itc-itm``), settings from the ``pretrain`` section of ``params.yaml`` over the backbone's
(``--set`` as for ``rasa train``). ITM negatives are ALBEF's hard ones or, with
``loss.itm_negatives: random``, drawn uniformly from the batch (``loss.itm_random_epochs``: random
first, hard after); on the SynthPEDES corpus only random ones let ITM leave its prior
(notes/pretrain_recipe.md).

On the held-out pairs of the corpus (its ``val`` split) every validation reports, beside R@1
first stage and ITM re-ranked (and at ``eval.k_test_fraction``), the ITM figures of
:func:`heldout_itm`. The run writes

- into ``--export`` (default: ``--out``; the workflow: ``pretrain.out``, committed), the
  final model as ``model.safetensors`` + ``tokenizer.json`` (the corpus tokenizer's record)
  with its held-out ``metrics.json`` and loss curves (:func:`export_pretrained`): fine-tuning
  starts from it (``backbones.<name>.pretrained: <export>/model.safetensors``) with token
  caches made by its tokenizer (``tokenizer: checkpoint:<export>/model.safetensors``);
- into ``--out``: ``metrics.json`` (the same figures plus timings), ``checkpoint_last.pt``
  (resume), ``checkpoint_best.pt``, ``train_log.txt``, ``curve/`` (per-objective losses),
  ``config.yaml``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rasa.config import (
    EvalConfig,
    ExperimentConfig,
    _fix_floats,
    check_loss_fields,
    dataset_paths,
    parse_set,
    set_dotted,
)
from rasa.data.tokenizer import TOKENIZER_FILE
from rasa.engine.checkpoint import unwrap
from rasa.engine.device import numerics
from rasa.engine.loop import TrainingRun
from rasa.engine.metrics import flat_metrics
from rasa.errors import ConfigError, DataError
from rasa.io import write_json, write_text

CORPUS = "pretrain-corpus"  # the corpus's folder under data.root
EXPORT_WEIGHTS = "model.safetensors"  # with tokenizer.json beside it (export_pretrained)


# ---- configuration -------------------------------------------------------------------------
def corpus_dir(params: dict[str, Any]) -> Path:
    """Where ``rasa data corpus`` writes the corpus: ``{data.root}/pretrain-corpus``."""
    return Path(params["data"]["root"]) / CORPUS


def resolve_pretrain(
    params: dict[str, Any], sets: list[str] | tuple[str, ...] = (), source: str = "params.yaml"
) -> ExperimentConfig:
    """The run config of pre-training: train/loss/eval defaults <- the backbone's <- the
    ``pretrain`` section's ``model``/``train``/``loss``/``eval`` <- ``--set`` items."""
    section = params.get("pretrain")
    if not section:
        raise ConfigError(f"{source}: no `pretrain` section (corpus, backbone, variant).")
    name = section.get("backbone", "tiny")
    if name not in params["backbones"]:
        raise ConfigError(
            f"{source}, key 'pretrain.backbone': {name!r} is not defined under backbones "
            f"(known: {', '.join(sorted(params['backbones']))})."
        )
    backbone = params["backbones"][name]
    doc: dict[str, Any] = {
        "name": "pretrain",
        "dataset": CORPUS,
        "backbone": name,
        "variant": section.get("variant", "albef"),
        "seed": int(section.get("seed", 0)),
        "method": "rasa",
        "model": {**copy.deepcopy(backbone.get("model", {})), **section.get("model", {})},
        "train": {**params["train"], **backbone.get("train", {}), **section.get("train", {})},
        "loss": {**params["loss"], **backbone.get("loss", {}), **section.get("loss", {})},
        "eval": {**asdict(EvalConfig()), **params["eval"], **section.get("eval", {})},
    }
    explicit: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set(item)
        if key in ("tokenizer", "annotations", "tokens"):
            explicit[key] = value
        else:
            set_dotted(doc, key, value, f"--set {item!r}")
    doc["tokenizer"] = explicit.get("tokenizer", section.get("tokenizer", backbone["tokenizer"]))
    doc["data_root"] = params["data"]["root"]
    ann, tok = dataset_paths(doc["data_root"], CORPUS, doc["tokenizer"])
    doc["annotations"] = explicit.get("annotations", ann)
    doc["tokens"] = explicit.get("tokens", tok)
    cfg = ExperimentConfig.from_dict(_fix_floats(doc), f"pretrain section of {source}")
    check_loss_fields(cfg.loss, "pretrain")
    from rasa.variants import PRETRAINING

    if cfg.variant not in PRETRAINING:
        raise ConfigError(
            f"{source}, key 'pretrain.variant': {cfg.variant!r} is not a pre-training objective "
            f"set (known: {', '.join(PRETRAINING)})."
        )
    return cfg


# ---- held-out ITM figures ------------------------------------------------------------------
@torch.no_grad()
def heldout_itm(model: torch.nn.Module, ann: Any, cfg: Any, cache: Any, split: str) -> dict:
    """ITM loss and accuracy on the held-out pairs of ``split``; deterministic.

    Three sets of pairs, each with every caption and its own image as the matches:

    - ``itm_*`` as the training loss draws them: the held-out pairs in batches of
      ``train.batch_size``, shuffled as the training loader shuffles (a fixed generator: in
      table order a batch would hold the corpus's other images of a caption's person, which
      a shuffled training batch almost never does), per caption one image and per image one
      caption of another pair of the batch drawn ∝ softmax(similarity / τ)
      (:func:`sample_hard_negatives`), or uniformly under ``loss.itm_negatives: random``;
    - ``itm_*_hardest``: each caption with its most similar other image of the whole held-out
      gallery and each image with its most similar caption of another image (the negatives
      re-ranking meets; at this ratio, always answering "no match" costs about 0.68);
    - ``itm_*_random``: each caption with one random other image (1 : 1).

    ``itm_acc_pos`` / ``itm_acc_neg``: the in-batch accuracy per class.
    """
    from torch.utils.data import DataLoader

    from rasa.data.dataset import ImageDataset, split_captions
    from rasa.engine.evaluate import embed_images, embed_texts, similarity
    from rasa.engine.ranking import score_pairs
    from rasa.objectives import sample_hard_negatives

    inner = unwrap(model)
    was_training = inner.training
    inner.eval()
    dev = next(inner.parameters()).device
    mc = inner.config
    gallery = ImageDataset(
        ann, cfg.annotations, split, tuple(mc.image_size), mc.mean, mc.std, cfg.train.resize
    )
    queries = split_captions(ann, cfg.annotations, cache, split)
    loader = DataLoader(gallery, batch_size=cfg.eval.batch_size)
    image_tokens, image_feats = embed_images(inner, loader, dev, None, progress=False)
    text_tokens, text_feats = embed_texts(
        inner, queries.ids, queries.mask, cfg.eval.batch_size, dev, None, progress=False
    )
    sims = similarity(text_feats, image_feats, dev)  # [T, G]
    t, g = sims.shape
    own = queries.image_positions
    rng = torch.Generator().manual_seed(0)
    # in-batch negatives, as in training
    temp = float(inner.temperature())
    random = (cfg.loss or {}).get("itm_negatives") == "random"
    batch_txt, batch_img = [], []
    order = torch.randperm(t, generator=rng)
    for s in range(0, t, cfg.train.batch_size):
        rows = order[s : s + cfg.train.batch_size]
        sim = sims[rows][:, own[rows]] / temp  # [b, b] caption x the batch's images
        if random:
            sim = torch.zeros_like(sim)
        neg = sample_hard_negatives(sim, sim.t(), own[rows], rng)
        batch_txt += [rows[neg.image_valid], rows[neg.text_idx[neg.text_valid]]]
        batch_img += [own[rows[neg.image_idx[neg.image_valid]]], own[rows[neg.text_valid]]]
    batch_txt, batch_img = torch.cat(batch_txt), torch.cat(batch_img)
    # hardest in the gallery
    same = queries.pids.view(-1, 1).eq(gallery.pids.view(1, -1))
    hard_img = sims.masked_fill(same, float("-inf")).argmax(1)  # [T]
    hard_txt = sims.t().masked_fill(same.t(), float("-inf")).argmax(1)  # [G]
    # one random other image per caption
    rand_img = (own + torch.randint(1, g, (t,), generator=rng)) % g
    everything = torch.arange(t)
    pair_txt = torch.cat([everything, batch_txt, everything, hard_txt, everything])
    pair_img = torch.cat([own, batch_img, hard_img, torch.arange(g), rand_img])
    logits = score_pairs(inner, text_tokens, queries.mask, pair_txt, pair_img, image_tokens)
    inner.train(was_training)
    pos, logits = logits[:t], logits[t:]
    n_batch, n_hard = batch_txt.shape[0], t + g
    out: dict[str, Any] = {}
    for name, neg in (
        ("", logits[:n_batch]),
        ("_hardest", logits[n_batch : n_batch + n_hard]),
        ("_random", logits[n_batch + n_hard :]),
    ):
        both = torch.cat([pos, neg])
        labels = torch.cat([torch.ones(t), torch.zeros(neg.shape[0])]).long()
        right = both.argmax(1).eq(labels).float()
        out[f"itm_loss{name}"] = float(F.cross_entropy(both, labels))
        out[f"itm_acc{name}"] = float(right.mean())
        if not name:
            out["itm_acc_pos"] = float(right[:t].mean())
            out["itm_acc_neg"] = float(right[t:].mean())
    out["itm_pairs"] = {"positive": t, "in_batch_negative": n_batch, "hardest_negative": n_hard,
                        "random_negative": t}  # fmt: skip
    return out


# ---- the run -------------------------------------------------------------------------------
class PretrainRun(TrainingRun):
    """The training loop's bookkeeping, with the ITM figures at every validation and, at the
    end, the pre-trained checkpoint instead of a test report (the corpus has no test split)."""

    def evaluate(self, ann: Any, cache: Any, split: str) -> dict[str, Any]:
        metrics = super().evaluate(ann, cache, split)
        metrics.update(heldout_itm(self.model, ann, self.cfg, cache, split))
        return metrics

    def __init__(self, *args: Any, export: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.export = Path(export) if export else None  # the final model's folder (else out)

    def final_report(
        self,
        ann: Any,
        cache: Any,
        val_note: str,
        t_start: float,
        extra: dict[str, Any] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Held-out figures of the final model, ``metrics.json`` and the export
        (:func:`export_pretrained`)."""
        metrics: dict[str, Any] = {}
        if self.main:
            t0 = time.time()
            heldout = self.evaluate(ann, cache, "val")
            export = Path(self.export or self.out)
            figures = {k: v for k, v in heldout.items() if k != "timing"}  # deterministic
            metrics = {
                **figures,
                "step": self.step,
                "val_curve": self.record["val_curve"],
                "meta": {
                    "experiment": self.cfg.name, "dataset": self.cfg.dataset,
                    "backbone": self.cfg.backbone, "variant": self.cfg.variant,
                    "seed": self.cfg.seed, "split": "val (held-out corpus pairs)",
                    "checkpoint": str(export / EXPORT_WEIGHTS),
                    **numerics(),
                },
            }  # fmt: skip
            record = {"step": self.step, "epoch": self.epoch, "heldout": flat_metrics(heldout)}
            export_pretrained(export, self.out, self.model, self.cfg, cache, record, metrics)
            timings = {
                "train_seconds": self.record["train_seconds"],
                "heldout_eval_seconds": time.time() - t0,
                "wall_seconds_this_process": time.time() - t_start,
            }
            write_json(self.out / "metrics.json",
                       {**metrics, "timing": heldout.get("timing"), "timings": timings})  # fmt: skip
            self.log.eval(None, "heldout", heldout)
            self.log.text(f"wrote {export / EXPORT_WEIGHTS} and {export / TOKENIZER_FILE}")
        self.log.close()
        return metrics


def export_pretrained(
    export: str | Path,
    run_dir: str | Path,
    model: torch.nn.Module,
    cfg: Any,
    cache: Any,
    record: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """The pre-trained model as a small, self-describing folder that can be committed:
    ``model.safetensors`` (weights; model config, run config, record, thread count and torch
    version as metadata), ``tokenizer.json`` (the corpus tokenizer's record), ``metrics.json``
    (held-out figures and validation curve, no timings), ``config.yaml`` and the loss curves
    (``curve/``): the report reads the folder as a training run. Every
    file is a function of the inputs and the thread count: ``dvc repro`` gives the same bytes.

    The id queue is cleared (-100: never a positive): its entries are corpus image numbers,
    which a fine-tuning set's person indices would otherwise match. The feature queues stay,
    as negatives (ALBEF's fine-tuning likewise starts with pre-trained feature queues and an
    empty id queue).
    """
    import shutil

    from rasa.models.loaders.common import write_export
    from rasa.objectives import IGNORE_INDEX

    export, run_dir = Path(export), Path(run_dir)
    inner = unwrap(model)
    weights = dict(inner.state_dict())
    weights["idx_queue"] = torch.full_like(weights["idx_queue"], IGNORE_INDEX)
    write_export(
        export / EXPORT_WEIGHTS, weights, cache.tokenizer_record(),
        model_config=inner.config.to_dict(), config=cfg.to_dict(), record=record,
        **numerics(),
    )  # fmt: skip
    write_json(export / "metrics.json", metrics)
    if export.resolve() != run_dir.resolve():
        write_text(export / "config.yaml", (run_dir / "config.yaml").read_text(encoding="utf-8"))
        # the files rasa.report.curves reads: dvclive's TSVs, else train.csv / eval.jsonl
        curve, target = run_dir / "curve", export / "curve"
        if target.is_dir():
            shutil.rmtree(target)
        files = [*curve.glob("plots/metrics/**/*.tsv"), curve / "train.csv", curve / "eval.jsonl"]
        for f in sorted(f for f in files if f.is_file()):
            write_text(target / f.relative_to(curve), f.read_text(encoding="utf-8"))


def pretrain(
    cfg: ExperimentConfig,
    out: str | Path,
    *,
    device: str = "auto",
    resume: bool | str = False,
    progress: bool = True,
    dvclive: bool = True,
    on_step: Any = None,
    export: str | Path | None = None,
) -> dict[str, Any]:
    """Pre-train ``cfg`` (from :func:`resolve_pretrain`) into ``out``, the final model into
    ``export`` (default ``out``); the held-out metrics.

    ``on_step(step)`` is called after every optimizer step (monitoring, tests)."""
    from functools import partial

    from rasa.engine.train import train

    for path, step in ((cfg.annotations, "rasa data corpus"), (cfg.tokens, "rasa data tokenize")):
        if not Path(path).is_file():
            raise DataError(
                f"{path}: not found; build the pre-training corpus first (`{step}`; the "
                f"corpus tokenizer is {cfg.tokenizer!r})."
            )
    return train(
        cfg, out, device=device, resume=resume, progress=progress, dvclive=dvclive,
        on_step=on_step, run_class=partial(PretrainRun, export=export),
    )  # fmt: skip
