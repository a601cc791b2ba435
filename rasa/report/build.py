"""The report ``rasa report`` writes (DESIGN.md "Reports"), one function per section of its
index ``README.md``:

- :func:`tables_section`: every table declared in :data:`rasa.report.tables.ALL_SPECS`, one
  file per context (``tables/<stem>[-context].tex`` standalone, ``..._fragment.tex`` to
  ``\\input``, PDFs with ``compile_pdf``) and ``comparison.csv`` (every number of ours beside
  the paper's, long format);
- :func:`fig4_section` (hyper-parameter sweeps) and :func:`fig5_section` (top-10 retrievals);
- :func:`training_runs_section`: per run its curves, per CMMT run its pseudo-label quality, per
  (dataset, backbone) the runs' validation R@1 (rasa/report/curves.py);
- :func:`runs_section`: one line per metrics file; :func:`header`: sources, git commit and the
  sha256 of params.yaml.

:func:`build_report` runs them in that order. All writes are atomic.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rasa.errors import ConfigError, DataError
from rasa.io import atomic_path, write_text
from rasa.report.results import Run


@dataclass
class Report:
    readme: Path
    outputs: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- helpers -------------------------------------------------------------------------------
# What the DAG itself writes: a change there is the run's output, not uncommitted code or params.
DAG_OUTPUTS = ("results/", "checkpoints/", "data/", "dvc.lock", "search/")
# Prose no number is computed from: editing it while the DAG runs does not make a report dirty.
PROSE = ("notes/", "docs/")


def _is_code_or_params(path: str) -> bool:
    return not (path.startswith(DAG_OUTPUTS + PROSE) or path.endswith(".md"))


def git_commit(cwd: str | Path = ".") -> str:
    """``git rev-parse HEAD`` of the code and params that made the report, or a note.

    "-dirty" is appended only when a tracked file outside the DAG's own outputs
    (:data:`DAG_OUTPUTS`) and prose (:data:`PROSE`, Markdown) differs from that commit: the
    report's numbers then come from uncommitted code or params, and a warning naming the files
    goes to stderr.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=cwd, capture_output=True, text=True, timeout=10).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "(not in a git repository)"
    changed = [line[3:] for line in status.splitlines() if len(line) > 3]
    code = [f for f in changed if _is_code_or_params(f)]
    if not code:
        return head
    shown = ", ".join(code[:8]) + (f" and {len(code) - 8} more" if len(code) > 8 else "")
    print(
        f"WARNING: the report's numbers come from uncommitted code or params ({shown}); "
        f"it records commit {head}-dirty. Commit, then re-run, for results that trace back.",
        file=sys.stderr,
    )
    return head + "-dirty"


def file_sha256(path: str | Path) -> str | None:
    path = Path(path)
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dataset_descriptions(params_path: str | Path) -> dict[str, str]:
    """Dataset name -> caption text from params.yaml (``SynthPEDES-CUHK (120 ids, seed 0)``)."""
    path = Path(params_path)
    if not path.is_file():
        return {}
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc
    out = {}
    datasets = (doc.get("data") or {}).get("datasets") or {}
    for name, spec in datasets.items():
        spec = spec or {}
        if spec.get("source") == "synth":
            preset = str(spec.get("preset", "")).upper()
            out[name] = f"SynthPEDES-{preset} ({spec.get('ids')} ids, seed {spec.get('seed', 0)})"
        else:
            out[name] = f"{name} (real release, {spec.get('source', '?')})"
    return out


def compile_latex(tex: Path, pdf: Path) -> None:
    """pdflatex ``tex`` in a temporary directory; the PDF replaces ``pdf`` atomically."""
    exe = shutil.which("pdflatex")
    if exe is None:
        raise ConfigError(
            "--compile needs pdflatex, which is not installed: run `bash scripts/setup_latex.sh` "
            "(Debian/Ubuntu) or install TeX Live with booktabs, multirow, makecell, "
            "threeparttable, xcolor, caption and standalone."
        )
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(tex, Path(tmp) / "table.tex")
        proc = subprocess.run(
            [exe, "-interaction=nonstopmode", "-halt-on-error", "table.tex"],
            cwd=tmp, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if proc.returncode != 0:
            errors = [ln for ln in proc.stdout.splitlines() if ln.startswith("!")]
            raise DataError(f"{tex}: pdflatex failed: {' '.join(errors[:3]) or proc.stdout[-500:]}")
        with atomic_path(pdf, suffix=".pdf") as dest:
            shutil.copy(Path(tmp) / "table.pdf", dest)


def _parse_topk_args(items: Sequence[str] | None, found: Sequence[str]) -> list[tuple[str, Path]]:
    if items:
        out = []
        for item in items:
            path, _, label = item.partition("=")
            out.append((label or _topk_label(Path(path)), Path(path)))
        return out
    return [(_topk_label(Path(f)), Path(f)) for f in found]


def _topk_label(path: Path) -> str:
    """results/topk/<experiment>.json -> experiment; <run dir>/topk.json -> run dir."""
    return path.stem if path.parent.name == "topk" else path.parent.name


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=-]+", "-", text).strip("-") or "run"


# ---- the report ------------------------------------------------------------------------------
def build_report(
    results: Sequence[str | Path],
    out: str | Path,
    *,
    params: str | Path | None = "params.yaml",
    suite: str | None = None,
    split: str = "test",
    compile_pdf: bool = False,
    topk: Sequence[str] | None = None,
    annotations: str | Path | None = None,
    n_queries: int = 3,
    training_runs: Sequence[str | Path] | None = None,
    pretrained: str | Path | None = None,
    parts: Sequence[str | Path] | None = None,
) -> Report:
    """Collect the metrics files under ``results`` and write every section into ``out``;
    ``pretrained``: the export folder of the pre-training the runs start from; ``parts``: the
    report folders of the parts an assembled suite was run in (:func:`parts_section`)."""
    from rasa.report.results import find_metrics_files, load_runs

    out = Path(out)
    files = find_metrics_files(results)
    runs, skipped = load_runs(files)
    if suite:
        runs = [r if r.get("suite") else replace(r, meta={**r.meta, "suite": suite}) for r in runs]
    datasets = dataset_descriptions(params) if params else {}
    report = Report(readme=out / "README.md")

    index = tables_section(runs, out, report, split=split, datasets=datasets,
                           compile_pdf=compile_pdf)  # fmt: skip
    index.append("\n## Figures\n")
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)  # always there: a declared output of the DAG
    index += fig4_section(runs, fig_dir, report)
    topk_found = [
        f for f in skipped if Path(f).name.startswith("topk") or Path(f).parent.name == "topk"
    ]
    topk_files = _parse_topk_args(topk, topk_found if topk is None else [])
    index += fig5_section(fig5_runs(topk_files, runs, report), fig_dir, report, annotations,
                          n_queries)  # fmt: skip
    # training runs: the named ones, and any run directory a metrics file sits in
    run_dirs = [Path(d) for d in training_runs or []]
    for r in runs:
        d = Path(r.path).parent
        if (d / "curve").is_dir() and d.resolve() not in {x.resolve() for x in run_dirs}:
            run_dirs.append(d)
    if pretrained:
        index += pretraining_section(Path(pretrained), out, report)
    index += reranking_section(runs)
    if parts:
        index += parts_section([Path(p) for p in parts], runs, params or "params.yaml", out,
                               report)  # fmt: skip
    if run_dirs:
        index += training_runs_section(run_dirs, out, report, compile_pdf)
    # top-k files are Fig. 5's input, not stray JSON: only the others are listed as skipped
    index += runs_section(runs, [f for f in skipped if f not in topk_found])
    if report.notes:
        index.append("\n## Notes\n")
        index += [f"- {n}" for n in report.notes]
    write_text(report.readme, "\n".join(header(results, runs, split, params) + index) + "\n")
    report.outputs.append(report.readme)
    return report


def tables_section(
    runs: Sequence[Run],
    out: Path,
    report: Report,
    *,
    split: str,
    datasets: dict[str, str],
    compile_pdf: bool,
) -> list[str]:
    """Every declared table per context, and ``comparison.csv``."""
    import pandas as pd

    from rasa.report.aggregate import build_our_tables, comparison_rows, table_slug
    from rasa.report.latex import render_table
    from rasa.report.tables import ALL_SPECS

    comparison: list[dict[str, Any]] = []
    index = ["## Tables\n"]
    index.append("Each metric: the paper's number, then ours (`--`: no run / not in the paper).\n")
    for number, spec in ALL_SPECS.items():
        if spec.index_intro:
            index.append(spec.index_intro)
        for table in build_our_tables(number, runs, split=split):
            comparison += comparison_rows(table)
            slug = table_slug(table)
            stem = spec.stem + (f"-{slug}" if slug else "")
            doc, fragment = render_table(table, datasets, label=f"tab:rasa-{stem}")
            tex = out / "tables" / f"{stem}.tex"
            write_text(tex, doc)
            write_text(out / "tables" / f"{stem}_fragment.tex", fragment)
            report.outputs += [tex, out / "tables" / f"{stem}_fragment.tex"]
            line = f"- {spec.name}: [`tables/{stem}.tex`](tables/{stem}.tex)"
            if compile_pdf:
                compile_latex(tex, tex.with_suffix(".pdf"))
                report.outputs.append(tex.with_suffix(".pdf"))
                line += f", [PDF](tables/{stem}.pdf)"
            ctx = ", ".join(f"{k}={v}" for k, v in table.context.items() if v is not None)
            line += f" — {len(table.runs)} run(s)" + (f" ({ctx})" if ctx else "")
            index.append(line)

    comparison_csv = out / "comparison.csv"
    with atomic_path(comparison_csv, suffix=".csv") as tmp:
        pd.DataFrame(comparison, columns=list(COMPARISON_COLUMNS)).to_csv(tmp, index=False)
    report.outputs.append(comparison_csv)
    index.append(
        f"- Every number of ours beside the paper's, long format: [`comparison.csv`](comparison.csv)"
        f" ({len(comparison)} rows)"
    )
    return index


def fig4_section(runs: Sequence[Run], fig_dir: Path, report: Report) -> list[str]:
    """Fig. 4 per (dataset, backbone, suite) that has sweep runs."""
    from rasa.report import figures
    from rasa.report.results import sweep_point

    index: list[str] = []
    if not any(sweep_point(r) is not None for r in runs):
        report.notes.append("Fig. 4: no sweep runs (meta.sweep or 'p_w=0.2' in the name)")
        index.append("- Fig. 4: no sweep runs among the results.")
        return index
    contexts: dict[tuple, list] = {}
    for r in runs:
        key = (r.dataset, r.get("backbone"), r.get("suite"))
        contexts.setdefault(key, []).append(r)
    for key, group in contexts.items():
        if not any(sweep_point(r) for r in group):
            continue
        stem = "fig4-" + _slug("_".join(str(k) for k in key if k))
        title = "Fig. 4: R@1 (test) vs hyper-parameters — " + ", ".join(str(k) for k in key if k)
        paths = figures.plot_fig4(group, fig_dir / stem, title=title)
        report.outputs += paths
        index.append(f"- Fig. 4 ({', '.join(str(k) for k in key if k)}): "
                     f"[`figures/{stem}.png`](figures/{stem}.png)")  # fmt: skip
    return index


def fig5_runs(
    topk_files: Sequence[tuple[str, Path]], runs: Sequence[Run], report: Report
) -> list[tuple[str, Path]]:
    """The top-k files Fig. 5 draws: as the paper, one model per row, so one run per dataset,
    backbone, method and variant (its first seed) and no sweep point. A top-k file without a
    metrics file of the same name is drawn. The others are named in a note."""
    by_stem = {Path(r.path).stem: r for r in runs}
    first: dict[tuple, tuple[Any, str]] = {}
    for label, _ in topk_files:
        run = by_stem.get(label)
        if run is None or run.get("sweep"):
            continue
        key = (run.dataset, run.get("backbone"), run.method, run.get("variant"))
        rank = (int(run.get("seed") or 0), label)  # a record without a seed ranks as seed 0
        if key not in first or rank < first[key]:
            first[key] = rank
    keep = {label for _, label in first.values()}
    chosen = [(lb, path) for lb, path in topk_files if lb in keep or lb not in by_stem]
    left = [lb for lb, _ in topk_files if lb not in keep and lb in by_stem]
    if left:
        report.notes.append(
            f"Fig. 5 draws the first seed of each dataset, backbone, method and variant; not "
            f"drawn ({len(left)} top-k files, other seeds and sweep points): {', '.join(left)}"
        )
    return chosen


def fig5_section(
    topk_files: Sequence[tuple[str, Path]],
    fig_dir: Path,
    report: Report,
    annotations: str | Path | None,
    n_queries: int,
) -> list[str]:
    """Fig. 5 per top-k file, and one comparison per group of runs on the same data."""
    from rasa.report import figures

    index: list[str] = []
    loaded: list[tuple[str, dict]] = []  # each top-k file read once, for both figures
    for label, path in topk_files:
        stem = "fig5-" + _slug(label)
        try:
            doc = figures.load_topk(path)
            loaded.append((label, doc))
            root = figures.resolve_image_root(doc, annotations)
            paths = figures.plot_fig5([("", doc)], fig_dir / stem, root, n_queries=n_queries)
        except DataError as exc:
            report.notes.append(f"Fig. 5 from {path} skipped: {exc}")
            index.append(f"- Fig. 5 from `{path}`: skipped ({exc})")
            continue
        report.outputs += paths
        index.append(f"- Fig. 5 ({label}): [`figures/{paths[0].name}`](figures/{paths[0].name})")
    # As in the paper: one row per model on the same queries, for runs on the same data.
    groups: dict[tuple[str, str], list[tuple[str, dict]]] = {}
    for label, doc in loaded:  # a file that failed to load is already noted above
        groups.setdefault((str(doc.get("image_root")), str(doc.get("split"))), []).append(
            (label, doc)
        )
    for n, docs in enumerate(g for g in groups.values() if len(g) > 1):
        stem = "fig5-compare" + (f"-{n + 1}" if n else "")
        shared = set.intersection(
            *({q.get("caption_index", i) for i, q in enumerate(d["queries"])} for _, d in docs)
        )
        chosen = [c for c in (q.get("caption_index") for q in docs[0][1]["queries"]) if c in shared]
        labels = ", ".join(label for label, _ in docs)
        if not chosen:
            report.notes.append(f"Fig. 5 comparison of {labels} skipped: no shared query")
            continue
        try:
            roots = [figures.resolve_image_root(doc, annotations) for _, doc in docs]
            paths = figures.plot_fig5(docs, fig_dir / stem, roots, queries=chosen[:n_queries])
        except DataError as exc:
            report.notes.append(f"Fig. 5 comparison of {labels} skipped: {exc}")
            continue
        report.outputs += paths
        index.append(f"- Fig. 5 ({labels}, row by row): [`figures/{paths[0].name}`]"
                     f"(figures/{paths[0].name})")  # fmt: skip
    if not topk_files:
        index.append("- Fig. 5: no top-k file among the results.")
    return index


def _r1(run: Run, key: str, k: str | None = None) -> str:
    """A run's R@1 figure (with the number of re-ranked images), or '' when it has none."""
    if key not in run.values:
        return ""
    n = run.get(k) if k else None
    return f"{run.values[key]:.2f}" + (f" (k={n})" if n else "")


def runs_section(runs: Sequence[Run], skipped: Sequence[str]) -> list[str]:
    """One table line per metrics file; the JSON files that are not metrics."""
    index = ["\n## Runs\n"]
    index.append(
        "R@1 is re-ranked by the ITM head at `eval.k_test` images (k), beside the first stage "
        "alone and re-ranking at the paper's share of the gallery (`eval.k_test_fraction`, "
        "at least 10 images); variants without ITM have one stage.\n"
    )
    index.append(
        "| experiment | dataset | backbone | method | variant | seed | split | R@1 first stage "
        "| R@1 re-ranked, share | R@1 | mAP | file |"
    )
    index.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        cells = [r.name, r.dataset, r.get("backbone"), r.method, r.get("variant"),
                 r.seed, r.get("split", "test"), _r1(r, "first_r1"),
                 _r1(r, "fraction_r1", "fraction_k"), _r1(r, "r1", "k_test"),
                 f"{r.values['mAP']:.2f}", f"`{r.path}`"]  # fmt: skip
        index.append("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    if skipped:
        index.append(f"\nNot metrics files (skipped): {', '.join(f'`{s}`' for s in skipped)}")
    return index


def reranking_section(runs: Sequence[Run]) -> list[str]:
    """Per dataset, backbone and variant (mean ± std over seeds): R@1 of the first stage, and
    re-ranked by ITM at the paper's share of the gallery and at ``eval.k_test``. Transfers
    (Table 7) and sweep points (Fig. 4) get rows of their own."""
    from rasa.report.aggregate import aggregate, dedupe_seeds
    from rasa.report.results import sweep_point

    def fmt(values: list[float]) -> str:
        c = aggregate(values)
        if c is None:
            return "--"
        return f"{c.mean:.2f}" + (f" ± {c.std:.2f}" if c.std is not None else "")

    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        if "first_r1" in r.values and r.get("k_test"):  # variants with ITM
            # a Table 7 transfer is a dataset of its own ("trained->tested", Run.dataset), a
            # Fig. 4 point a variant of its own
            point = sweep_point(r)
            variant = (
                f"{r.get('variant')} ({point[0]} = {point[1]:g})" if point else r.get("variant")
            )
            groups.setdefault((r.dataset, r.get("backbone"), r.method, variant), []).append(r)
    if not groups:
        return []
    index = [
        "\n## First stage vs re-ranked\n",
        "R@1 on the test split, mean ± std over seeds (n): the first stage alone, re-ranked "
        "by the ITM head at the paper's share of the gallery (128 of 3,074 images there, "
        "`eval.k_test_fraction`, at least 10) and at `eval.k_test`; the last two columns are "
        "the gains over the first stage.\n",
        "| dataset | backbone | method | variant | n | first stage | re-ranked, share (k) "
        "| re-ranked, k_test (k) | gain, share | gain, k_test |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # a variant before its sweep points, a dataset before its transfers (a prefix sorts first)
    order = sorted(groups.items(), key=lambda item: tuple(str(x) for x in item[0]))
    for (dataset, backbone, method, variant), group in order:
        group = dedupe_seeds(group)

        def cell(key: str, group: list[Run] = group) -> str:
            return fmt([g.values[key] for g in group if key in g.values])

        def gain(key: str, group: list[Run] = group) -> str:
            return fmt([g.values[key] - g.values["first_r1"] for g in group if key in g.values])

        ks = {k: sorted({str(g.get(k)) for g in group}) for k in ("fraction_k", "k_test")}
        index.append(
            f"| {dataset} | {backbone} | {method} | {variant} | {len(group)} | "
            f"{cell('first_r1')} | {cell('fraction_r1')} ({'/'.join(ks['fraction_k'])}) | "
            f"{cell('r1')} ({'/'.join(ks['k_test'])}) | {gain('fraction_r1')} | {gain('r1')} |"
        )
    return index


def pretraining_section(folder: Path, out: Path, report: Report) -> list[str]:
    """The pre-training the runs start from: held-out figures of its export and its curves."""
    from rasa.report import curves

    metrics = folder / "metrics.json"
    if not metrics.is_file():
        report.notes.append(f"pre-training: {metrics} not found; section skipped")
        return []
    m = curves._read_json(metrics)
    meta = m.get("meta", {})

    def num(value: Any, fmt: str = ".3f") -> str:
        return format(value, fmt) if isinstance(value, (int, float)) else "--"

    first, frac = m.get("first_stage", {}), m.get("at_fraction", {})
    index = [
        "\n## Pre-training\n",
        f"Every run with weights `{folder}/model.safetensors` starts from this checkpoint: "
        f"`rasa pretrain` ({meta.get('variant')}, {m.get('step')} steps, seed "
        f"{meta.get('seed')}, {meta.get('threads')} threads, torch {meta.get('torch')}) on the "
        "SynthPEDES corpus (`pretrain` in params.yaml). Held-out pairs of the corpus "
        f"({m.get('num_queries')} captions, {m.get('num_gallery')} images, each image its own "
        "identity):\n",
        "| ITM negatives | loss | accuracy |",
        "|---|---|---|",
        f"| in batch, as in training | {num(m.get('itm_loss'))} | {num(m.get('itm_acc'))} |",
        f"| hardest of the gallery | {num(m.get('itm_loss_hardest'))} | "
        f"{num(m.get('itm_acc_hardest'))} |",
        f"| one random image | {num(m.get('itm_loss_random'))} | {num(m.get('itm_acc_random'))} |",
        "",
        "| R@1 first stage | re-ranked, share (k) | re-ranked, k_test (k) | mAP first / "
        "re-ranked |",
        "|---|---|---|---|",
        f"| {num(first.get('r1'), '.2f')} | {num(frac.get('r1'), '.2f')} ({frac.get('k')}) | "
        f"{num(m.get('r1'), '.2f')} ({m.get('k')}) | {num(first.get('mAP'), '.2f')} / "
        f"{num(m.get('mAP'), '.2f')} |",
    ]
    run = curves.read_run(folder)
    if run is not None:
        stem = out / "figures" / "curves-pretraining"
        report.outputs += curves.plot_run_curves(run, stem)
        index.append(f"\nLoss curves per objective and held-out R@1: [`figures/{stem.name}.png`]"
                     f"(figures/{stem.name}.png)")  # fmt: skip
    return index


def part_commit(readme: Path) -> str:
    """The git commit a committed report recorded (its ``- git commit:`` line)."""
    if not readme.is_file():
        raise DataError(f"{readme}: part report not found (results/<part>/README.md).")
    found = re.search(r"^- git commit: `([^`]+)`", readme.read_text(encoding="utf-8"), re.M)
    if not found:
        raise DataError(f"{readme}: expected a '- git commit: `<sha>`' line (a `rasa report`).")
    return found.group(1)


def parts_section(
    parts: Sequence[Path], runs: Sequence[Run], params_path: str | Path, out: Path, report: Report
) -> list[str]:
    """Where an assembled report's runs come from: per part report, its commit and whether its
    runs' inputs at that commit are HEAD's (:func:`rasa.workflow.run_inputs_changed`); per run,
    its curves in the part report that drew it (the checkpoints are not needed, nor kept)."""
    import yaml

    from rasa.workflow import run_inputs_changed

    params = yaml.safe_load(Path(params_path).read_text(encoding="utf-8"))
    index = [
        "\n## Parts\n",
        "Assembled (`--config assemble=True`) from the committed metrics, top-k files and "
        "reports of the parts this suite was run in, one session each; no run was trained for "
        "it. Each part was drawn by the DAG from the commit its report records; the last column "
        "compares what its runs depend on (the code of the stages from data to evaluation in "
        "dvc.yaml, the starting weights and tokenizer, those stages' params keys) at that "
        "commit with this one.\n",
        "| part | runs | commit | run inputs vs this commit |",
        "|---|---|---|---|",
    ]
    drawn_by: dict[str, list[tuple[Path, str]]] = {}  # run -> (part, its path from ``out``)
    for part in parts:
        name, rel = part.name, Path(os.path.relpath(part, out)).as_posix()
        exps = params["suites"].get(name)
        if exps is None:
            raise ConfigError(f"{params_path}: part {part} names no suite {name!r} under suites.")
        commit = part_commit(part / "README.md")
        sha = commit.removesuffix("-dirty")
        changed = run_inputs_changed(sha, params, name)
        if commit.endswith("-dirty"):
            changed.insert(0, "uncommitted code or params (-dirty)")
        if changed:
            shown = ", ".join(changed[:5]) + (
                f" and {len(changed) - 5} more" if len(changed) > 5 else ""
            )
            report.notes.append(f"part {part}: its runs' inputs differ from this commit's "
                                f"({shown})")  # fmt: skip
            print(f"WARNING: part {part} (commit {commit}) made its runs from other inputs than "
                  f"this commit: {shown}", file=sys.stderr)  # fmt: skip
        verdict = f"**differ**: {', '.join(changed)}" if changed else "the same"
        index.append(f"| [`{name}`]({rel}/README.md) | {len(exps)} | `{sha[:12]}` | "
                     f"{verdict} |")  # fmt: skip
        for exp in exps:
            drawn_by.setdefault(exp, []).append((part, rel))
    index.append("\nTraining curves of each run, in the part report(s) that drew it:\n")
    for exp in sorted({r.get("experiment") for r in runs if r.get("experiment")}):
        if exp not in drawn_by:  # a transfer's metrics: its source run is listed
            continue
        fig = f"figures/curves-{_slug(exp)}.png"
        links = [f"[`{part.name}`]({rel}/{fig})" for part, rel in drawn_by[exp]
                 if (part / fig).is_file()]  # fmt: skip
        index.append(f"- {exp}: " + (", ".join(links) or "no curve figure in its part report"))
    return index


def header(
    results: Sequence[str | Path], runs: Sequence[Run], split: str, params: str | Path | None
) -> list[str]:
    """The index's title and provenance lines."""
    return [
        "# Results\n",
        "Generated by `rasa report` from "
        + ", ".join(f"`{d}`" for d in results)
        + f": {len(runs)} metrics file(s), split `{split}` in the tables; checkpoints are "
        "selected on the validation split and the test split is evaluated once.\n",
        f"- git commit: `{git_commit()}`",
        f"- params: `{params}` sha256 `{file_sha256(params) if params else None}`",
        "- paper numbers: `rasa/report/paper_results.csv` (Tables 1-8 of the RaSa paper)\n",
    ]


def training_runs_section(
    run_dirs: Sequence[Path], out: Path, report: Report, compile_pdf: bool
) -> list[str]:
    """Curves per run, CMMT pseudo-label figure and table, validation R@1 per context."""
    from rasa.report import curves

    index = ["\n## Training runs\n"]
    loaded: list[curves.TrainingRun] = []
    stems: set[str] = set()
    for d in run_dirs:
        run = curves.read_run(d)
        if run is None:
            report.notes.append(f"training run {d}: no curve data (curve/, val_curve), skipped")
            index.append(f"- `{d}`: no curve data, skipped.")
            continue
        loaded.append(run)
        name = _slug(run.experiment)
        if name in stems:  # two directories of one experiment name
            name = _slug(f"{name}-{d.parent.name}-{d.name}")
        stems.add(name)
        report.outputs += curves.plot_run_curves(run, out / "figures" / f"curves-{name}")
        index.append(f"- {run.experiment} ({run.label}, `{d}`): training curves "
                     f"[`figures/curves-{name}.png`](figures/curves-{name}.png)")  # fmt: skip
        if run.method != "cmmt":
            continue
        if not run.pseudo:
            report.notes.append(f"CMMT run {d}: no pseudo_labels in metrics.json yet")
            continue
        report.outputs += curves.plot_pseudo_labels(run, out / "figures" / f"pseudo-labels-{name}")
        doc, fragment = curves.pseudo_label_latex(run)
        tex = out / "tables" / f"pseudo-labels-{name}.tex"
        write_text(tex, doc)
        write_text(tex.with_name(f"{tex.stem}_fragment.tex"), fragment)
        report.outputs += [tex, tex.with_name(f"{tex.stem}_fragment.tex")]
        links = (f"figure [`figures/pseudo-labels-{name}.png`](figures/pseudo-labels-{name}.png),"
                 f" table [`tables/pseudo-labels-{name}.tex`](tables/pseudo-labels-{name}.tex)")  # fmt: skip
        if compile_pdf:
            compile_latex(tex, tex.with_suffix(".pdf"))
            report.outputs.append(tex.with_suffix(".pdf"))
            links += f" ([PDF](tables/pseudo-labels-{name}.pdf))"
        index.append(f"  - CMMT pseudo-label quality (adjusted Rand index vs the true ids, read "
                     f"only for this report; MPLR rescues): {links}\n")  # fmt: skip
        index.append(curves.pseudo_label_markdown(run) + "\n")
    for (dataset, backbone), group in curves.by_context(loaded).items():
        if not any(r.val for r in group):
            continue
        stem = "val-r1-" + _slug(f"{dataset}-{backbone}")
        labels = ", ".join(sorted({r.label for r in group}))
        title = f"validation R@1 per evaluation: {dataset}, {backbone} ({labels})"
        report.outputs += curves.plot_val_r1(group, out / "figures" / stem, title)
        index.append(f"- Validation R@1 of {labels} on {dataset} / {backbone}: "
                     f"[`figures/{stem}.png`](figures/{stem}.png)")  # fmt: skip
    for (dataset, backbone), group in curves.by_context(loaded).items():
        table = curves.head_accuracy_markdown(group)
        if table:
            index.append(
                f"\n### Head accuracy per epoch: {dataset} / {backbone}\n\n"
                "Training accuracy (%) of the ITM, PRD and RTD heads, the mean over each "
                "epoch's logged steps and over the variant's runs at the default setting "
                "(Fig. 4's sweep points left out); in parentheses what one "
                "constant answer scores on the same targets. A head at its parenthesis has "
                "learnt nothing.\n\n" + table + "\n"
            )
    return index


COMPARISON_COLUMNS = ("table", "context", "dataset", "method", "metric", "paper", "ours_mean",
                      "ours_std", "n_seeds")  # fmt: skip
