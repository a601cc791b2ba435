"""Report: which of our runs fills which cell (seeds, sweeps, cross-dataset, CMMT, Tables 5-6),
the weakly-vs-supervised table, and `rasa report --runs` (training curves, pseudo labels)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from rasa.cli import main
from rasa.errors import DataError
from rasa.report import curves, figures
from rasa.report.aggregate import build_our_tables, comparison_rows
from rasa.report.latex import render_table
from rasa.report.paper import load_other_results, other_value, paper_value
from rasa.report.results import load_runs
from rasa.report.tables import SPECS, WEAK_SPEC


def metrics(r1, *, r5=50.0, r10=60.0, mAP=40.0, **meta):
    """A metrics JSON as `rasa evaluate` writes it (meta as rasa/engine/evaluate.py builds)."""
    meta = {"experiment": "e", "dataset": "synth-cuhk-300", "backbone": "tiny",
            "variant": "m-rtd", "seed": 0, "method": "rasa", **meta}  # fmt: skip
    return {"r1": r1, "r5": r5, "r10": r10, "mAP": mAP, "mINP": 1.0, "meta": meta}


def load(tmp_path, records):
    """Write each record to its own file (as results/metrics/<experiment>.json) and load."""
    files = []
    for i, rec in enumerate(records):
        f = tmp_path / "metrics" / f"{i:02d}.json"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(rec))
        files.append(f)
    runs, skipped = load_runs(files)
    assert not skipped
    return runs


def cell(table, dataset, method, metric="r1"):
    return table.cells.get((dataset, method), {}).get(metric)


@pytest.fixture
def grid(tmp_path):
    """cl and m-rtd over three seeds, a p_w sweep (two seeds), a CMMT run whose config says
    variant cl, and trained-on-CUHK / tested-on-ICFG runs of both directions."""
    recs = [metrics(10.0 + s, variant="cl", seed=s) for s in range(3)]
    recs += [metrics(20.0 + 2 * s, seed=s) for s in range(3)]
    recs += [metrics(90.0 + s, seed=s, sweep={"param": "p_w", "value": 0.3}) for s in range(2)]
    recs += [metrics(5.0, variant="cl", method="cmmt", seed=0),
             metrics(7.0, variant="cl", method="cmmt", seed=1)]  # fmt: skip
    recs += [metrics(12.0, dataset="synth-icfg-300", source_dataset="synth-cuhk-300", seed=0),
             metrics(14.0, dataset="synth-icfg-300", source_dataset="synth-cuhk-300", seed=1),
             metrics(16.0, dataset="synth-cuhk-300", source_dataset="synth-icfg-300")]  # fmt: skip
    return load(tmp_path, recs)


def test_table4_seeds_sweeps_and_cmmt_excluded(grid):
    (t4,) = build_our_tables(4, grid)
    cl = cell(t4, "cuhk", "ITC + IMC")
    assert (cl.mean, cl.std, cl.n) == (11.0, 1.0, 3)  # the CMMT runs (variant cl) stay out
    full = cell(t4, "cuhk", "MLM + m-RTD")
    assert (full.mean, full.std, full.n) == (22.0, 2.0, 3)  # the sweep runs stay out
    assert t4.extra_rows == [] and len(t4.runs) == 6
    assert {r.method for r in t4.runs} == {"rasa"}
    (t1,) = build_our_tables(1, grid)  # Table 1: m-rtd on CUHK only, no cross-dataset run
    assert cell(t1, "cuhk", "RaSa (Ours)").n == 3 and cell(t1, "cuhk", "RaSa (Ours)").mean == 22


def test_sweep_runs_are_fig4_points_only(grid):
    series = figures.sweep_series(grid)
    assert series == {"p_w": {0.1: [20.0, 22.0, 24.0], 0.3: [90.0, 91.0]}}  # no CMMT, no cl


def test_table7_pairs_from_meta(grid):
    (t7,) = build_our_tables(7, grid)
    c2i = cell(t7, "cuhk->icfg", "RaSa (Ours)")
    assert (c2i.mean, c2i.n) == (13.0, 2)
    assert cell(t7, "icfg->cuhk", "RaSa (Ours)").mean == 16.0
    assert t7.extra_rows == []
    doc, _ = render_table(t7)
    c2i_row, i2c_row = [ln for ln in doc.splitlines() if "& RaSa (Ours) &" in ln]
    assert "50.59 & \\textcolor{blue!55!black}{13.00\\,$\\pm$" in c2i_row  # paper C->I, ours
    assert "50.70 & \\textcolor{blue!55!black}{16.00}" in i2c_row
    for number in (1, 2, 4, 8):  # cross-dataset runs fill no in-domain table
        assert all(not r.source_dataset for t in build_our_tables(number, grid) for r in t.runs)


def test_weak_table_cells_and_paper_column(grid):
    (weak,) = build_our_tables("weak", grid)
    cmmt = cell(weak, "cuhk", "CMMT")
    assert (cmmt.mean, cmmt.n) == (6.0, 2)
    assert cell(weak, "cuhk", "CL (ITC + IMC)").mean == 11.0
    assert cell(weak, "cuhk", "RaSa (MLM + m-RTD)").mean == 22.0
    assert weak.rows == [("cuhk", r.group, r.method) for r in WEAK_SPEC.own_rows]
    doc, fragment = render_table(weak)
    lines = {ln.split("&")[1].strip(): ln for ln in doc.splitlines() if ln.count("&") > 8}
    # paper numbers: CL and RaSa from Table 4; CMMT: no pinned number ('--')
    assert paper_value(4, "cuhk", "ITC + IMC", "r1") == 61.35
    assert "61.35" in lines["CL (ITC + IMC)"] and "76.51" in lines[r"RaSa (MLM + \textit{m}-RTD)"]
    assert lines["CMMT"].split("&")[2].strip() == "--" and r"6.00\,$\pm$\,1.41" in doc
    assert "not in the RaSa paper" in doc and r"\begin{table}" in fragment
    rows = pd.DataFrame(comparison_rows(weak))
    got = rows.set_index(["method", "metric"]).loc[("CMMT", "r1")]
    assert (got.table, got.ours_mean, got.n_seeds) == ("weak", 6.0, 2) and pd.isna(got.paper)


def test_weak_table_other_datasets_and_empty():
    (empty,) = build_our_tables("weak", [])
    assert [m for _, _, m in empty.rows] == ["CMMT", "CL (ITC + IMC)", "RaSa (MLM + m-RTD)"]
    doc, _ = render_table(empty)
    assert "No run of ours" in doc and "76.51" in doc


def test_a_new_report_table_is_one_declaration(grid, tmp_path, monkeypatch):
    """A table not in the paper, declared once, is aggregated, rendered and indexed."""
    from rasa.report.build import build_report
    from rasa.report.tables import ALL_SPECS, OwnRow, Reference, RowRule, TableSpec

    spec = TableSpec(
        "seeds",
        "CL vs RaSa over seeds.",
        ("r1", "mAP"),
        (),
        ("dataset",),
        own_rows=(
            OwnRow(
                "ours",
                RowRule("CL", {"variant": "cl"}),
                {"cuhk": Reference("cuhk", "ITC + IMC", 4)},
            ),
            OwnRow("ours", RowRule("RaSa", {"variant": "m-rtd"})),
        ),
        own_datasets=("cuhk",),
        index_name="Seeds",
    )
    monkeypatch.setitem(ALL_SPECS, "seeds", spec)
    (table,) = build_our_tables("seeds", grid)
    assert (cell(table, "cuhk", "CL").mean, cell(table, "cuhk", "CL").n) == (11.0, 3)
    assert cell(table, "cuhk", "RaSa").mean == 22.0 and table.rows[0] == ("cuhk", "ours", "CL")
    doc, _ = render_table(table)
    assert "61.35" in doc  # the paper's CL (Table 4) beside ours
    made = build_report([tmp_path / "metrics"], tmp_path / "out", params=None)
    index = made.readme.read_text()
    assert "- Seeds: [`tables/table-seeds-synth-cuhk-300.tex`]" in index
    assert (tmp_path / "out" / "tables" / "table-seeds-synth-cuhk-300.tex").is_file()


def test_other_results_csv(tmp_path):
    df = load_other_results()
    assert set(df.method) == {"CMMT"} and df.value.isna().all()  # the pinned notes give none
    assert df.source.str.contains("cmmt_weakly_supervised_notes.txt").all()
    assert other_value("cuhk", "CMMT", "r1") is None
    good = tmp_path / "o.csv"
    good.write_text("paper,dataset,method,metric,value,source\nX,cuhk,CMMT,r1,50.5,somewhere\n")
    assert other_value("cuhk", "CMMT", "r1", path=good) == 50.5
    bad = tmp_path / "bad.csv"
    bad.write_text("paper,dataset,method,metric,value,source\nX,cuhk,CMMT,r1,50.5,\n")
    with pytest.raises(DataError, match="bad.csv, row 2: every number needs a source"):
        load_other_results(bad)


def test_weak_table_on_icfg_uses_table2(tmp_path):
    runs = load(tmp_path, [metrics(3.0, dataset="synth-icfg", method="cmmt", variant="cmmt")])
    (weak,) = build_our_tables("weak", runs)
    assert [d for d, _, _ in weak.rows] == ["icfg"] * 3
    assert cell(weak, "icfg", "CMMT").mean == 3.0
    doc, _ = render_table(weak)
    assert "65.28" in doc  # RaSa (Ours) of Table 2


def test_tables5_6_from_karpathy_and_cub_flowers_shapes(tmp_path):
    recs = [
        {**metrics(30.0, r5=50.0, r10=60.0, dataset="synth-flickr-karpathy"),
         "i2t": {"r1": 41.0, "r5": 61.0, "r10": 71.0}},
        {**metrics(32.0, dataset="synth-flickr-karpathy", seed=1),
         "i2t": {"r1": 43.0, "r5": 63.0, "r10": 73.0}},
        {**metrics(20.0, dataset="synth-coco-karpathy"), "i2t": {"r1": 25.0, "r5": 35, "r10": 45}},
        {**metrics(11.0, dataset="synth-cub"), "i2t": {"r1": 12.5}, "ap50": 33.3},
        {**metrics(11.0, dataset="synth-flowers"), "i2t": {"r1": 14.5}, "ap50": 44.4},
        {**metrics(1.0, dataset="synth-cub", variant="cl"), "ap50": 9.9},  # not Table 6's row
    ]  # fmt: skip
    runs = load(tmp_path, recs)
    (t5,) = build_our_tables(5, runs)
    ours = t5.cells[("", "RaSa (Ours)")]
    assert ours["flickr30k:tr_r1"].mean == 42.0 and ours["flickr30k:tr_r1"].n == 2
    assert ours["flickr30k:ir_r1"].mean == 31.0 and ours["flickr30k:ir_r10"].mean == 60.0
    assert ours["coco:tr_r5"].mean == 35.0 and ours["coco:ir_r1"].mean == 20.0
    assert "cub:tr_r1" not in ours  # CUB/Flowers runs do not leak into Table 5
    (t6,) = build_our_tables(6, runs)
    ours6 = t6.cells[("", "RaSa (Ours)")]
    assert {k: c.mean for k, c in ours6.items()} == {
        "cub:tr_r1": 12.5, "cub:ir_ap50": 33.3, "flowers:tr_r1": 14.5, "flowers:ir_ap50": 44.4,
    }  # fmt: skip
    for number in (1, 4, 7, 8):  # and nothing of theirs lands in the person-search tables
        assert all(not t.runs for t in build_our_tables(number, runs))
    doc, _ = render_table(t6)
    ours_row = next(ln for ln in doc.splitlines() if ln.startswith("RaSa (Ours) &"))
    assert ours_row.count("--") == 0 and "33.30" in ours_row and "44.40" in ours_row
    assert set(SPECS[5].datasets_in_columns) == {"flickr30k", "coco"}


# ---- training runs -----------------------------------------------------------------------
def _tsv(path, key, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{key}\n" + "".join(f"{s}\t{v}\n" for s, v in rows))


def make_run(root, name, *, variant="cl", method="rasa", seed=0, r1s=(5.0, 9.0), pseudo=None):
    """A checkpoints/<experiment>/ as the trainers write it (dvclive layout, metrics.json)."""
    d = root / name
    plots = d / "curve" / "plots" / "metrics"
    losses = ("loss", "loss_cl", "loss_cmpm", "loss_mine") if method == "cmmt" else (
        "loss", "loss_cl")  # fmt: skip
    for k in losses:
        _tsv(plots / "train" / f"{k}.tsv", k, [(10, 2.0), (20, 1.5), (30, 1.2)])
    _tsv(plots / "train" / "lr.tsv", "lr", [(10, 1e-4), (20, 5e-5), (30, 1e-5)])
    _tsv(plots / "train" / "temperature.tsv", "temperature", [(10, 0.07), (30, 0.06)])
    _tsv(plots / "val" / "r1.tsv", "r1", [(15 * (i + 1), r) for i, r in enumerate(r1s)])
    (d / "config.yaml").write_text(
        f"name: {name}\ndataset: synth-cuhk-300\nbackbone: tiny\nvariant: {variant}\n"
        f"seed: {seed}\nmethod: {method}\n"
    )
    doc = {**metrics(r1s[-1], variant=variant, method=method, seed=seed, experiment=name),
           "val_curve": [{"epoch": i + 1, "step": 15 * (i + 1), "r1": r}
                         for i, r in enumerate(r1s)]}  # fmt: skip
    if pseudo is not None:
        doc["pseudo_labels"] = pseudo
    (d / "metrics.json").write_text(json.dumps(doc))
    return d


PSEUDO = [
    {"epoch": 1, "seconds": 0.1,
     "image": {"clusters": 12, "outliers": 30, "samples": 100, "mplr_rescued": 7, "ari": 0.25},
     "text": {"clusters": 15, "outliers": 40, "samples": 300, "mplr_rescued": 11, "ari": 0.2},
     "pair": {"clusters": 14, "outliers": 20, "samples": 300, "ari": 0.3}},
    {"epoch": 3, "seconds": 0.1,
     "image": {"clusters": 20, "outliers": 10, "samples": 100, "mplr_rescued": 3, "ari": 0.5},
     "text": {"clusters": 22, "outliers": 12, "samples": 300, "mplr_rescued": 4, "ari": 0.45},
     "pair": {"clusters": 21, "outliers": 8, "samples": 300, "ari": 0.6123}},
]  # fmt: skip


def test_read_run_and_pseudo_table(tmp_path):
    d = make_run(tmp_path, "cmmt-s0", variant="cmmt", method="cmmt", pseudo=PSEUDO)
    run = curves.read_run(d)
    assert (run.experiment, run.label, run.method) == ("cmmt-s0", "cmmt", "cmmt")
    assert [v["epoch"] for v in run.val] == [1.0, 2.0] and run.val[1]["r1"] == 9.0
    assert run.curves["train/loss_cmpm"][0] == (10.0, 2.0)
    rows = curves.pseudo_label_rows(run)
    assert [r["ari_pair"] for r in rows] == [0.3, 0.6123] and rows[0]["rescued_text"] == 11
    md = curves.pseudo_label_markdown(run)
    assert md.splitlines()[3] == "| 3 | 0.500 | 0.450 | 0.612 | 20 | 22 | 10 | 12 | 3 | 4 |"
    doc, fragment = curves.pseudo_label_latex(run)
    assert "0.612" in doc and r"\begin{table}" in fragment and "adjusted Rand index" in doc
    paths = curves.plot_pseudo_labels(run, tmp_path / "p") + curves.plot_run_curves(
        run, tmp_path / "c"
    )
    assert all(p.stat().st_size > 1000 for p in paths)


def test_read_run_skips_and_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    assert curves.read_run(tmp_path / "empty") is None
    with pytest.raises(DataError, match="nope: training run directory not found"):
        curves.read_run(tmp_path / "nope")
    d = make_run(tmp_path, "bad")
    (d / "curve" / "plots" / "metrics" / "train" / "lr.tsv").write_text("step\tlr\n10\tx\n")
    with pytest.raises(DataError, match=r"lr.tsv, line 2: 'x' is not a number"):
        curves.read_run(d)
    d = make_run(tmp_path, "bad2")
    (d / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"bad2/metrics.json: not valid JSON"):
        curves.read_run(d)
    d = make_run(tmp_path, "bad3", method="cmmt", pseudo={"epoch": 1})
    with pytest.raises(DataError, match="key 'pseudo_labels': expected a list"):
        curves.read_run(d)


def test_rasa_report_runs(tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints"
    dirs = [make_run(ck, f"cl-s{s}", seed=s, r1s=(4.0 + s, 8.0 + s)) for s in (0, 1)]
    dirs.append(make_run(ck, "m-rtd-s0", variant="m-rtd", r1s=(6.0, 12.0)))
    dirs.append(make_run(ck, "cmmt-s0", variant="cl", method="cmmt", pseudo=PSEUDO))
    (ck / "not-started").mkdir()
    dirs.append(ck / "not-started")
    res = tmp_path / "results" / "metrics"
    res.mkdir(parents=True)
    for d in dirs[:-1]:  # evaluate's copies, as results/metrics/<experiment>.json
        (res / f"{d.name}.json").write_text((d / "metrics.json").read_text())
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    argv = ["report", "--results", str(res), "--out", str(out), "--params", "none.yaml",
            "--suite", "synth", "--runs", *map(str, dirs)]  # fmt: skip
    assert main(argv) == 0
    figs = {p.name for p in (out / "figures").iterdir()}
    for stem in ("curves-cl-s0", "curves-cl-s1", "curves-m-rtd-s0", "curves-cmmt-s0",
                 "pseudo-labels-cmmt-s0", "val-r1-synth-cuhk-300-tiny"):  # fmt: skip
        assert {f"{stem}.png", f"{stem}.pdf"} <= figs
    assert not any("not-started" in f for f in figs)
    tables = {p.name for p in (out / "tables").iterdir()}
    assert {"pseudo-labels-cmmt-s0.tex", "pseudo-labels-cmmt-s0_fragment.tex"} <= tables
    assert "table-weak-synth-cuhk-300-tiny-synth.tex" in tables
    readme = (out / "README.md").read_text()
    assert "## Training runs" in readme and "not-started`: no curve data, skipped" in readme
    assert "| 3 | 0.500 | 0.450 | 0.612 |" in readme
    assert "figures/val-r1-synth-cuhk-300-tiny.png" in readme and "cl, cmmt, m-rtd" in readme
    t4 = (out / "tables" / "table4-synth-cuhk-300-tiny-synth.tex").read_text()
    row = next(ln for ln in t4.splitlines() if "ITC + IMC" in ln)
    assert r"8.50\,$\pm$\,0.71" in row  # the two cl seeds; the CMMT run (variant cl) is not here
    weak = (out / "tables" / "table-weak-synth-cuhk-300-tiny-synth.tex").read_text()
    assert next(ln for ln in weak.splitlines() if "& CMMT &" in ln).count("9.00") == 1
    comp = pd.read_csv(out / "comparison.csv")
    assert set(comp.table.astype(str)) == {"1", "4", "8", "weak"}
