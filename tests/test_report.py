"""Report: the paper's numbers as data, tables with ours beside them, figures, `rasa report`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from rasa.cli import main
from rasa.errors import DataError
from rasa.report import figures
from rasa.report.aggregate import aggregate, build_our_tables
from rasa.report.curves import (
    head_accuracy_by_epoch,
    head_accuracy_markdown,
    plot_run_curves,
    read_curves,
    read_run,
)
from rasa.report.latex import latex_escape, method_label, render_table
from rasa.report.paper import CSV_PATH, FIG4, KEY, load_paper_results, paper_value, table_frame
from rasa.report.results import (
    Run,
    dataset_key,
    find_metrics_files,
    load_runs,
    run_from_record,
    sweep_point,
)
from rasa.report.tables import SPECS, TABLE4_VARIANTS


def record(r1=10.0, mAP=5.0, **meta):
    meta = {"dataset": "synth-cuhk", "backbone": "tiny", "variant": "m-rtd", "seed": 0,
            "split": "test", **meta}  # fmt: skip
    return {"r1": r1, "r5": 30.0, "r10": 40.0, "mAP": mAP, "mINP": 1.0, "meta": meta}


# ---- paper numbers -------------------------------------------------------------------------
def test_paper_csv_is_complete_and_clean():
    raw = pd.read_csv(CSV_PATH)
    assert list(raw.columns) == ["table", "dataset", "method", "group", "metric", "value", "source"]
    assert not raw.duplicated(list(KEY)).any()
    assert raw.value.between(0, 100).all()
    assert raw.source.str.contains("rasa_paper.txt Table").all()
    # every non-'-' cell of Tables 1-8 (counted by hand from the paper)
    counts = raw.groupby("table").size().to_dict()
    assert counts == {1: 54, 2: 39, 3: 33, 4: 40, 5: 84, 6: 52, 7: 36, 8: 62}


def test_paper_spot_checks_and_benchmarks():
    assert paper_value(4, "cuhk", "MLM + m-RTD", "r1") == 76.51
    assert paper_value(8, "cuhk", "RaSa_TCL", "r1") == 73.23
    assert paper_value(1, "cuhk", "GNA-RNN", "r5") is None  # '-' in the paper
    assert paper_value(5, "coco", "BLIP", "ir_r10") == 91.80
    assert paper_value(6, "flowers", "RaSa (Ours)", "ir_ap50") == 84.3
    assert paper_value(7, "icfg->cuhk", "RaSa (Ours)", "r10") == 79.58
    # RaSa's main numbers as listed by rasa_benchmarks.txt (paperswithcode leaderboards)
    bench = {"cuhk": (76.51, 90.29, 94.25, 69.38), "icfg": (65.28, 80.40, 85.12, 41.29),
             "rstp": (66.90, 86.50, 91.35, 52.31)}  # fmt: skip
    for table, (ds, vals) in zip((1, 2, 3), bench.items(), strict=True):
        got = tuple(paper_value(table, ds, "RaSa (Ours)", m) for m in ("r1", "r5", "r10", "mAP"))
        assert got == vals
    # Table 8 repeats Table 1's comparison rows
    t1, t8 = load_paper_results().query("table == 1"), load_paper_results().query("table == 8")
    shared = t1.merge(t8, on=["method", "metric"], suffixes=("_1", "_8"))
    assert len(shared) == 46 and (shared.value_1 == shared.value_8).all()


def test_table_frame_keeps_paper_order():
    df = table_frame(4)
    assert list(df.method) == list(TABLE4_VARIANTS)
    assert list(df.group.unique()) == ["CL", "+RA", "++SA"]
    assert math.isnan(table_frame(1).set_index("method").loc["GNA-RNN", "r5"])


def test_table4_rows_match_variant_registry():
    from rasa.variants import VARIANTS, list_variants

    assert list(TABLE4_VARIANTS.values()) == list(list_variants())
    for label, name in TABLE4_VARIANTS.items():
        assert VARIANTS[name].label == label


def test_fig4_defaults_from_paper_text():
    assert {k: p.default for k, p in FIG4.items()} == {
        "p_w": 0.1, "p_m": 0.3, "lambda1": 0.5, "lambda2": 0.5, "lambda3": 0.5,
    }  # fmt: skip
    assert all(p.grid is None and "not in the text" in p.source for p in FIG4.values())


# ---- records and aggregation ------------------------------------------------------------------
def test_run_from_record_maps_metric_names():
    run = run_from_record({**record(), "i2t": {"r1": 7.0}, "ap50": 3.0})
    assert run.values["ir_r1"] == run.values["r1"] == 10.0
    assert run.values["tr_r1"] == 7.0 and run.values["ir_ap50"] == 3.0
    assert run.dataset_key == "cuhk"
    cross = run_from_record(record(dataset="synth-icfg", source_dataset="synth-cuhk"))
    assert cross.dataset_key == "cuhk->icfg" and cross.dataset == "synth-cuhk->synth-icfg"
    assert [dataset_key(n) for n in ("cuhk-pedes", "rstpreid", "toy")] == ["cuhk", "rstp", None]


@pytest.mark.parametrize(
    "bad, what",
    [({"r1": 1.0}, "missing key"), ({**record(), "r1": 120.0}, "[0, 100]"),
     ({**record(), "r5": "x"}, "not a number"), ([1, 2], "expected a metrics object")],
)  # fmt: skip
def test_bad_records_raise(bad, what):
    with pytest.raises(DataError, match=f"m.json.*{what}" if what[0] != "[" else "m.json"):
        run_from_record(bad, "m.json")


def test_aggregate_mean_sample_std():
    c = aggregate([10.0, 20.0])
    assert (c.mean, c.n) == (15.0, 2) and c.std == pytest.approx(math.sqrt(50))
    assert aggregate([3.0]).std is None and aggregate([]) is None


# ---- tables ------------------------------------------------------------------------------------
def test_table4_cells_seeds_and_caption():
    runs = [run_from_record(record(r1=r, variant="cl", seed=s, suite="quick"))
            for s, r in enumerate((10.0, 20.0))]  # fmt: skip
    runs.append(run_from_record(record(r1=33.333, variant="m-rtd", suite="quick")))
    runs.append(run_from_record(record(r1=99.0, variant="m-rtd", split="val", suite="quick")))
    sweep = {"param": "p_w", "value": 0.3}
    runs.append(run_from_record(record(r1=98.0, variant="m-rtd", suite="quick", sweep=sweep)))
    (table,) = build_our_tables(4, runs)
    assert table.cells[("cuhk", "ITC + IMC")]["r1"].n == 2
    cell = table.cells[("cuhk", "MLM + m-RTD")]["r1"]
    assert (cell.mean, cell.n) == (33.333, 1)  # the val run and the sweep run are left out
    doc, fragment = render_table(table, {"synth-cuhk": "SynthPEDES-CUHK (120 ids)"})
    assert r"15.00\,$\pm$\,7.07" in doc and "33.33" in doc and "76.51" in doc
    assert "suite quick" in doc and "SynthPEDES-CUHK (120 ids)" in doc and "validation" in doc
    assert r"\textit{m}-RTD" in doc and r"\begin{table}" in fragment and r"\documentclass" in doc
    row = next(ln for ln in doc.splitlines() if "& MLM &" in ln)
    assert row.count("--") == 4  # no MLM run: every ours cell empty


def test_tables_split_by_context_and_backbone_rows():
    runs = [run_from_record(record(backbone=b)) for b in ("tiny", "minilm")]
    assert len(build_our_tables(1, runs)) == 2  # one table per backbone
    (t8,) = build_our_tables(8, runs)  # Table 8: backbones are rows
    assert t8.extra_rows == [("cuhk", "RaSa_TINY"), ("cuhk", "RaSa_MINILM")]
    doc, _ = render_table(t8)
    assert r"RaSa$_{\mathrm{TINY}}$" in doc and r"RaSa$_{\mathrm{TCL}}$" in doc


def test_table7_cross_dataset_and_empty_tables():
    runs = [run_from_record(record(r1=12.5, dataset="synth-icfg", source_dataset="synth-cuhk"))]
    (t7,) = build_our_tables(7, runs)
    assert t7.cells[("cuhk->icfg", "RaSa (Ours)")]["r1"].mean == 12.5
    for number in SPECS:  # every table renders even without runs
        (empty,) = build_our_tables(number, [])
        doc, _ = render_table(empty)
        assert "No run of ours" in doc and doc.count(r"\begin{tabular}") == 1


def test_latex_escape_and_labels():
    assert latex_escape("a_b & 50% #1 {x}") == r"a\_b \& 50\% \#1 \{x\}"
    assert (
        latex_escape("C→I ~^\\")
        == r"C$\rightarrow$I \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )
    assert method_label("p-ITM + PRD") == r"\textit{p}-ITM + PRD"
    assert method_label("C2A2") == r"C$_2$A$_2$"


# ---- figures -----------------------------------------------------------------------------------
def test_sweep_points_from_meta_and_name():
    runs = [
        run_from_record(record(r1=1.0, sweep={"param": "p_w", "value": 0.3})),
        run_from_record(record(r1=2.0, seed=1, sweep={"param": "p_w", "value": 0.3})),
        run_from_record(record(r1=3.0, experiment="synth-cuhk-tiny-m-rtd-loss.p_mask_rtd=0.5")),
        run_from_record(record(r1=4.0)),  # the default setting: every swept panel's default
    ]
    series = figures.sweep_series(runs)
    assert series == {"p_w": {0.1: [4.0], 0.3: [1.0, 2.0]}, "p_m": {0.3: [4.0], 0.5: [3.0]}}
    with pytest.raises(DataError, match="unknown sweep parameter"):
        sweep_point(run_from_record(record(sweep={"param": "lr", "value": 1})))
    # a suite of sweep points without the default run (it lies in another part): no empty point
    only_sweeps = runs[:3]
    assert figures.sweep_series(only_sweeps) == {"p_w": {0.3: [1.0, 2.0]}, "p_m": {0.5: [3.0]}}


def _images(root, n=12):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (16, 32), (20 * i, 100, 50)).save(root / f"{i}.png")


def _topk(root, n_queries=3):
    queries = [{"caption_index": c, "caption": f"a person in a red coat number {c} " * 4,
                "pid": c, "topk_images": [f"{(c + j) % 12}.png" for j in range(10)],
                "topk_pids": [c if j == 2 else 99 for j in range(10)]}
               for c in range(n_queries)]  # fmt: skip
    return {"split": "test", "k": 10, "image_root": str(root), "queries": queries}


def test_fig4_fig5_written(tmp_path):
    runs = [run_from_record(record(r1=float(v * 10), sweep={"param": "lambda3", "value": v}))
            for v in (0.1, 0.5, 1.0)]  # fmt: skip
    paths = figures.plot_fig4(runs, tmp_path / "fig4")
    _images(tmp_path / "imgs")
    doc = _topk(tmp_path / "imgs")
    paths += figures.plot_fig5([("a", doc), ("b", doc)], tmp_path / "fig5", tmp_path / "imgs")
    assert [p.suffix for p in paths] == [".png", ".pdf", ".jpg"]  # Fig. 5: photographs, JPEG
    assert all(p.stat().st_size > 1000 for p in paths)
    doc["queries"][0]["topk_images"][0] = "missing.png"
    with pytest.raises(DataError, match="missing.png"):
        figures.plot_fig5([("", doc)], tmp_path / "bad", tmp_path / "imgs")


def test_read_curves(tmp_path):
    (tmp_path / "curve").mkdir()
    (tmp_path / "curve" / "train.csv").write_text(
        "step,loss,loss_cl,acc_itm,base_itm\n1,2.0,1.0,0.5,0.667\n2,1.5,0.8,nan,nan\n"
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"val_curve": [{"epoch": 1, "r1": 5.0}]}))
    tsv = tmp_path / "curve" / "plots" / "metrics" / "train" / "loss_itm.tsv"  # dvclive layout
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tloss_itm\n0\t0.7\n1\t0.6\n")
    curves = read_curves(tmp_path)
    assert curves["train/loss_itm"] == [(0.0, 0.7), (1.0, 0.6)]
    assert curves["train/loss"] == [(1.0, 2.0), (2.0, 1.5)]
    assert curves["val/r1 (per epoch)"] == [(1.0, 5.0)]
    run = read_run(tmp_path)
    assert plot_run_curves(run, tmp_path / "c")[0].stat().st_size > 1000  # with a 4th panel
    # no evaluation step to tell epochs apart: one bin; NaN steps (nothing counted) skipped
    assert head_accuracy_by_epoch(run) == {"itm": [(1, 0.5, 0.667)]}
    (tmp_path / "config.yaml").write_text("variant: m-rtd\n")
    assert "| m-rtd | ITM | 1 | 50.0 (66.7) |" in head_accuracy_markdown([read_run(tmp_path)])
    # a Fig. 4 sweep point is not one of the variant's runs at the default setting
    (tmp_path / "config.yaml").write_text("variant: m-rtd\nsweep: {param: p_w, value: 0.3}\n")
    assert head_accuracy_markdown([read_run(tmp_path)]) == ""


# ---- CLI ----------------------------------------------------------------------------------------
def test_rasa_report_end_to_end(tmp_path, monkeypatch):
    runs_dir = tmp_path / "runs"
    for seed in (0, 1):
        (runs_dir / f"s{seed}").mkdir(parents=True)
        (runs_dir / f"s{seed}" / "test.json").write_text(
            json.dumps(record(r1=20.0 + seed, seed=seed))
        )
    _images(tmp_path / "imgs")
    (runs_dir / "s0" / "topk.json").write_text(json.dumps(_topk(tmp_path / "imgs", 2)))
    params = tmp_path / "params.yaml"
    params.write_text(
        "data:\n  datasets:\n    synth-cuhk: {source: synth, preset: cuhk, ids: 120}\n"
    )
    assert len(find_metrics_files([runs_dir])) == 3
    assert len(load_runs(find_metrics_files([runs_dir]))[0]) == 2

    out = tmp_path / "results"
    monkeypatch.chdir(tmp_path)  # not a git repository
    rc = main(["report", "--results", str(runs_dir), "--out", str(out), "--params", str(params),
               "--suite", "quick"])  # fmt: skip
    assert rc == 0
    readme = (out / "README.md").read_text()
    assert "not in a git repository" in readme and "sha256" in readme
    assert "table1-synth-cuhk-tiny-quick.tex" in readme and "fig5-s0.jpg" in readme
    assert "Not metrics files" not in readme  # the top-k file is Fig. 5's, not a stray
    t1 = (out / "tables" / "table1-synth-cuhk-tiny-quick.tex").read_text()
    assert r"20.50\,$\pm$\,0.71" in t1 and "SynthPEDES-CUHK (120 ids, seed 0)" in t1
    assert (out / "tables" / "table4-synth-cuhk-tiny-quick_fragment.tex").is_file()
    assert (out / "figures" / "fig5-s0.jpg").stat().st_size > 1000
    assert not list(out.rglob(".*.tmp"))  # atomic writes left nothing behind
    comp = pd.read_csv(out / "comparison.csv")
    row = comp[(comp.table.astype(str) == "1") & (comp.metric == "r1")].iloc[0]
    assert (row.method, row.paper, row.ours_mean, row.n_seeds) == ("RaSa (Ours)", 76.51, 20.5, 2)


def test_rasa_report_bad_results_dir(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "nope" in capsys.readouterr().err


def test_git_commit_ignores_what_the_dag_writes_and_warns_on_code(tmp_path, capsys):
    """The report's commit: DAG outputs (results/, dvc.lock, ...) and prose (notes/, *.md) do
    not make it dirty; uncommitted code or params do, loudly."""
    import subprocess

    from rasa.report.build import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "notes").mkdir()
    for f in ("results/m.json", "dvc.lock", "params.yaml", "notes/n.txt", "README.md"):
        (tmp_path / f).write_text("a\n")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    (tmp_path / "results/m.json").write_text("b\n")
    (tmp_path / "dvc.lock").write_text("b\n")
    (tmp_path / "notes/n.txt").write_text("b\n")
    (tmp_path / "README.md").write_text("b\n")
    assert git_commit(tmp_path) == head
    assert "WARNING" not in capsys.readouterr().err
    (tmp_path / "params.yaml").write_text("b\n")
    assert git_commit(tmp_path) == head + "-dirty"
    assert "params.yaml" in capsys.readouterr().err


def test_first_stage_vs_reranked_table_and_run_columns():
    """Per variant over seeds: first stage, re-ranked at the share of the gallery and at k_test,
    and the gains; one-stage variants (cl, k = 0) are left out; the runs table has both.
    Transfers and sweep points get rows of their own."""
    from rasa.report.build import reranking_section, runs_section

    def two_stage(seed, first, share, at_k, variant="m-rtd", k=128, **meta):
        rec = record(r1=at_k, seed=seed, variant=variant, **meta)
        rec.update(k=k, first_stage={"r1": first})
        if k:  # rasa evaluate re-ranks at the share only with an ITM head
            rec["at_fraction"] = {"r1": share, "k": 10}
        return run_from_record(rec, f"{variant}-{seed}.json")

    runs = [two_stage(0, 40.0, 44.0, 43.0), two_stage(1, 42.0, 43.0, 46.0),
            two_stage(0, 47.0, 47.0, 47.0, variant="cl", k=0),
            two_stage(0, 30.0, 33.0, 31.0, dataset="synth-icfg", source_dataset="synth-cuhk"),
            two_stage(0, 50.0, 51.0, 52.0, sweep={"param": "p_w", "value": 0.3})]  # fmt: skip
    table = "\n".join(reranking_section(runs))
    assert "| synth-cuhk->synth-icfg | tiny | rasa | m-rtd | 1 | 30.00 | 33.00 (10) |" in table
    assert "| synth-cuhk | tiny | rasa | m-rtd (p_w = 0.3) | 1 | 50.00 | 51.00 (10) |" in table
    rows = [line.split("|")[1:5] for line in table.splitlines() if line.startswith("| synth")]
    assert [r[3].strip() for r in rows] == ["m-rtd", "m-rtd (p_w = 0.3)", "m-rtd"]  # cuhk, ->icfg
    row = next(line for line in table.splitlines() if "| m-rtd |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[4] == "2"  # n
    assert cells[5] == "41.00 ± 1.41"  # first stage
    assert cells[6] == "43.50 ± 0.71 (10)" and cells[7] == "44.50 ± 2.12 (128)"
    assert cells[8] == "2.50 ± 2.12" and cells[9] == "3.50 ± 0.71"  # gains
    assert "| cl |" not in table
    runs_md = "\n".join(runs_section(runs, []))
    assert "| 40.00 | 44.00 (k=10) | 43.00 (k=128) |" in runs_md
    assert "| 47.00 |  | 47.00 |" in runs_md  # cl: one stage, no k


def test_runs_table_names_a_transfer_after_its_files():
    """A cross-dataset evaluation is not listed under its source experiment's bare name."""
    from rasa.report.build import runs_section

    meta = {
        "experiment": "icfg-m-rtd-seed0",
        "dataset": "synth-cuhk-300",
        "backbone": "tiny",
        "variant": "m-rtd",
        "seed": 0,
    }
    own = Run(values={"r1": 30.0, "mAP": 25.0}, meta={**meta, "dataset": "synth-icfg-300"})
    moved = Run(values={"r1": 60.0, "mAP": 50.0}, meta={**meta, "source_dataset": "synth-icfg-300"})
    assert own.name == "icfg-m-rtd-seed0"
    assert moved.name == "icfg-m-rtd-seed0--on-synth-cuhk-300"
    rows = [line for line in runs_section([own, moved], []) if line.startswith("| icfg")]
    assert rows[0].startswith("| icfg-m-rtd-seed0 | synth-icfg-300 |")
    assert rows[1].startswith(
        "| icfg-m-rtd-seed0--on-synth-cuhk-300 | synth-icfg-300->synth-cuhk-300 |"
    )


def test_fig5_draws_the_first_seed_of_each_variant_and_no_sweep_point():
    from rasa.report.build import Report, fig5_runs

    def run(name, **meta):
        meta = {"dataset": "synth-cuhk-300", "backbone": "tiny", "variant": "m-rtd", **meta}
        return Run(values={"r1": 1.0}, meta=meta, path=f"results/metrics/{name}.json")

    runs = [
        run("m-seed1", seed=1), run("m-seed0", seed=0), run("cl-seed2", seed=2, variant="cl"),
        run("sweep", seed=0, sweep={"param": "p_w", "value": 0.3}),
        run("m-seed0--on-icfg", seed=0, dataset="synth-icfg-300",
            source_dataset="synth-cuhk-300"),
    ]  # fmt: skip
    names = ["m-seed1", "m-seed0", "cl-seed2", "sweep", "m-seed0--on-icfg", "no-metrics"]
    report = Report(readme=Path("README.md"))
    chosen = fig5_runs([(n, Path(f"results/topk/{n}.json")) for n in names], runs, report)
    assert [label for label, _ in chosen] == ["m-seed0", "cl-seed2", "m-seed0--on-icfg",
                                              "no-metrics"]  # fmt: skip
    assert len(report.notes) == 1 and "m-seed1, sweep" in report.notes[0]


def test_saved_figures_are_the_same_bytes_on_a_rerun(tmp_path):
    runs = [run_from_record(record(r1=float(v * 10), sweep={"param": "lambda3", "value": v}))
            for v in (0.1, 0.5)]  # fmt: skip
    first = [p.read_bytes() for p in figures.plot_fig4(runs, tmp_path / "a")]
    again = [p.read_bytes() for p in figures.plot_fig4(runs, tmp_path / "a")]
    assert first == again and b"CreationDate" not in first[1]
