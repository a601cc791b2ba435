"""Our runs gathered into the cells of the report's tables (declared in
:mod:`rasa.report.tables`), beside the published numbers each table shows.

:func:`build_our_tables` groups the runs of one split by a table's context, assigns them to
rows by the table's rules, keeps one run per seed and aggregates each metric into a
:class:`Cell` (mean, sample std, count); :func:`paper_lookup` gives the numbers of the paper
column; :func:`comparison_rows` the long format of ``comparison.csv``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rasa.report.paper import load_paper_results
from rasa.report.results import Run, sweep_point
from rasa.report.tables import ALL_SPECS, TableSpec


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
    if not spec.in_paper:
        return [(d, r.group, r.method) for d in spec.own_datasets for r in spec.own_rows]
    df = load_paper_results()
    sub = df[df.table == number]
    rows = list(dict.fromkeys(zip(sub.dataset, sub.group, sub.method, strict=True)))
    if spec.datasets_in_columns:
        seen = dict.fromkeys(m for _, _, m in rows)
        return [("", "", m) for m in seen]
    return rows


def paper_lookup(number: int | str) -> dict[tuple[str, str, str], float]:
    """(dataset, row, metric) -> the published number shown in a table's paper column."""
    spec = ALL_SPECS[number]
    if not spec.in_paper:
        out = {}
        for row in spec.own_rows:
            for dkey, ref in row.references.items():
                for metric in spec.metrics:
                    value = ref.value(metric)
                    if value is not None:
                        out[(dkey, row.method, metric)] = value
        return out
    df = load_paper_results()
    sub = df[df.table == number]
    return {
        (d, m, k): float(v)
        for d, m, k, v in zip(sub.dataset, sub.method, sub.metric, sub.value, strict=True)
    }


def build_our_tables(number: int | str, runs: Sequence[Run], split: str = "test") -> list[OurTable]:
    """Group runs of ``split`` into one :class:`OurTable` per context; no matching run gives a
    single empty table (so the paper's numbers are still shown). ``number``: a key of
    :data:`~rasa.report.tables.ALL_SPECS` (1-8, or ``"weak"``)."""
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
        for rule in spec.row_rules:
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
    if spec.in_paper:
        return list(rows)
    present = {d for d, _ in by_row} or {spec.own_datasets[0]}
    return [r for r in rows if r[0] in present]


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
