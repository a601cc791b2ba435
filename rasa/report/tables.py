"""LaTeX versions of the RaSa paper's Tables 1-8 with our numbers beside the paper's.

DESIGN.md "Reports": booktabs tables, each metric as two sub-columns "paper | ours", a caption
naming the suite, dataset and backbone our numbers come from (checkpoint selected on the
validation split, test split evaluated once), mean +- std and the number of seeds where
several ran, '--' where we have no run (or the paper prints '-').

Which of our runs fill which row is declared in :data:`SPECS` (one :class:`RowRule` per
paper row we reproduce: Table 4 rows <- the ten variants, Tables 1-3/5-7 "RaSa (Ours)" <-
``m-rtd``, Table 8 <- one row per backbone). Runs are split into one table per *context*
(the meta fields in ``TableSpec.context``, e.g. dataset and backbone), so numbers from a
synthetic dataset and a real one are never mixed in one cell. Only runs of the requested split
(test) count, Fig. 4 sweep runs do not, and one run per seed does (a later file of the same
seed replaces an earlier one).

Tables 1-8 take supervised runs only (``method`` rasa): a weakly supervised CMMT run (issue #6,
``method`` cmmt) goes to :data:`WEAK_SPEC`, a table that is not in the paper: CMMT beside
supervised CL (``cl``) and RaSa (``m-rtd``) per dataset and backbone, with the RaSa paper's
numbers for CL and RaSa and CMMT's own where a pinned source gives them
(``other_results.csv``, :func:`rasa.report.paper.other_value`).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rasa.data.formats import DATASETS
from rasa.report.paper import load_paper_results, other_value, paper_value
from rasa.report.results import Run, sweep_point
from rasa.variants import VARIANTS

METRIC_LABELS = {
    "r1": "R@1",
    "r5": "R@5",
    "r10": "R@10",
    "mAP": "mAP",
    "tr_r1": "TR R@1",
    "tr_r5": "TR R@5",
    "tr_r10": "TR R@10",
    "ir_r1": "IR R@1",
    "ir_r5": "IR R@5",
    "ir_r10": "IR R@10",
    "ir_ap50": "IR AP@50",
}
DATASET_LABELS = {d.key: d.label for d in DATASETS}
PREAMBLE_PACKAGES = ("booktabs", "multirow", "makecell", "threeparttable", "xcolor", "caption")
OURS_COLOR = "blue!55!black"


@dataclass(frozen=True)
class RowRule:
    """Our runs matching ``match`` (meta field -> value, or tuple of allowed values) fill the
    paper row ``method``; ``{backbone}`` in ``method`` makes one row per backbone."""

    method: str
    match: Mapping[str, Any]

    def matches(self, run: Run) -> bool:
        for key, want in self.match.items():
            got = run.method if key == "method" else run.get(key)
            allowed = want if isinstance(want, tuple) else (want,)
            if got not in allowed:
                return False
        return True

    def row_name(self, run: Run) -> str:
        return self.method.format(backbone=str(run.get("backbone") or "?").upper())


@dataclass(frozen=True)
class TableSpec:
    number: int | str  # the paper's table number; a name for a table not in the paper
    title: str  # the paper's caption, shortened
    metrics: tuple[str, ...]
    rules: tuple[RowRule, ...]
    context: tuple[str, ...]  # meta fields that separate tables of ours
    datasets_in_columns: tuple[str, ...] = ()  # Tables 5, 6: column blocks per dataset
    show_group: bool = True
    extra_group: str = "ours"  # group of our rows the paper does not have
    decimals: int = 2
    note: str = ""  # what "ours" means where it differs from the paper's protocol
    methods: tuple[str, ...] = ("rasa",)  # training methods whose runs may fill the rows
    # a table not in the paper: its rows (group, method), repeated for each dataset of ours
    # among ``own_datasets`` (CUHK-PEDES alone when there is no run)
    own_rows: tuple[tuple[str, str], ...] = ()
    own_datasets: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        """File-name stem: ``table4``, ``table-weak``."""
        return f"table{self.number}" if isinstance(self.number, int) else f"table-{self.number}"

    @property
    def heading(self) -> str:
        """``Table 4 of RaSa (IJCAI 2023)`` or the name of a table of ours."""
        if isinstance(self.number, int):
            return f"Table {self.number} of RaSa (IJCAI 2023)"
        return f"A table of ours ({self.number}), not in the RaSa paper"


_M4 = ("r1", "r5", "r10", "mAP")
_OURS = RowRule("RaSa (Ours)", {"variant": "m-rtd"})
TABLE4_VARIANTS = {v.label: v.name for v in VARIANTS.values()}  # paper row -> variant
SPECS: dict[int, TableSpec] = {
    1: TableSpec(
        1, "Comparison with other methods on CUHK-PEDES.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    2: TableSpec(
        2, "Comparison with other methods on ICFG-PEDES.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    3: TableSpec(
        3, "Comparison with other methods on RSTPReid.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    4: TableSpec(
        4,
        "Comparison of RaSa with different settings on CUHK-PEDES.",
        _M4,
        tuple(RowRule(m, {"variant": v}) for m, v in TABLE4_VARIANTS.items()),
        ("dataset", "backbone"),
    ),
    5: TableSpec(
        5,
        "Results of coarse-grained retrieval on Flickr30K and COCO.",
        ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"),
        (_OURS,),
        ("backbone",),
        datasets_in_columns=("flickr30k", "coco"),
        show_group=False,
        note="Ours: the m-rtd runs (the paper drops RA here: SA with vanilla ITM); TR from the "
        "metrics' i2t block when present.",
    ),
    6: TableSpec(
        6,
        "Results of fine-grained retrieval on CUB and Flowers.",
        ("tr_r1", "ir_ap50"),
        (_OURS,),
        ("backbone",),
        datasets_in_columns=("cub", "flowers"),
        show_group=False,
        decimals=1,
        note="Ours: TR R@1 from the metrics' i2t block, IR AP@50 from 'ap50', when present.",
    ),
    7: TableSpec(
        7,
        "Domain generalization: CUHK-PEDES (C) and ICFG-PEDES (I) as source and target in turn.",
        ("r1", "r5", "r10"),
        (_OURS,),
        ("backbone",),
        note="Ours: runs whose meta names the training set (source_dataset) and the test set.",
    ),
    8: TableSpec(
        8,
        "RaSa on other backbones, CUHK-PEDES.",
        _M4,
        (RowRule("RaSa_{backbone}", {"variant": "m-rtd"}),),
        ("dataset",),
    ),
}

# Issue #6: weakly supervised CMMT (ICCV 2021) next to supervised CL and RaSa.
WEAK_ROWS = {
    "CMMT": RowRule("CMMT", {"method": "cmmt"}),
    "CL (ITC + IMC)": RowRule("CL (ITC + IMC)", {"method": "rasa", "variant": "cl"}),
    "RaSa (MLM + m-RTD)": RowRule("RaSa (MLM + m-RTD)", {"method": "rasa", "variant": "m-rtd"}),
}
WEAK_SPEC = TableSpec(
    "weak",
    "Weakly supervised (CMMT, ICCV 2021: no identity labels, image-caption pairs only) vs "
    "supervised (CL and RaSa, identity labels).",
    _M4,
    tuple(WEAK_ROWS.values()),
    ("dataset", "backbone"),
    note="Paper column: CL and RaSa from the RaSa paper (Table 4 on CUHK-PEDES; RaSa (Ours) of "
    "Tables 2-3 on ICFG-PEDES and RSTPReid); CMMT from rasa/report/other_results.csv, which "
    "holds no number yet (the pinned CMMT notes, seeds/cmmt_weakly_supervised_notes.txt, give "
    "none). Ours: CMMT = runs with method cmmt; CL and RaSa = supervised runs of variants cl "
    "and m-rtd.",
    methods=("rasa", "cmmt"),
    own_rows=(
        ("weakly supervised", "CMMT"),
        ("supervised", "CL (ITC + IMC)"),
        ("supervised", "RaSa (MLM + m-RTD)"),
    ),
    own_datasets=("cuhk", "icfg", "rstp"),
)
# What the weak table's paper column shows: (dataset, our row) -> (table, dataset, paper row)
# of the RaSa paper, or ("other", dataset, method) of other_results.csv.
WEAK_REFERENCES = {
    ("cuhk", "CL (ITC + IMC)"): (4, "cuhk", "ITC + IMC"),
    ("cuhk", "RaSa (MLM + m-RTD)"): (4, "cuhk", "MLM + m-RTD"),
    ("icfg", "RaSa (MLM + m-RTD)"): (2, "icfg", "RaSa (Ours)"),
    ("rstp", "RaSa (MLM + m-RTD)"): (3, "rstp", "RaSa (Ours)"),
    **{(d, "CMMT"): ("other", d, "CMMT") for d in ("cuhk", "icfg", "rstp")},
}
ALL_SPECS: dict[int | str, TableSpec] = {**SPECS, WEAK_SPEC.number: WEAK_SPEC}


# ---- aggregation -------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    mean: float
    std: float | None  # None for a single run
    n: int


def aggregate(values: Sequence[float]) -> Cell | None:
    """Mean, sample standard deviation (n > 1) and count; None for no values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return None
    std = statistics.stdev(vals) if len(vals) > 1 else None
    return Cell(statistics.fmean(vals), std, len(vals))


def dedupe_seeds(runs: Sequence[Run]) -> list[Run]:
    """One run per seed: a later run of the same seed (e.g. a re-evaluation) replaces it."""
    by_seed: dict[Any, Run] = {}
    for i, run in enumerate(runs):
        by_seed[run.seed if run.seed is not None else f"#{i}"] = run
    return list(by_seed.values())


@dataclass
class OurTable:
    """The rows of one table for one context: (dataset key, method) -> metric -> Cell."""

    spec: TableSpec
    context: dict[str, Any]
    cells: dict[tuple[str, str], dict[str, Cell]]
    extra_rows: list[tuple[str, str]]  # (dataset key, method) not in the paper, in run order
    runs: list[Run]
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (dataset, group, method)


def context_of(run: Run, spec: TableSpec) -> tuple:
    return tuple((k, run.dataset if k == "dataset" else run.get(k)) for k in spec.context) + (
        ("suite", run.get("suite")),
    )


def _table_datasets(spec: TableSpec, paper_rows: list[tuple[str, str, str]]) -> set[str]:
    return set(spec.datasets_in_columns or spec.own_datasets) or {d for d, _, _ in paper_rows}


def paper_rows(number: int | str) -> list[tuple[str, str, str]]:
    """(dataset, group, method) of a paper table in the paper's order; Tables 5/6 collapse
    the per-dataset duplicates (datasets are column blocks there). A table not in the paper:
    its own rows on every dataset it admits."""
    spec = ALL_SPECS[number]
    if spec.own_rows:
        return [(d, g, m) for d in spec.own_datasets for g, m in spec.own_rows]
    df = load_paper_results()
    sub = df[df.table == number]
    rows = list(dict.fromkeys(zip(sub.dataset, sub.group, sub.method, strict=True)))
    if spec.datasets_in_columns:
        seen = dict.fromkeys(m for _, _, m in rows)
        return [("", "", m) for m in seen]
    return rows


def build_our_tables(number: int | str, runs: Sequence[Run], split: str = "test") -> list[OurTable]:
    """Group runs of ``split`` into one :class:`OurTable` per context; no matching run gives a
    single empty table (so the paper's numbers are still shown). ``number``: a key of
    :data:`ALL_SPECS` (1-8, or ``"weak"``)."""
    spec = ALL_SPECS[number]
    rows = paper_rows(number)
    datasets = _table_datasets(spec, rows)
    groups: dict[tuple, dict[tuple[str, str], list[Run]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run.get("split", split) != split or run.dataset_key not in datasets:
            continue
        if run.method not in spec.methods:  # e.g. CMMT runs stay out of the paper's tables
            continue
        if sweep_point(run) is not None:  # Fig. 4 runs: not the paper's setting
            continue
        for rule in spec.rules:
            if rule.matches(run):
                groups[context_of(run, spec)][(run.dataset_key, rule.row_name(run))].append(run)
    paper_keys = {(d, m) for d, _, m in rows}
    out = []
    for ctx, by_row in groups.items():
        cells: dict[tuple[str, str], dict[str, Cell]] = {}
        all_runs: list[Run] = []
        extra: list[tuple[str, str]] = []
        for (dkey, method), row_runs in by_row.items():
            row_runs = dedupe_seeds(row_runs)
            all_runs.extend(row_runs)
            row_key = ("", method) if spec.datasets_in_columns else (dkey, method)
            if row_key not in paper_keys and row_key not in extra:
                extra.append(row_key)
            for metric in spec.metrics:
                c = aggregate([r.values.get(metric, math.nan) for r in row_runs])
                if c is not None:
                    col = f"{dkey}:{metric}" if spec.datasets_in_columns else metric
                    cells.setdefault(row_key, {})[col] = c
        out.append(OurTable(spec, dict(ctx), cells, extra, all_runs, _rows_for(spec, rows, by_row)))
    if not out:
        out.append(OurTable(spec, {}, {}, [], [], _rows_for(spec, rows, {})))
    return out


def _rows_for(spec: TableSpec, rows: list, by_row: Mapping[tuple[str, str], Any]) -> list:
    """The rows a table shows: the paper's; for a table of ours, its rows on the datasets of
    its runs (the first admitted dataset when it has none)."""
    if not spec.own_rows:
        return list(rows)
    present = {d for d, _ in by_row} or {spec.own_datasets[0]}
    return [r for r in rows if r[0] in present]


# ---- LaTeX -------------------------------------------------------------------------------
_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"\textless{}",
    ">": r"\textgreater{}",
    "→": r"$\rightarrow$",
    "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX special characters (and map a few Unicode symbols to math)."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def method_label(method: str) -> str:
    """A paper row label in LaTeX: ``RaSa_TCL`` -> RaSa subscript TCL, ``p-ITM`` italic p,
    ``C2A2`` with subscripts; everything else escaped."""
    m = re.fullmatch(r"RaSa_(\w+)", method)
    if m:
        return r"RaSa$_{\mathrm{" + latex_escape(m.group(1)).replace(r"\_", r"\_") + "}}$"
    if method == "C2A2":
        return r"C$_2$A$_2$"
    out = latex_escape(method)
    return re.sub(r"\b([psfom])-(ITM|RTD)\b", r"\\textit{\1}-\2", out)


def fmt_paper(value: float | None, decimals: int) -> str:
    return "--" if value is None or math.isnan(value) else f"{value:.{decimals}f}"


def fmt_ours(cell: Cell | None) -> str:
    if cell is None:
        return "--"
    text = f"{cell.mean:.2f}"
    if cell.std is not None:
        text += rf"\,$\pm$\,{cell.std:.2f}"
    return rf"\textcolor{{{OURS_COLOR}}}{{{text}}}"


def describe_context(table: OurTable, datasets: Mapping[str, str] | None = None) -> str:
    """Caption text: where our numbers come from."""
    datasets = datasets or {}
    ctx = table.context
    if not table.runs:
        return "No run of ours for this table yet (all ``--'')"
    parts = []
    suites = sorted({str(r.get("suite")) for r in table.runs if r.get("suite")})
    if suites:
        parts.append("suite " + ", ".join(suites))
    names = sorted({r.dataset for r in table.runs})
    parts.append(", ".join(datasets.get(n, n) for n in names))
    backbones = sorted({str(r.get("backbone")) for r in table.runs if r.get("backbone")})
    if "backbone" in ctx or len(backbones) == 1:
        parts.append(f"{', '.join(backbones)} backbone")
    seeds = sorted({str(r.seed) for r in table.runs if r.seed is not None})
    if seeds:
        parts.append(f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}")
    text = "Ours from " + "; ".join(parts)
    text += "; checkpoint selected on validation, test split evaluated once"
    if any(c.n > 1 for row in table.cells.values() for c in row.values()):
        text += "; mean ± sample std over seeds (runs column)"
    return latex_escape(text)


def _columns(spec: TableSpec) -> list[tuple[str, str]]:
    """(dataset or '', metric) for each metric column pair, in order."""
    if spec.datasets_in_columns:
        return [(d, m) for d in spec.datasets_in_columns for m in spec.metrics]
    return [("", m) for m in spec.metrics]


def render_tabular(table: OurTable, paper: Mapping[tuple[str, str, str], float]) -> str:
    """The tabular (booktabs) with paper | ours sub-columns, without float or caption."""
    spec = table.spec
    cols = _columns(spec)
    rows = table.rows or paper_rows(spec.number)
    has_n = any(c.n > 1 for row in table.cells.values() for c in row.values())
    lead = 2 if spec.show_group else 1
    align = "l" * lead + "rr" * len(cols) + ("c" if has_n else "")
    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    if spec.datasets_in_columns:
        head = [""] * lead
        rules = []
        for i, d in enumerate(spec.datasets_in_columns):
            span = 2 * len(spec.metrics)
            head.append(rf"\multicolumn{{{span}}}{{c}}{{{latex_escape(DATASET_LABELS[d])}}}")
            start = lead + 1 + i * span
            rules.append(rf"\cmidrule(lr){{{start}-{start + span - 1}}}")
        lines.append(" & ".join(head + ([""] if has_n else [])) + r" \\")
        lines.append("".join(rules))
    head = ([r"\multirow{2}{*}{}"] if spec.show_group else []) + [r"\multirow{2}{*}{Method}"]
    rules = []
    for i, (_, m) in enumerate(cols):
        head.append(rf"\multicolumn{{2}}{{c}}{{{latex_escape(METRIC_LABELS[m])}}}")
        start = lead + 1 + 2 * i
        rules.append(rf"\cmidrule(lr){{{start}-{start + 1}}}")
    if has_n:
        head.append(r"\multirow{2}{*}{runs}")
    lines.append(" & ".join(head) + r" \\")
    lines.append("".join(rules))
    sub = [""] * lead + [rf"paper & \textcolor{{{OURS_COLOR}}}{{ours}}"] * len(cols)
    lines.append(" & ".join(sub + ([""] if has_n else [])) + r" \\")
    lines.append(r"\midrule")

    all_rows = list(rows) + [(d, spec.extra_group, m) for d, m in table.extra_rows]
    groups = list(dict.fromkeys(g for _, g, _ in all_rows))
    for gi, group in enumerate(groups):
        members = [r for r in all_rows if r[1] == group]
        if gi:
            lines.append(r"\midrule")
        for ri, (dkey, _, method) in enumerate(members):
            cells = []
            if spec.show_group:
                label = latex_escape(group)
                cells.append(rf"\multirow{{{len(members)}}}{{*}}{{{label}}}" if ri == 0 else "")
            cells.append(method_label(method))
            ours_row = table.cells.get((dkey, method), {})
            n = 0
            for d, m in cols:
                pkey = (d or dkey, method, m)
                cells.append(fmt_paper(paper.get(pkey), spec.decimals))
                cell = ours_row.get(f"{d}:{m}" if d else m)
                n = max(n, cell.n if cell else 0)
                cells.append(fmt_ours(cell))
            if has_n:
                cells.append(str(n) if n else "")
            lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines)


def paper_lookup(number: int | str) -> dict[tuple[str, str, str], float]:
    """(dataset, row, metric) -> the published number shown in a table's paper column."""
    if number == WEAK_SPEC.number:
        out = {}
        for (dkey, row), (table, dataset, method) in WEAK_REFERENCES.items():
            for metric in WEAK_SPEC.metrics:
                if table == "other":
                    value = other_value(dataset, method, metric)
                else:
                    value = paper_value(table, dataset, method, metric)
                if value is not None:
                    out[(dkey, row, metric)] = value
        return out
    df = load_paper_results()
    sub = df[df.table == number]
    return {
        (d, m, k): float(v)
        for d, m, k, v in zip(sub.dataset, sub.method, sub.metric, sub.value, strict=True)
    }


def render_table(
    table: OurTable, datasets: Mapping[str, str] | None = None, label: str | None = None
) -> tuple[str, str]:
    """(standalone document, fragment for ``\\input``) for one table."""
    spec = table.spec
    tabular = render_tabular(table, paper_lookup(spec.number))
    caption = (
        rf"{latex_escape(spec.heading)}: {latex_escape(spec.title)} "
        rf"Each metric: the paper's number, then \textcolor{{{OURS_COLOR}}}{{ours}}. "
        + describe_context(table, datasets)
        + "."
        + (f" {latex_escape(spec.note)}" if spec.note else "")
    )
    label = label or f"tab:rasa-{spec.number}"
    fragment = "\n".join(
        [
            "% generated by `rasa report`; needs " + ", ".join(PREAMBLE_PACKAGES),
            r"\begin{table}[tbp]",
            r"\centering\small",
            r"\begin{threeparttable}",
            rf"\caption{{{caption}}}\label{{{label}}}",
            tabular,
            r"\end{threeparttable}",
            r"\end{table}",
            "",
        ]
    )
    standalone = "\n".join(
        [
            "% generated by `rasa report`: compile with pdflatex",
            r"\documentclass[border=8pt,varwidth=\maxdimen]{standalone}",
            *(rf"\usepackage{{{p}}}" for p in PREAMBLE_PACKAGES),
            r"\captionsetup{font=small,labelformat=empty,justification=raggedright}",
            r"\begin{document}",
            r"\small",
            r"\begin{threeparttable}",
            rf"\captionof{{table}}{{{caption}}}",
            tabular,
            r"\end{threeparttable}",
            r"\end{document}",
            "",
        ]
    )
    return standalone, fragment


def table_slug(table: OurTable) -> str:
    """File-name part for a context (empty for a table without runs)."""
    values = [str(v) for v in table.context.values() if v not in (None, "")]
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", "_".join(values)).strip("-")


def comparison_rows(table: OurTable) -> list[dict[str, Any]]:
    """Long-format rows of every cell where we have a number: table, context, dataset, method,
    metric, paper value (None for '-'), our mean, std and number of seeds (for CSV/DVC)."""
    spec = table.spec
    paper = paper_lookup(spec.number)
    ctx = ";".join(f"{k}={v}" for k, v in table.context.items() if v is not None)
    out = []
    for (dkey, method), cells in table.cells.items():
        for col, cell in cells.items():
            dataset, metric = col.split(":", 1) if ":" in col else (dkey, col)
            out.append(
                {
                    "table": spec.number,
                    "context": ctx,
                    "dataset": dataset,
                    "method": method,
                    "metric": metric,
                    "paper": paper.get((dataset, method, metric)),
                    "ours_mean": round(cell.mean, 4),
                    "ours_std": None if cell.std is None else round(cell.std, 4),
                    "n_seeds": cell.n,
                }
            )
    return out
