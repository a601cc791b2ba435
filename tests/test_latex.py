"""Generated tables compile with pdflatex and render (scripts/setup_latex.sh installs both).

Without pdflatex/pdftoppm the tests fail under CI (CI set) and are skipped otherwise.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import missing_tool

from rasa.report.aggregate import build_our_tables
from rasa.report.build import compile_latex
from rasa.report.latex import PREAMBLE_PACKAGES, render_table
from rasa.report.results import run_from_record


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        missing_tool(f"{', '.join(missing)} not installed (bash scripts/setup_latex.sh)")


def _runs():
    out = []
    for variant, r1s in (("cl", (10.0, 20.0)), ("m-rtd", (31.5,)), ("cmmt", (5.0, 6.0))):
        for seed, r1 in enumerate(r1s):
            meta = {"dataset": "synth-cuhk", "backbone": "tiny", "variant": variant,
                    "seed": seed, "split": "test", "suite": "quick", "experiment": "a_b&c%",
                    "method": "cmmt" if variant == "cmmt" else "rasa"}  # fmt: skip
            out.append(run_from_record({"r1": r1, "r5": 50, "r10": 60, "mAP": 25.0, "meta": meta}))
    return out


def _render_png(pdf: Path) -> Path:
    stem = pdf.with_suffix("")
    subprocess.run(["pdftoppm", "-png", "-r", "100", "-singlefile", "-f", "1", str(pdf), str(stem)],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    return stem.with_suffix(".png")


@pytest.mark.parametrize("number", [4, 5, "weak"])
def test_standalone_table_compiles_and_renders(tmp_path, number):
    _require("pdflatex", "pdftoppm")
    (table,) = build_our_tables(number, _runs())
    doc, _ = render_table(table, {"synth-cuhk": "SynthPEDES-CUHK (120 ids)"})
    tex = tmp_path / f"table{number}.tex"
    tex.write_text(doc, encoding="utf-8")
    pdf = tmp_path / f"table{number}.pdf"
    compile_latex(tex, pdf)
    png = _render_png(pdf)
    assert pdf.stat().st_size > 1000
    assert png.stat().st_size > 1000
    assert pdf.read_bytes().startswith(b"%PDF")


def test_pseudo_label_table_compiles(tmp_path):
    _require("pdflatex")
    from test_report_cells import PSEUDO, make_run

    from rasa.report.curves import pseudo_label_latex, read_run

    run = read_run(make_run(tmp_path, "cmmt_s0&x", variant="cmmt", method="cmmt", pseudo=PSEUDO))
    doc, _ = pseudo_label_latex(run)
    (tmp_path / "p.tex").write_text(doc, encoding="utf-8")
    compile_latex(tmp_path / "p.tex", tmp_path / "p.pdf")
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")


def test_fragment_inputs_into_an_article(tmp_path):
    _require("pdflatex")
    (table,) = build_our_tables(4, _runs())
    _, fragment = render_table(table)
    (tmp_path / "table4_fragment.tex").write_text(fragment, encoding="utf-8")
    uses = "\n".join(rf"\usepackage{{{p}}}" for p in PREAMBLE_PACKAGES)
    main = tmp_path / "paper.tex"
    main.write_text(
        rf"""\documentclass{{article}}
\usepackage[a4paper,landscape,margin=1cm]{{geometry}}
{uses}
\begin{{document}}
See Table~\ref{{tab:rasa-4}}.
\input{{table4_fragment}}
\end{{document}}
""",
        encoding="utf-8",
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
