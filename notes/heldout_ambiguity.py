"""How ambiguous the corpus's held-out pairs are, and what ITM loss that leaves attainable.

`python notes/heldout_ambiguity.py --params params.yaml [--checkpoint FILE]` (prints JSON).

A negative pair (caption of image i, another image j) is *consistent* when image j shows every
attribute the caption mentions with the same canonical value (:func:`attribute_value`) and,
if the caption names the view, the same view: the caption is then as true of j as of i. The
plan of the corpus (:func:`rasa.data.corpus.plan_corpus`, no drawing) holds each caption's
mentions and each image's identity, visible attributes and view. Synonyms ("blue" is also said
of navy and light blue) and unmentioned attributes are ignored, so consistency is strict: the
true share of indistinguishable negatives is at least what this counts.

Without ``--checkpoint``: per held-out caption, how many other held-out images are consistent.
``--train-sample N`` studies N training images the same way (has the head learnt or
memorised?).
With it: the held-out ITM figures exactly as `rasa.engine.pretrain.heldout_itm` computes them
(its in-batch and hardest negatives, the run's corpus and token cache from the checkpoint's
config), split by consistent and inconsistent negatives, and the loss of an ideal head on the
same pairs: probability 0 for inconsistent negatives and, for positives and consistent
negatives, which it cannot tell apart, their share n_pos / (n_pos + n_consistent).
`heldout_itm` on main batches the held-out captions in table order; with PYTHONPATH set to a
checkout of branch explore-j (d0a507e), it shuffles them as training does, and the script
splits that instead.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from rasa.config import load_params
from rasa.data.corpus import CorpusSpec, heldout_mask, plan_corpus
from rasa.data.synth import SynthConfig, _is_weak, _plan
from rasa.data.synth_attrs import attribute_value


def chosen_images(spec: CorpusSpec, n_items: int, train_sample: int) -> np.ndarray:
    """Which corpus images to study: the held-out ones, or (``train_sample`` > 0) that many
    training images drawn with numpy's default_rng(0), to compare what the model has seen."""
    held = heldout_mask(n_items, spec.heldout, spec.seed)
    if not train_sample:
        return held
    chosen = np.zeros(n_items, dtype=bool)
    chosen[np.random.default_rng(0).choice(np.flatnonzero(~held), train_sample, replace=False)] = 1
    return chosen


def heldout_plan(
    spec: CorpusSpec, train_sample: int = 0
) -> tuple[list[dict], list[dict], np.ndarray]:
    """(images, captions, chosen) of the images :func:`chosen_images` picks, in the annotation
    table's order. An image: its identity's attributes, visible keys and view; a caption: its
    image's position and mentions; ``chosen``: the mask over the corpus images."""
    cfg = SynthConfig()
    items = plan_corpus(spec, cfg)["items"]
    chosen = chosen_images(spec, len(items), train_sample)
    plans = {p: _plan(p, spec.ids[p], spec.seed, cfg) for p in spec.ids}
    mentions = {
        (p, c["image"], c["text"]): c["mentions"] for p, plan in plans.items()
        for c in plan["captions"]
    }  # fmt: skip
    images, captions = [], []
    for n, it in enumerate(items):
        if not chosen[n]:
            continue
        img = plans[it["preset"]]["images"][it["index"]]
        images.append({
            "attributes": it["attributes"], "visible": img["visible"],
            "condition": img["condition"], "person": (it["preset"], img["id"]),
        })  # fmt: skip
        for text in it["captions"]:
            captions.append({
                "image": len(images) - 1, "mentions": mentions[(it["preset"], it["index"], text)]
            })  # fmt: skip
    return images, captions, chosen


def consistency(images: list[dict], captions: list[dict]) -> np.ndarray:
    """[captions, images] bool: the caption is as true of the image as of its own."""
    out = np.zeros((len(captions), len(images)), dtype=bool)
    keys = sorted({k for c in captions for k in c["mentions"] if k != "view"})
    values = [{k: attribute_value(img["attributes"], k) for k in keys} for img in images]
    for t, cap in enumerate(captions):
        own = images[cap["image"]]
        want = [(k, values[cap["image"]][k]) for k in cap["mentions"] if k != "view"]
        for g, img in enumerate(images):
            if not _is_weak(cap["mentions"], own, img):
                out[t, g] = all(values[g][k] == v for k, v in want)
    return out


def same_person(images: list[dict], captions: list[dict]) -> np.ndarray:
    """[captions, images] bool: the image shows the caption's person (its own image included)."""
    person = np.array([hash(img["person"]) for img in images])
    own = np.array([c["image"] for c in captions])
    return person[own][:, None] == person[None, :]


def plan_figures(images, captions, ok: np.ndarray, person: np.ndarray, batch: int) -> dict:
    t = len(captions)
    own = np.array([c["image"] for c in captions])
    other = ok.copy()
    other[np.arange(t), own] = False
    n_other = other.sum(1)
    others_of_person = person.copy()
    others_of_person[np.arange(t), own] = False
    # in-batch: captions in table order, `batch` at a time, as heldout_itm draws them
    in_batch = []
    for s in range(0, t, batch):
        rows = np.arange(s, min(s + batch, t))
        imgs = np.unique(own[rows])
        in_batch += [bool(other[r, imgs].any()) for r in rows]
    return {
        "captions": t, "images": len(images),
        "share_with_a_consistent_other_image": round(float((n_other > 0).mean()), 4),
        "consistent_other_images_mean": round(float(n_other.mean()), 3),
        "consistent_other_images_median": float(np.median(n_other)),
        "share_with_another_image_of_the_same_person": round(float(others_of_person.any(1).mean()), 4),
        "share_whose_batch_holds_a_consistent_image": round(float(np.mean(in_batch)), 4),
    }  # fmt: skip


def ideal_loss(n_pos: int, n_consistent: int, n_negatives: int) -> float:
    """Cross-entropy of the ideal head over n_pos positives and n_negatives negatives, of which
    n_consistent cannot be told from a positive."""
    if n_consistent == 0:
        return 0.0
    p = n_pos / (n_pos + n_consistent)
    return -(n_pos * math.log(p) + n_consistent * math.log(1 - p)) / (n_pos + n_negatives)


def breakdown(model, ann, cfg, cache, ok: np.ndarray, person: np.ndarray) -> dict:
    """heldout_itm's figures on ``ann``'s held-out pairs, its in-batch and hardest negatives
    split by consistency (``ok``/``person`` in ``ann``'s order)."""
    import torch
    import torch.nn.functional as F

    import rasa.engine.ranking as ranking
    from rasa.engine.pretrain import heldout_itm

    seen = {}
    score = ranking.score_pairs

    def spy(model, tokens, mask, pair_txt, pair_img, image_tokens):
        seen.update(txt=pair_txt, img=pair_img)
        seen["logits"] = score(model, tokens, mask, pair_txt, pair_img, image_tokens)
        return seen["logits"]

    ranking.score_pairs = spy
    try:
        figures = heldout_itm(model, ann, cfg, cache, "val")
    finally:
        ranking.score_pairs = score
    t, g = ok.shape
    assert int(figures["itm_pairs"]["positive"]) == t, "held-out captions differ from the plan"
    logits, txt, img = seen["logits"], seen["txt"], seen["img"]
    pos = logits[:t]
    n_batch = figures["itm_pairs"]["in_batch_negative"]
    out = {"heldout_itm": {k: round(v, 4) for k, v in figures.items() if k.startswith("itm_loss")}}
    for name, lo, hi in (
        ("in_batch", t, t + n_batch),
        ("hardest", t + n_batch, t + n_batch + t + g),
    ):
        neg_t, neg_i = txt[lo:hi].numpy(), img[lo:hi].numpy()
        cons = torch.from_numpy(ok[neg_t, neg_i])
        same = person[neg_t, neg_i]
        neg = logits[lo:hi]
        both = torch.cat([pos, neg])
        labels = torch.cat([torch.ones(t), torch.zeros(neg.shape[0])]).long()
        each = F.cross_entropy(both, labels, reduction="none")
        n_c = int(cons.sum())
        out[name] = {
            "negatives": int(neg.shape[0]), "consistent": n_c,
            "consistent_share": round(n_c / neg.shape[0], 4),
            "same_person_share": round(float(same.mean()), 4),
            "loss": round(float(each.mean()), 4),
            "loss_positives": round(float(each[:t].mean()), 4),
            "loss_consistent_negatives": round(float(each[t:][cons].mean()), 4) if n_c else None,
            "loss_other_negatives": round(float(each[t:][~cons].mean()), 4),
            "ideal_head_loss": round(ideal_loss(t, n_c, int(neg.shape[0])), 4),
        }  # fmt: skip
    return out


def as_heldout(ann, cache, chosen: np.ndarray):
    """The table restricted to the ``chosen`` images, all in split ``val`` (what heldout_itm
    reads), with the token cache rows to match."""
    from rasa.data.annotations import Annotations, Record
    from rasa.data.token_cache import TokenCache, captions_sha256

    records, rows, k = [], [], 0
    for rec, pick in zip(ann.records, chosen, strict=True):
        if pick:
            records.append(Record(rec.image, rec.pid, "val", rec.captions))
            rows += range(k, k + len(rec.captions))
        k += len(rec.captions)
    view = Annotations(ann.dataset, ann.image_root, records, ann.source)
    meta = {**cache.meta, "captions_sha256": captions_sha256(c for _, _, c in view.captions())}
    return view, TokenCache(cache.ids[rows], cache.mask[rows], meta, cache.path, cache._tokenizer)


def model_figures(checkpoint: str, ok: np.ndarray, person: np.ndarray, chosen: np.ndarray) -> dict:
    import torch

    from rasa.config import ExperimentConfig
    from rasa.data.annotations import Annotations
    from rasa.data.token_cache import load_cache
    from rasa.models import ModelConfig, RaSaModel
    from rasa.models.loaders.common import read_checkpoint

    torch.set_num_threads(2)
    weights, state = read_checkpoint(checkpoint)  # weights_only=True, or safetensors
    cfg = ExperimentConfig.from_dict(state["config"])
    model = RaSaModel(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(weights)
    ann, cache = as_heldout(Annotations.load(cfg.annotations), load_cache(cfg.tokens), chosen)
    return breakdown(model, ann, cfg, cache, ok, person)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", help="a pre-training export or checkpoint_last.pt")
    ap.add_argument("--batch", type=int, default=32, help="heldout_itm's batch (train.batch_size)")
    ap.add_argument("--train-sample", type=int, default=0,
                    help="study this many training images instead of the held-out ones")  # fmt: skip
    args = ap.parse_args()
    spec = CorpusSpec.from_params(load_params(args.params))
    images, captions, chosen = heldout_plan(spec, args.train_sample)
    ok, person = consistency(images, captions), same_person(images, captions)
    out = {"plan": plan_figures(images, captions, ok, person, args.batch)}
    if args.checkpoint:
        out.update(model_figures(args.checkpoint, ok, person, chosen))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
