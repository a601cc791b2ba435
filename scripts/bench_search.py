"""Benchmark ``rasa search``: first search (with embedding), cached search, 100 queries.

    python scripts/bench_search.py                  # tiny, a 1,000-image SynthPEDES gallery
    python scripts/bench_search.py --images 300 --queries 20 --keep /tmp/bench

Makes a SynthPEDES CUHK-PEDES set (seed 0), copies its first ``--images`` images into a
folder gallery, tokenizes its captions (``wordpiece:2000``, tiny's tokenizer) and writes an
untrained ``tiny`` checkpoint (m-rtd, k_test 128: the timing does not depend on the weights).
Then runs ``python -m rasa search`` as a user would, in fresh processes:

- ``startup``: interpreter start and every import the search needs (``python -c "import
  ..."``), measured on its own;
- ``first``: one query, empty cache: embeds the whole gallery;
- ``cached``: the same query again: the gallery's embeddings come from the cache;
- ``queries``: ``--queries`` test captions from a file, cache warm: ms per query.

Each run reports its wall time and the command's own timing (``results.json``): ``search_s``
(encode queries, list the gallery, hash the checkpoint, embeddings or cache, rank) excludes
start-up, imports, model loading and writing PNG/HTML, which are reported beside it;
``search_cpu_s`` is its CPU time (all threads), a figure a busy machine disturbs less. The
1-minute load average before and after tells how busy the machine was. Prints one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMPORTS = "import rasa.cli, rasa.search.cli, rasa.search.searcher, rasa.search.gallery, " \
    "rasa.search.output, rasa.engine.evaluate, rasa.models"  # fmt: skip
QUERY = "a woman in a red coat with a black backpack and blue jeans"


def make_setup(work: Path, n_images: int, n_queries: int) -> dict[str, Path]:
    import torch

    from rasa.data.annotations import Annotations
    from rasa.data.formats import parse_to_file
    from rasa.data.synth import generate
    from rasa.data.token_cache import build_cache
    from rasa.engine.checkpoint import save_model_checkpoint
    from rasa.models import create_model

    n_ids = max(4, int(n_images / 2.9) + 8)  # CUHK preset: about 3.1 images per identity
    generate("cuhk", n_ids=n_ids, seed=0, out=work / "raw", progress=False)
    ann_path, tokens = work / "annotations.json", work / "tokens.npz"
    parse_to_file("auto", work / "raw", ann_path)
    cache = build_cache(ann_path, "wordpiece:2000", tokens, progress=False)
    ann = Annotations.load(ann_path)
    root = ann.resolve_image_root(ann_path)
    if len(ann.records) < n_images:
        raise SystemExit(f"generated {len(ann.records)} images, fewer than {n_images}")
    gallery = work / "gallery"
    for rec in ann.records[:n_images]:
        (gallery / rec.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rec.image, gallery / rec.image)
    captions = [c for _, _, c in ann.captions("test")]
    captions += [c for _, _, c in ann.captions("train")]
    (work / "queries.txt").write_text("\n".join(captions[:n_queries]) + "\n", encoding="utf-8")

    torch.manual_seed(0)
    model = create_model("tiny", image_size=(64, 32), queue_size=256,
                         vocab_size=cache.vocab_size)  # fmt: skip
    config = {"name": "bench-search", "dataset": "synth-cuhk", "backbone": "tiny",
              "variant": "m-rtd", "seed": 0, "tokens": str(tokens),
              "train": {"resize": "pad"}, "eval": {"k_test": 128}}  # fmt: skip
    ckpt = work / "checkpoint.pt"
    save_model_checkpoint(ckpt, model=model, config=config)
    return {"gallery": gallery, "checkpoint": ckpt, "queries": work / "queries.txt"}


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command (a fresh process)."""
    c0, t0 = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - c0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    return wall, cpu


def search_run(
    name: str, setup: dict[str, Path], work: Path, env: dict[str, str], *extra: str
) -> dict:
    out = work / f"out-{name}"
    cmd = [sys.executable, "-m", "rasa", "search", "--checkpoint", str(setup["checkpoint"]),
           "--gallery", str(setup["gallery"]), "--cache", str(work / "cache"), "--out",
           str(out), "--no-progress", "--device", "cpu", *extra]  # fmt: skip
    wall, cpu = run(cmd, env)
    doc = json.loads((out / "results.json").read_text())
    t = doc["timing"]
    return {
        "wall_s": round(wall, 3),
        "process_cpu_s": round(cpu, 3),
        "startup_and_imports_s": round(wall - t["total_s"] + t["imports_s"], 3),
        **{k: round(v, 4) for k, v in sorted(t.items())},
        "embedded": doc["embedded"],
        "num_queries": len(doc["queries"]),
        "num_gallery": doc["num_gallery"],
        "k_test": doc["k_test"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="gallery images (default 1000)")
    p.add_argument("--queries", type=int, default=100, help="queries of the file run")
    p.add_argument(
        "--keep", metavar="DIR",
        help="work in DIR and keep it (default: a temp dir); a DIR of an earlier run is reused",
    )  # fmt: skip
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_search_"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        t0 = time.perf_counter()
        ready = {"gallery": work / "gallery", "checkpoint": work / "checkpoint.pt",
                 "queries": work / "queries.txt"}  # fmt: skip
        if args.keep and all(p.exists() for p in ready.values()):
            setup = ready  # --keep DIR of an earlier run: the same data and checkpoint
        else:
            setup = make_setup(work, args.images, args.queries)
        setup_s = time.perf_counter() - t0
        shutil.rmtree(work / "cache", ignore_errors=True)
        load_before = os.getloadavg()[0]
        startup = [run([sys.executable, "-c", IMPORTS], env) for _ in range(2)]
        first = search_run("first", setup, work, env, QUERY)
        cached = search_run("cached", setup, work, env, QUERY)
        many = search_run("queries", setup, work, env, "--queries", str(setup["queries"]),
                          "--no-png")  # fmt: skip
        many["per_query_ms"] = round(1000 * many["search_s"] / many["num_queries"], 2)
        many["rank_per_query_ms"] = round(1000 * many["rank_s"] / many["num_queries"], 2)
        import torch

        report = {
            "model": "tiny (64x32 images, untrained weights)",
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "gallery_images": args.images,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "setup_s": round(setup_s, 2),
            "startup_imports_s": round(min(w for w, _ in startup), 3),
            "startup_imports_cpu_s": round(min(c for _, c in startup), 3),
            "first": first,
            "cached": cached,
            "queries": many,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
