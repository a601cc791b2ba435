"""Benchmark: tokenizing captions every epoch vs loading the token cache once.

    python scripts/bench_tokens.py                      # 80,000 synthetic captions, minilm
    python scripts/bench_tokens.py --annotations data/cuhk/annotations.json --tokenizer bert:DIR

Prints one JSON object: the time to clean + tokenize every caption (batched ``encode_batch``,
and one caption at a time as a per-item dataset would), the time to build the cache, the time to
load it, and the speed-up of loading over re-tokenizing. Synthetic captions (seeded) are made
when no annotation table is given.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from rasa.data.annotations import Annotations, Record
from rasa.data.text import clean_caption
from rasa.data.token_cache import build_cache, load_cache
from rasa.data.tokenizer import encode_captions, get_tokenizer

COLOURS = "black white red blue green yellow grey brown pink purple orange dark light".split()
CLOTHES = "shirt t-shirt jacket coat sweater hoodie dress skirt shorts jeans trousers pants".split()
THINGS = "backpack handbag shoulder-bag umbrella hat cap glasses scarf phone bottle".split()
SUBJECTS = ["A man", "A woman", "The pedestrian", "This person", "A young girl", "An old man"]


def synthetic_table(n_captions: int, seed: int = 0) -> Annotations:
    """Pedestrian-like captions, 2 per image, 4 images per person, 90% train."""
    rng = random.Random(seed)

    def caption() -> str:
        parts = [f"{rng.choice(SUBJECTS)} is wearing a {rng.choice(COLOURS)} {rng.choice(CLOTHES)}"]
        for _ in range(rng.randint(2, 6)):
            parts.append(
                rng.choice(
                    [
                        f"with {rng.choice(COLOURS)} {rng.choice(CLOTHES)}",
                        f"carrying a {rng.choice(COLOURS)} {rng.choice(THINGS)}",
                        f"and {rng.choice(COLOURS)} shoes",
                        f"{rng.choice(['long', 'short'])} {rng.choice(COLOURS)} hair",
                    ]
                )
            )
        return ", ".join(parts) + "."

    n_images = (n_captions + 1) // 2
    records = []
    for i in range(n_images):
        caps = tuple(caption() for _ in range(min(2, n_captions - 2 * i)))
        split = "train" if i < 0.9 * n_images else "test"
        records.append(Record(f"{i}.jpg", i // 4, split, caps))
    return Annotations("synthetic", "imgs", records)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds, median process CPU seconds (all threads) and the last result."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--annotations", help="annotation table (default: synthetic captions)")
    ap.add_argument("--captions", type=int, default=80_000, help="synthetic captions")
    ap.add_argument("--tokenizer", default="minilm", help="tokenizer spec (default minilm)")
    ap.add_argument("--max-len", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3, help="median over this many runs")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        if args.annotations:
            ann_path = Path(args.annotations)
            ann = Annotations.load(ann_path)
        else:
            ann = synthetic_table(args.captions)
            ann_path = Path(tmp) / "annotations.json"
            ann.save(ann_path)
        captions = [c for _, _, c in ann.captions()]
        tok = get_tokenizer(args.tokenizer, ann, max_len=args.max_len)
        out = Path(tmp) / "tokens.npz"

        build_s, build_cpu, _ = timed(
            lambda: build_cache(ann_path, args.tokenizer, out, args.max_len, progress=False), 1
        )
        batched_s, batched_cpu, (ids, _) = timed(
            lambda: encode_captions(tok, captions), args.repeats
        )
        single_s, single_cpu, _ = timed(
            lambda: [tok.encode(clean_caption(c)).ids for c in captions], args.repeats
        )
        load_s, load_cpu, cache = timed(lambda: load_cache(out), args.repeats)
        assert np.array_equal(cache.ids, ids), "cache rows differ from fresh tokenization"
        size = out.stat().st_size

    result = {
        "captions": len(captions),
        "tokenizer": args.tokenizer,
        "max_len": args.max_len,
        "vocab_size": cache.vocab_size,
        "source": str(args.annotations or f"synthetic ({args.captions} captions, seed 0)"),
        "build_cache_s": round(build_s, 4),
        "tokenize_batched_s": round(batched_s, 4),
        "tokenize_per_caption_s": round(single_s, 4),
        "load_cache_s": round(load_s, 4),
        "cpu_s": {
            "build_cache": round(build_cpu, 4),
            "tokenize_batched": round(batched_cpu, 4),
            "tokenize_per_caption": round(single_cpu, 4),
            "load_cache": round(load_cpu, 4),
        },
        "cache_bytes": size,
        "speedup_vs_batched": round(batched_s / load_s, 1),
        "speedup_vs_per_caption": round(single_s / load_s, 1),
        "speedup_cpu_vs_batched": round(batched_cpu / max(load_cpu, 1e-9), 1),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
