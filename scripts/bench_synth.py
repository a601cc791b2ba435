"""Benchmark SynthPEDES generation: images per second and dataset statistics per preset.

Usage: ``python scripts/bench_synth.py [--ids 400] [--presets cuhk icfg rstp] [--workers 1]
[--seed 0] [--out DIR]``. Prints one JSON object: per preset the wall-clock seconds of
``generate`` (sampling + drawing + encoding + writing), images/s, captions/s and the dataset
statistics it returns (ids, images, captions per split, weak-positive share, words per
caption). Output goes to a temporary directory unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rasa.data.synth import PRESETS, generate


def bench(preset: str, ids: int, seed: int, workers: int, out: Path) -> dict:
    start = time.perf_counter()
    stats = generate(preset, ids, seed, out / preset, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (out / preset).rglob("*") if p.is_file())
    return {
        "seconds": round(seconds, 3),
        "images_per_s": round(stats["images"] / seconds, 1),
        "captions_per_s": round(stats["captions"] / seconds, 1),
        "megabytes": round(size / 2**20, 2),
        "stats": {k: v for k, v in stats.items() if k != "mention_rate"},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=400)
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="keep the data here (default: a temp dir)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        result = {
            "ids": args.ids,
            "workers": args.workers,
            "seed": args.seed,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "presets": {p: bench(p, args.ids, args.seed, args.workers, out) for p in args.presets},
        }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
