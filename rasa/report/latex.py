"""LaTeX writing of the report's tables: booktabs, each metric as two sub-columns "paper |
ours", a caption naming the suite, dataset and backbone our numbers come from (checkpoint
selected on the validation split, test split evaluated once), mean +- std and the number of
seeds where several ran, '--' where we have no run (or the paper prints '-').

Input: an :class:`~rasa.report.aggregate.OurTable` (rows and cells of one table and context);
output: a standalone document (compiles with pdflatex) and a fragment to ``\\input``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from rasa.report.aggregate import Cell, OurTable, paper_lookup, paper_rows
from rasa.report.tables import DATASET_LABELS, METRIC_LABELS, TableSpec

PREAMBLE_PACKAGES = ("booktabs", "multirow", "makecell", "threeparttable", "xcolor", "caption")
OURS_COLOR = "blue!55!black"


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
