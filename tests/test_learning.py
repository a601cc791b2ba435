"""The `tiny` backbone learns from scratch on SynthPEDES: R@1 well above chance on unseen people.

What tiny needs (measured; DESIGN.md warns the official recipe stays at chance at this scale):
init std 0.1 (the `tiny` default), one lr of 1e-3 for every parameter, no momentum
distillation (alpha 0: the momentum model is as untrained as the online one), a short queue,
and many training identities: with 50 identities the model memorises them (train R@1 high,
unseen test identities near chance); generalisation to held-out people needs hundreds.

The variant is `cl` and the metric the first stage (unimodal ranking): its ITM head is never
trained, and re-ranking by an untrained head erases what the first stage learned. Both are
reported. Chance R@1 = mean over queries of (#gallery images of the query's person /
#gallery images).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from rasa.config import load_params, resolve_experiment

ROOT = Path(__file__).resolve().parent.parent
IDS, TEST_FRACTION, VAL_FRACTION = 400, 0.3, 0.1
RECIPE = [
    "pretrained=none", "tokenizer=wordpiece:1000",  # from scratch (params' tiny is pre-trained)
    "variant=cl", "model.image_size=[64, 32]", "model.queue_size=256", "train.lr=1e-3",
    "train.lr_new=1e-3", "loss.alpha=0", "train.batch_size=64", "train.epochs=30",
    "train.eval_every_epochs=10", "train.num_workers=0", "train.ckpt_every_steps=0",
    "eval.k_test=16",
]  # fmt: skip


def held_out_split(root: Path) -> Path:
    """SynthPEDES CUHK-PEDES with many test identities (so chance is low), by person id."""
    from rasa.data.annotations import Annotations
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate

    generate("cuhk", n_ids=IDS, seed=0, out=root / "raw", progress=False)
    ann = parse_to_file("auto", root / "raw", root / "synth.json")
    pids = sorted({r.pid for r in ann.records})
    n_test, n_val = int(TEST_FRACTION * len(pids)), int(VAL_FRACTION * len(pids))
    split = {p: "test" if i < n_test else "val" if i < n_test + n_val else "train"
             for i, p in enumerate(pids)}  # fmt: skip
    records = [dataclasses.replace(r, split=split[r.pid]) for r in ann.records]
    Annotations(ann.dataset, ann.image_root, records, ann.source).save(root / "annotations.json")
    return root / "annotations.json"


def chance_r1(annotations) -> float:
    test = annotations.split("test")
    pids = np.array([r.pid for r in test])
    return 100.0 * float(np.mean([(pids == r.pid).mean() for r in test for _ in r.captions]))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~4 min on 2 free cores; far longer on a loaded machine
def test_tiny_learns_above_chance_on_unseen_identities(tmp_path):
    from rasa.data.annotations import Annotations
    from rasa.data.token_cache import build_cache
    from rasa.engine.train import train

    ann_path = held_out_split(tmp_path)
    build_cache(ann_path, "wordpiece:1000", tmp_path / "tokens.npz")
    sets = [*RECIPE, f"annotations={ann_path}", f"tokens={tmp_path / 'tokens.npz'}"]
    cfg = resolve_experiment(load_params(ROOT / "params.yaml"), "synth-cuhk-tiny-cl", sets)
    t0 = time.time()
    metrics = train(cfg, tmp_path / "run", progress=False, dvclive=False)
    chance = chance_r1(Annotations.load(ann_path))
    first, reranked = metrics["first_stage"]["r1"], metrics["r1"]
    print(f"chance R@1 {chance:.2f}%, first stage R@1 {first:.2f}%, re-ranked R@1 "
          f"{reranked:.2f}%, wall {time.time() - t0:.0f} s")  # fmt: skip
    # Measured (690 steps; ~3-4 min on 2 free CPU cores, 14 min on a loaded machine): chance
    # 0.91 %, first stage 10.9 % (12x), re-ranked by the ITM head (untrained in `cl`) 6.0 %.
    # Half as long (552 steps at batch 32): first stage 4.5 % (5x) - it is still learning.
    assert first >= 10 * chance
    curve = [v["first_stage_r1"] for v in metrics["val_curve"]]
    assert curve[-1] > curve[0]  # still learning (val R@1 11.4 -> 18.9 -> 22.0 %)
