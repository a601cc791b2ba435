"""``rasa report``: the paper's Tables 1-8 and Figs. 4-5 from our metrics files (DESIGN.md,
"Reports").

    rasa report --results results/runs --out results [--compile] [--topk FILE[=LABEL] ...]
                [--runs checkpoints/<experiment> ...]

Collects every metrics JSON under the ``--results`` directories, writes ``<out>/comparison.csv``
(every number of ours beside the paper's, long format),
``<out>/tables/tableN[-context].tex`` (standalone, compiles with pdflatex) and
``..._fragment.tex`` (a ``table`` float to ``\\input``), ``table-weak[-context].tex`` (CMMT vs
supervised CL and RaSa, not in the paper), ``<out>/figures/`` (Fig. 4 when sweep runs exist,
Fig. 5 from top-k files) and ``<out>/README.md`` indexing what was made, with the git commit and
the sha256 of params.yaml. All writes are atomic.

``--runs`` names training run directories (rasa/report/curves.py): per run
``figures/curves-<experiment>.png|pdf``; per CMMT run ``figures/pseudo-labels-<experiment>``
and ``tables/pseudo-labels-<experiment>[_fragment].tex`` (ARI per epoch, also inline in the
README); per (dataset, backbone) ``figures/val-r1-<dataset>-<backbone>`` comparing the runs'
validation R@1. A run directory without curve data is noted and skipped.

``--parts`` names, for a suite assembled from parts run in separate sessions (Snakemake
``--config assemble=True``), the parts' committed report folders: a "Parts" section gives each
part's commit and whether its runs' inputs (code, weights, params) match this commit's, and
links each run's curves in its part report.

The report itself is :func:`rasa.report.build.build_report` (one function per section).
"""

from __future__ import annotations

import argparse

from rasa.cli import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="LaTeX tables 1-8 beside the paper's numbers, Figs. 4-5, results/README.md",
        description="Collect metrics JSON files (output of `rasa evaluate` / `rasa train`) "
        "under the given directories and write the paper's Tables 1-8 with our numbers beside "
        "the paper's, Fig. 4 (hyper-parameter sweeps), Fig. 5 (top-10 retrievals) and an "
        "index README.md.",
    )
    p.add_argument("--results", nargs="+", required=True, metavar="DIR",
                   help="directories (searched recursively) or metrics JSON files")  # fmt: skip
    p.add_argument("--out", required=True, help="output directory (tables/, figures/, README.md)")
    p.add_argument("--params", default="params.yaml",
                   help="params.yaml: dataset descriptions and its hash in the README")  # fmt: skip
    p.add_argument("--suite", help="suite name for runs whose meta has none (captions)")
    p.add_argument("--split", default="test", help="split reported in the tables (default test)")
    p.add_argument("--compile", action="store_true",
                   help="compile each table to PDF with pdflatex (scripts/setup_latex.sh)")  # fmt: skip
    p.add_argument("--topk", nargs="*", default=None, metavar="FILE[=LABEL]",
                   help="top-k files for Fig. 5 (default: every topk*.json found); several "
                   "files are compared row by row on the same queries")  # fmt: skip
    p.add_argument("--annotations", help="annotation table to find Fig. 5's images")
    p.add_argument(
        "--queries", type=positive_int, default=3, help="Fig. 5: number of queries shown"
    )
    p.add_argument("--runs", nargs="*", default=None, metavar="DIR",
                   help="training run directories (checkpoints/<experiment>): training curves, "
                   "CMMT pseudo-label quality, validation R@1 per (dataset, backbone)")  # fmt: skip
    p.add_argument("--parts", nargs="*", default=None, metavar="DIR",
                   help="an assembled suite: the committed report folders (results/<part>) of "
                   "the parts it was run in; per part its commit and whether its runs' inputs "
                   "match this commit's, per run a link to its curves there")  # fmt: skip
    p.add_argument("--pretrained", metavar="DIR",
                   help="export folder of the pre-training the runs start from (`rasa "
                   "pretrain --export`): its held-out figures and curves")  # fmt: skip
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from rasa.report.build import build_report

    made = build_report(
        args.results,
        args.out,
        params=args.params,
        suite=args.suite,
        split=args.split,
        compile_pdf=args.compile,
        topk=args.topk,
        annotations=args.annotations,
        n_queries=args.queries,
        training_runs=args.runs,
        pretrained=args.pretrained,
        parts=args.parts,
    )
    print(f"report: {len(made.outputs)} files in {args.out} (index: {made.readme})")
    for note in made.notes:
        print(f"report: note: {note}")
    return 0
