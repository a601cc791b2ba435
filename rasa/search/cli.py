"""``rasa search``: describe a person in words, see whom a trained model finds.

Thin wrapper over :mod:`rasa.search.searcher`; heavy imports (torch) happen in the handler.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rasa.errors import ConfigError, DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "search",
        help="rank a gallery for your own descriptions (two-stage, as evaluation)",
        description="Rank the images of GALLERY (a folder of jpg/png images, recursive, or an "
        "annotation table and --split) for each query with a checkpoint that `rasa evaluate` "
        "accepts (ours or the official RaSa layout): unimodal similarity, then ITM re-ranking "
        "of the top --k-test. Writes OUT/results.json (per query: each hit's path, final and "
        "first-stage score), OUT/query-NNN.png (a grid per query) and, with --html DIR, one "
        "page for all queries; prints one JSON line per query. The gallery's embeddings are "
        "cached (--cache): a repeated search embeds only new or changed images.",
    )
    p.add_argument("query", nargs="*", help="a description of a person (quote it)")
    p.add_argument("--queries", metavar="FILE", help="more queries, one per line")
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt of rasa, or official)")
    p.add_argument("--gallery", required=True, help="folder of images or annotation table")
    p.add_argument("--split", default="test", help="split of an annotation table (default test)")
    p.add_argument("--k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument(
        "--k-test", type=int, default=None,
        help="candidates re-ranked by ITM (default: the run's eval.k_test; 0: no re-ranking)",
    )  # fmt: skip
    p.add_argument("--out", default="search", help="output folder (default ./search)")
    p.add_argument("--html", metavar="DIR", help="also write DIR/index.html for all queries")
    p.add_argument("--no-png", action="store_true", help="no PNG grids")
    p.add_argument(
        "--cache", metavar="DIR",
        help="embedding cache folder (default $RASA_SEARCH_CACHE or ~/.cache/rasa/search)",
    )  # fmt: skip
    p.add_argument("--no-cache", action="store_true", help="embed the gallery, write no cache")
    p.add_argument("--tokens", metavar="FILE", help="token cache whose tokenizer to use")
    p.add_argument("--tokenizer", metavar="SPEC", help="tokenizer spec (e.g. bert:DIR, minilm)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="image loading processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_search)


def read_queries(args: argparse.Namespace) -> list[str]:
    """The arguments' queries, then the file's non-blank lines."""
    queries = list(args.query)
    if args.queries:
        path = Path(args.queries)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError as exc:
            raise DataError(f"{path}: queries file not found (one query per line).") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc}).") from exc
        from_file = [line.strip() for line in lines if line.strip()]
        if not from_file:
            raise ConfigError(f"{path}: the queries file has no query (one per line).")
        queries += from_file
    return queries


def _search(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    import rasa.engine.evaluate  # noqa: F401 - imported here so that imports_s holds them all
    import rasa.models  # noqa: F401
    from rasa.search.gallery import default_cache_dir
    from rasa.search.output import write_html, write_pngs, write_results
    from rasa.search.searcher import load_search_model, search

    queries = read_queries(args)
    t1 = time.perf_counter()
    sm = load_search_model(
        args.checkpoint, tokens=args.tokens, tokenizer=args.tokenizer, k_test=args.k_test,
        device=args.device, batch_size=args.batch_size,
    )  # fmt: skip
    t2 = time.perf_counter()
    cache_dir = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()
    doc = search(
        sm, queries, args.gallery, split=args.split, n=args.k, cache_dir=cache_dir,
        num_workers=args.workers, progress=not args.no_progress,
    )  # fmt: skip
    t3 = time.perf_counter()
    out = Path(args.out)
    if not args.no_png:
        write_pngs(out, doc)
    t4 = time.perf_counter()
    if args.html:
        write_html(args.html, doc)
    t5 = time.perf_counter()
    doc["timing"].update(
        imports_s=t1 - t0, load_model_s=t2 - t1, png_s=t4 - t3, html_s=t5 - t4, total_s=t5 - t0
    )
    write_results(out, doc)
    for q in doc["queries"]:
        print(json.dumps(q, ensure_ascii=False))
    notes = [f"{i + 1}: {q['note']}" for i, q in enumerate(doc["queries"]) if q["note"]]
    print(
        f"searched {doc['num_gallery']} images ({doc['num_skipped']} skipped, "
        f"{doc['embedded']} embedded now) for {len(doc['queries'])} quer"
        f"{'y' if len(doc['queries']) == 1 else 'ies'} in {doc['timing']['search_s']:.2f} s; "
        f"results in {out}/",
        file=sys.stderr,
    )
    for s in doc["skipped"][:5]:
        print(f"skipped {s['name']}: {s['reason']}", file=sys.stderr)
    for n in notes:
        print(f"query {n}", file=sys.stderr)
    return 0
