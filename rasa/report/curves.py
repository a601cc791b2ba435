"""Training runs in the report: curves of ``checkpoints/<experiment>/`` and CMMT's pseudo labels.

What the trainers write and this module reads (rasa/engine/curves.py ``CurveLogger``,
rasa/weak/train.py):

- ``curve/plots/metrics/train/<key>.tsv`` (dvclive; columns ``step``, ``<key>``) with keys
  ``loss``, ``loss_<objective>`` (``loss_cl``, ``loss_itm``, ``loss_prd``, ``loss_mlm``,
  ``loss_rtd``; CMMT: ``loss_cl``, ``loss_cmpm``, ``loss_mine``), ``lr``, ``alpha``,
  ``temperature``, and per binary head (``itm``, ``prd``, ``rtd``) ``acc_<head>`` and
  ``base_<head>`` (training accuracy, and what a constant answer scores:
  rasa/objectives.py ``head_accuracy``); ``curve/plots/metrics/val/<key>.tsv`` per evaluation
  (``r1`` ..., ``first_stage_r1`` ...). Without dvclive: ``curve/train.csv`` and ``curve/eval.jsonl``.
- ``metrics.json`` (written at the end of training): ``val_curve`` = ``[{"epoch", "step",
  "r1", ...}]``, ``meta``; CMMT adds ``pseudo_labels`` = one record per re-clustering,
  ``{"epoch", "seconds", "image": {"clusters", "outliers", "samples", "mplr_rescued", "ari"},
  "text": {...}, "pair": {"clusters", "outliers", "samples", "ari"}}`` where ``ari`` is the
  adjusted Rand index of the pseudo identities against the true ids (read only for the report)
  and ``mplr_rescued`` the unclustered samples Mutual Pseudo Label Refinement assigned.
- ``config.yaml``: ``name``, ``dataset``, ``backbone``, ``variant``, ``seed``, ``method``.

Per run: a curves figure (losses per objective, lr and temperature, validation R@1 per
evaluation, head accuracy when logged); per (dataset, backbone) a table of the heads' training
accuracy per epoch and variant (mean over seeds; issue #12's per-objective diagnostics); per
CMMT run a pseudo-label figure (ARI per epoch, MPLR rescues) and table
(markdown and LaTeX); per (dataset, backbone) a figure of every run's validation R@1.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from rasa.errors import DataError
from rasa.report.figures import plt, save_figure
from rasa.report.latex import OURS_COLOR, PREAMBLE_PACKAGES, latex_escape

Points = list[tuple[float, float]]
MODALITIES = ("image", "text", "pair")
HEADS = ("itm", "prd", "rtd")  # the binary heads whose training accuracy is logged


# ---- reading -------------------------------------------------------------------------------
def _number(value: Any, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {value!r} is not a number.") from exc


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc


def _read_tsv(tsv: Path) -> Points:
    """One dvclive metric file: ``step`` and the metric named like the file."""
    with open(tsv, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        key = tsv.stem
        if (
            reader.fieldnames is None
            or "step" not in reader.fieldnames
            or key not in (reader.fieldnames)
        ):
            raise DataError(f"{tsv}: expected the dvclive columns 'step' and {key!r}.")
        return [
            (_number(r["step"], f"{tsv}, line {i + 2}"), _number(r[key], f"{tsv}, line {i + 2}"))
            for i, r in enumerate(reader)
            if r.get(key) not in (None, "")
        ]


def read_curves(run_dir: str | Path) -> dict[str, Points]:
    """Every curve of a run: ``train/<key>`` and ``val/<key>`` per step (dvclive TSVs, else
    ``train.csv`` / ``eval.jsonl``) and ``val/r1 (per epoch)`` from ``metrics.json``."""
    run_dir = Path(run_dir)
    curves: dict[str, Points] = {}
    plots = run_dir / "curve" / "plots" / "metrics"
    for tsv in sorted(plots.glob("**/*.tsv")):
        curves[tsv.relative_to(plots).with_suffix("").as_posix()] = _read_tsv(tsv)
    train_csv = run_dir / "curve" / "train.csv"
    if train_csv.is_file():
        with open(train_csv, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        if rows:
            header = rows[0]
            if "step" not in header:
                raise DataError(f"{train_csv}: expected a header with 'step', got {header}.")
            for i, row in enumerate(rows[1:]):
                if len(row) != len(header):
                    raise DataError(f"{train_csv}, line {i + 2}: {len(row)} fields, header has "
                                    f"{len(header)}.")  # fmt: skip
            step = header.index("step")
            for j, col in enumerate(header):
                if j != step:
                    where = f"{train_csv}, column {col!r}"
                    curves[f"train/{col}"] = [
                        (_number(r[step], where), _number(r[j], where)) for r in rows[1:]
                    ]
    eval_jsonl = run_dir / "curve" / "eval.jsonl"
    if eval_jsonl.is_file():
        for i, line in enumerate(eval_jsonl.read_text(encoding="utf-8").splitlines()):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{eval_jsonl}, line {i + 1}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(rec, dict) or "step" not in rec:
                raise DataError(f"{eval_jsonl}, line {i + 1}: expected an object with 'step'.")
            split = rec.get("split", "val")
            for k, v in rec.items():
                if k not in ("step", "split"):
                    where = f"{eval_jsonl}, line {i + 1}, key {k!r}"
                    curves.setdefault(f"{split}/{k}", []).append(
                        (_number(rec["step"], where), _number(v, where))
                    )
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        pts = [(float(v["epoch"]), float(v["r1"])) for v in _val_curve(metrics)]
        if pts:
            curves["val/r1 (per epoch)"] = pts
    return curves


def _val_curve(metrics: Path) -> list[dict[str, Any]]:
    doc = _read_json(metrics)
    val = doc.get("val_curve") if isinstance(doc, dict) else None
    if val is None:
        return []
    if not isinstance(val, list) or not all(isinstance(v, dict) for v in val):
        raise DataError(f"{metrics}, key 'val_curve': expected a list of objects.")
    out = []
    for i, v in enumerate(val):
        if "r1" in v and "epoch" in v:
            where = f"{metrics}, val_curve[{i}]"
            out.append({"epoch": _number(v["epoch"], where), "r1": _number(v["r1"], where),
                        "step": _number(v.get("step", "nan"), where)})  # fmt: skip
    return out


@dataclass
class TrainingRun:
    """One training run directory as the report sees it."""

    path: Path
    meta: dict[str, Any]
    curves: dict[str, Points]
    val: list[dict[str, float]]  # per evaluation: step, r1 and (from metrics.json) epoch
    pseudo: list[dict[str, Any]] = field(default_factory=list)  # CMMT: per re-clustering

    @property
    def experiment(self) -> str:
        return str(self.meta.get("experiment") or self.path.name)

    @property
    def method(self) -> str:
        return str(self.meta.get("method") or "rasa")

    @property
    def label(self) -> str:
        """How the run is named in a comparison: its variant, or ``cmmt``."""
        return "cmmt" if self.method == "cmmt" else str(self.meta.get("variant") or "?")

    @property
    def context(self) -> tuple[str, str]:
        return str(self.meta.get("dataset") or "?"), str(self.meta.get("backbone") or "?")


def _run_meta(run_dir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        doc = _read_json(metrics)
        if isinstance(doc, dict) and isinstance(doc.get("meta"), dict):
            meta.update(doc["meta"])
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        try:
            cfg = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise DataError(f"{config}: not valid YAML ({exc}).") from exc
        if not isinstance(cfg, dict):
            raise DataError(f"{config}: expected a mapping (a saved experiment config).")
        for key in ("dataset", "backbone", "variant", "seed", "method", "sweep"):
            if cfg.get(key) is not None:
                meta.setdefault(key, cfg[key])
        if cfg.get("name"):
            meta.setdefault("experiment", cfg["name"])
    if meta.get("variant") == "cmmt":  # rasa/weak/train.py's metrics.json meta
        meta["method"] = "cmmt"
    return meta


def _pseudo_labels(run_dir: Path) -> list[dict[str, Any]]:
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        return []
    doc = _read_json(metrics)
    records = doc.get("pseudo_labels") if isinstance(doc, dict) else None
    if records is None:
        return []
    where = f"{metrics}, key 'pseudo_labels'"
    if not isinstance(records, list):
        raise DataError(f"{where}: expected a list of per-epoch records.")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or "epoch" not in rec:
            raise DataError(f"{where}[{i}]: expected an object with 'epoch'.")
        for mod in MODALITIES:
            stats = rec.get(mod, {})
            if not isinstance(stats, dict):
                raise DataError(f"{where}[{i}].{mod}: expected an object.")
            for k in ("ari", "mplr_rescued", "clusters", "outliers"):
                if k in stats:
                    _number(stats[k], f"{where}[{i}].{mod}.{k}")
    return records


def read_run(run_dir: str | Path) -> TrainingRun | None:
    """A training run with its curves; None when the directory holds no curve data (no
    ``curve/`` files, no ``val_curve``, no pseudo labels). DataError for a missing directory
    or a malformed file (named)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: training run directory not found (checkpoints/<experiment>).")
    curves = read_curves(run_dir)
    pseudo = _pseudo_labels(run_dir)
    if not curves and not pseudo:
        return None
    val: list[dict[str, float]] = []
    if (run_dir / "metrics.json").is_file():
        val = _val_curve(run_dir / "metrics.json")
    if not val:  # training still running (or no metrics.json): the per-eval curve files
        val = [{"step": s, "r1": r} for s, r in curves.get("val/r1", [])]
    return TrainingRun(run_dir, _run_meta(run_dir), curves, val, pseudo)


# ---- figures -------------------------------------------------------------------------------
def _xy(pts: Points) -> tuple[list[float], list[float]]:
    return [x for x, _ in pts], [y for _, y in pts]


def _val_axis(runs: Sequence[TrainingRun]) -> str:
    """``epoch`` when every run's evaluations carry one (metrics.json), else ``step``."""
    ok = all(v.get("epoch") is not None for r in runs for v in r.val)
    return "epoch" if ok else "step"


def _steps_per_epoch(run: TrainingRun) -> float | None:
    """Optimizer steps per epoch, from an evaluation that carries both its epoch and step."""
    for v in run.val:
        epoch, step = v.get("epoch"), v.get("step")
        if epoch and step is not None and not math.isnan(step) and epoch > 0:
            return step / epoch
    return None


def _mean_pair(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The mean of each member of ``(accuracy, base)`` pairs."""
    return sum(a for a, _ in pairs) / len(pairs), sum(b for _, b in pairs) / len(pairs)


def head_accuracy_by_epoch(run: TrainingRun) -> dict[str, list[tuple[int, float, float]]]:
    """Per logged head: ``(epoch, accuracy, base)``, each the mean over the epoch's logged
    training steps (``train.log_every_steps`` and each epoch's last step); one bin when the
    run has no evaluation to tell its epochs apart."""
    spe = _steps_per_epoch(run)
    out: dict[str, list[tuple[int, float, float]]] = {}
    for head in HEADS:
        acc, base = run.curves.get(f"train/acc_{head}"), run.curves.get(f"train/base_{head}")
        if not acc or not base:
            continue
        bins: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for (step, a), (_, b) in zip(acc, base, strict=False):
            if not (math.isnan(a) or math.isnan(b)):
                bins[max(1, math.ceil(step / spe)) if spe else 1].append((a, b))
        out[head] = [(e, *_mean_pair(v)) for e, v in sorted(bins.items())]
    return out


def head_accuracy_markdown(runs: Sequence[TrainingRun]) -> str:
    """Training accuracy (%) of the ITM, PRD and RTD heads per epoch, per variant (mean over its
    runs), with what a constant answer scores in parentheses; '' when no run logged any. Fig. 4's
    sweep points (a ``sweep`` in their config) are left out: a variant's row is its runs at the
    default setting."""
    table: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in runs:
        if run.meta.get("sweep"):
            continue
        for head, rows in head_accuracy_by_epoch(run).items():
            for epoch, acc, base in rows:
                table[(run.label, head)][epoch].append((acc, base))
    if not table:
        return ""
    epochs = sorted({e for per_epoch in table.values() for e in per_epoch})
    lines = [
        "| variant | head | runs | " + " | ".join(f"epoch {e}" for e in epochs) + " |",
        "|---|---|---|" + "---|" * len(epochs),
    ]
    for (label, head), per_epoch in sorted(table.items()):
        n = max(len(v) for v in per_epoch.values())
        cells = []
        for e in epochs:
            acc, base = _mean_pair(per_epoch[e]) if per_epoch.get(e) else (None, None)
            cells.append("" if acc is None else f"{100 * acc:.1f} ({100 * base:.1f})")
        lines.append(f"| {label} | {head.upper()} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_run_curves(run: TrainingRun, out_stem: str | Path) -> list[Path]:
    """Losses per objective (log scale), lr and temperature, validation R@1 per evaluation,
    and (when logged) the binary heads' training accuracy beside their constant-answer base."""
    losses = {k: v for k, v in run.curves.items() if k.startswith("train/loss") and v}
    heads = [h for h in HEADS if run.curves.get(f"train/acc_{h}")]
    fig, axes = plt.subplots(1, 4 if heads else 3, figsize=(17 if heads else 13, 3.2))
    for name, pts in sorted(losses.items()):
        total = name == "train/loss"
        axes[0].plot(*_xy(pts), lw=1.6 if total else 1, color="k" if total else None,
                     label=name.split("/", 1)[1])  # fmt: skip
    if losses and all(y > 0 for pts in losses.values() for _, y in pts):
        axes[0].set_yscale("log")
    axes[0].set_title("training losses (per objective)", fontsize=9)
    if losses:
        axes[0].legend(fontsize=6)
    ax = axes[1]
    if run.curves.get("train/lr"):
        ax.plot(*_xy(run.curves["train/lr"]), color="tab:blue", label="lr")
        ax.set_ylabel("lr", color="tab:blue")
    if run.curves.get("train/temperature"):
        twin = ax.twinx()
        twin.plot(*_xy(run.curves["train/temperature"]), color="tab:orange", label="temperature")
        twin.set_ylabel("temperature", color="tab:orange")
    ax.set_title("learning rate and temperature", fontsize=9)
    axis = _val_axis([run])
    if run.val:
        axes[2].plot([v[axis] for v in run.val], [v["r1"] for v in run.val], marker="o")
    else:
        axes[2].text(0.5, 0.5, "no evaluation", ha="center", va="center", color="0.5",
                     transform=axes[2].transAxes)  # fmt: skip
    axes[2].set_title("validation R@1 (%) per evaluation", fontsize=9)
    for head, color in zip(heads, ("tab:red", "tab:green", "tab:purple"), strict=False):
        axes[3].plot(*_xy(run.curves[f"train/acc_{head}"]), color=color, lw=1, label=head.upper())
        base = run.curves.get(f"train/base_{head}")
        if base:
            axes[3].plot(*_xy(base), color=color, lw=1, ls="--", alpha=0.6)
    if heads:
        axes[3].set_title("head accuracy, training (dashed: constant answer)", fontsize=9)
        axes[3].legend(fontsize=6)
    for a, x in zip(axes, ("step", "step", axis, "step"), strict=False):
        a.set_xlabel(x)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    m = run.meta
    fig.suptitle(f"{run.experiment} ({run.label}, {m.get('dataset')}, {m.get('backbone')}, "
                 f"seed {m.get('seed')})", fontsize=9)  # fmt: skip
    fig.tight_layout()
    return save_figure(fig, out_stem)


def plot_pseudo_labels(run: TrainingRun, out_stem: str | Path) -> list[Path]:
    """CMMT: adjusted Rand index vs the true ids per epoch, and MPLR rescues per epoch."""
    if not run.pseudo:
        raise DataError(f"{run.path}: no pseudo-label records (metrics.json 'pseudo_labels').")
    epochs = [float(r["epoch"]) for r in run.pseudo]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for mod in MODALITIES:
        ys = [r.get(mod, {}).get("ari") for r in run.pseudo]
        if any(y is not None for y in ys):
            axes[0].plot(epochs, [float("nan") if y is None else y for y in ys], marker="o",
                         label=mod)  # fmt: skip
    axes[0].set_title("pseudo labels: adjusted Rand index vs true ids", fontsize=9)
    axes[0].set_ylabel("ARI")
    axes[0].legend(fontsize=7)
    width = 0.4
    for j, mod in enumerate(("image", "text")):
        ys = [r.get(mod, {}).get("mplr_rescued", 0) for r in run.pseudo]
        axes[1].bar([e + (j - 0.5) * width for e in epochs], ys, width, label=f"{mod}")
    axes[1].set_title("samples rescued by MPLR", fontsize=9)
    axes[1].set_ylabel("count")
    axes[1].legend(fontsize=7)
    for a in axes:
        a.set_xlabel("epoch (re-clustering)")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(alpha=0.3)
    fig.suptitle(f"CMMT pseudo-label quality: {run.experiment}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def plot_val_r1(runs: Sequence[TrainingRun], out_stem: str | Path, title: str) -> list[Path]:
    """Validation R@1 per evaluation of several runs (one colour per variant / method, one
    line per seed)."""
    axis = _val_axis(runs)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    colors: dict[str, Any] = {}
    for run in sorted(runs, key=lambda r: (r.label, str(r.meta.get("seed")))):
        if not run.val:
            continue
        first = run.label not in colors
        color = colors.setdefault(run.label, f"C{len(colors)}")
        n = sum(1 for r in runs if r.label == run.label and r.val)
        ax.plot([v[axis] for v in run.val], [v["r1"] for v in run.val], marker="o", ms=3,
                color=color, alpha=0.85, label=f"{run.label} ({n} run{'s' * (n > 1)})" if first
                else None)  # fmt: skip
    ax.set_xlabel(axis)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation R@1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def by_context(runs: Sequence[TrainingRun]) -> dict[tuple[str, str], list[TrainingRun]]:
    """Runs grouped by (dataset, backbone): the runs one validation figure compares."""
    out: dict[tuple[str, str], list[TrainingRun]] = defaultdict(list)
    for run in runs:
        out[run.context].append(run)
    return dict(out)


# ---- pseudo-label table ----------------------------------------------------------------------
PSEUDO_COLUMNS = (
    ("epoch", "epoch"),
    ("ari_image", "ARI image"),
    ("ari_text", "ARI text"),
    ("ari_pair", "ARI pair"),
    ("clusters_image", "clusters image"),
    ("clusters_text", "clusters text"),
    ("outliers_image", "unclustered image"),
    ("outliers_text", "unclustered text"),
    ("rescued_image", "MPLR rescued image"),
    ("rescued_text", "MPLR rescued text"),
)


def pseudo_label_rows(run: TrainingRun) -> list[dict[str, Any]]:
    """One row per re-clustering: ARI per modality, clusters, unclustered, MPLR rescues."""
    rows = []
    for rec in run.pseudo:
        row: dict[str, Any] = {"epoch": rec["epoch"]}
        for mod in MODALITIES:
            stats = rec.get(mod, {})
            row[f"ari_{mod}"] = stats.get("ari")
            row[f"clusters_{mod}"] = stats.get("clusters")
            row[f"outliers_{mod}"] = stats.get("outliers")
            row[f"rescued_{mod}"] = stats.get("mplr_rescued")
        rows.append(row)
    return rows


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "--"
    if key.startswith("ari_"):
        return f"{float(value):.3f}"
    return f"{int(value)}" if float(value).is_integer() else f"{value}"


def pseudo_label_markdown(run: TrainingRun) -> str:
    head = [label for _, label in PSEUDO_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in pseudo_label_rows(run):
        lines.append("| " + " | ".join(_cell(k, row[k]) for k, _ in PSEUDO_COLUMNS) + " |")
    return "\n".join(lines)


def pseudo_label_latex(run: TrainingRun) -> tuple[str, str]:
    """(standalone document, fragment) of the pseudo-label table of one CMMT run."""
    m = run.meta
    caption = latex_escape(
        f"CMMT pseudo-label quality per re-clustering, {run.experiment} ({m.get('dataset')}, "
        f"{m.get('backbone')} backbone, seed {m.get('seed')}): adjusted Rand index (ARI) of the "
        "pseudo identities against the true ids (read after clustering, for this report only; "
        "pair = the label each image-caption pair trains with), clusters, unclustered samples "
        "and samples Mutual Pseudo Label Refinement (MPLR) rescued."
    )
    head = [r"\makecell{" + latex_escape(label).replace(" ", r"\\", 1) + "}"
            for _, label in PSEUDO_COLUMNS]  # fmt: skip
    lines = [r"\begin{tabular}{" + "r" * len(PSEUDO_COLUMNS) + "}", r"\toprule",
             " & ".join(head) + r" \\", r"\midrule"]  # fmt: skip
    for row in pseudo_label_rows(run):
        cells = [_cell(k, row[k]) for k, _ in PSEUDO_COLUMNS]
        cells = [
            c if i == 0 else rf"\textcolor{{{OURS_COLOR}}}{{{c}}}" for i, c in enumerate(cells)
        ]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    tabular = "\n".join(lines)
    label = "tab:pseudo-labels-" + "".join(c if c.isalnum() or c in "-." else "-"
                                           for c in run.experiment)  # fmt: skip
    fragment = "\n".join([
        "% generated by `rasa report`; needs " + ", ".join(PREAMBLE_PACKAGES),
        r"\begin{table}[tbp]", r"\centering\small",
        rf"\caption{{{caption}}}\label{{{label}}}", tabular, r"\end{table}", "",
    ])  # fmt: skip
    standalone = "\n".join([
        "% generated by `rasa report`: compile with pdflatex",
        r"\documentclass[border=8pt,varwidth=\maxdimen]{standalone}",
        *(rf"\usepackage{{{p}}}" for p in PREAMBLE_PACKAGES),
        r"\captionsetup{font=small,labelformat=empty,justification=raggedright}",
        r"\begin{document}", r"\small", r"\begin{threeparttable}",
        rf"\captionof{{table}}{{{caption}}}", tabular, r"\end{threeparttable}", r"\end{document}",
        "",
    ])  # fmt: skip
    return standalone, fragment
