"""Figures of the RaSa paper re-made from our runs (matplotlib, Agg backend; PNG and PDF).

- Fig. 4 (Section 4.4, "Hyper-parameters"): R@1 against each swept hyper-parameter
  (p_w, p_m, lambda1, lambda2, lambda3), one panel each, ours with error bars (sample std)
  where several seeds ran; the paper's default is marked (the paper gives only the best value
  of each sweep in its text, see rasa/report/paper.py ``FIG4``).
- Fig. 5 (Appendix A.5): top-10 retrievals per text query from ``topk.json``, one row of
  images per query (and per model when several top-k files are compared), framed green when
  the image shows the queried person and red otherwise.

Training curves and CMMT's pseudo-label quality: :mod:`rasa.report.curves`.

A run belongs to a sweep point when its meta has ``sweep: {"param": "p_w", "value": 0.2}``
(or ``sweep_param``/``sweep_value``), or when its experiment name contains ``p_w=0.2``. A
``m-rtd`` run without a sweep marker is every panel's point at the default value.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rasa.errors import DataError  # noqa: E402
from rasa.io import atomic_path  # noqa: E402
from rasa.report.aggregate import aggregate, dedupe_seeds  # noqa: E402
from rasa.report.paper import FIG4, FIG4_DEFAULT_R1, paper_value  # noqa: E402
from rasa.report.results import Run, sweep_point  # noqa: E402


def save_figure(fig: plt.Figure, out_stem: str | Path, formats: Sequence[str] = ("png", "pdf")):
    """Write ``fig`` to ``out_stem.<fmt>`` atomically for each format; returns the paths.
    ``jpg`` is for photographs (quality 85): a PNG of them is five to six times larger."""
    paths = []
    for fmt in formats:
        dest = Path(f"{out_stem}.{fmt}")
        with atomic_path(dest, suffix=f".{fmt}") as tmp:
            # no creation date in a PDF: the same figure gives the same bytes on a rerun
            meta = {"CreationDate": None} if fmt == "pdf" else None
            extra = {"pil_kwargs": {"quality": 85}} if fmt == "jpg" else {}
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=meta, **extra)
        paths.append(dest)
    plt.close(fig)
    return paths


# ---- Fig. 4 ------------------------------------------------------------------------------
def sweep_series(
    runs: Sequence[Run], metric: str = "r1", split: str = "test"
) -> dict[str, dict[float, list[float]]]:
    """param -> value -> our metric per seed (seeds deduplicated). Default-setting ``m-rtd``
    runs count as each swept panel's point at its default; CMMT runs and cross-dataset runs
    (Table 7) never count."""
    points: dict[tuple[str, float], list[Run]] = defaultdict(list)
    defaults: list[Run] = []
    for run in runs:
        if run.get("split", split) != split or metric not in run.values:
            continue
        if run.method != "rasa":  # Fig. 4 sweeps RaSa's hyper-parameters
            continue
        if run.source_dataset and run.source_dataset != run.get("dataset"):
            continue  # tested on another dataset than trained on: a Table 7 run
        sp = sweep_point(run)
        if sp is not None:
            points[sp].append(run)
        elif run.get("variant") == "m-rtd":
            defaults.append(run)
    swept = {p for p, _ in points}
    for param in swept if defaults else ():  # a suite of sweep points only has no default
        key = (param, FIG4[param].default)
        points[key] = points.get(key, []) + defaults
    out: dict[str, dict[float, list[float]]] = defaultdict(dict)
    for (param, value), rs in points.items():
        out[param][value] = [r.values[metric] for r in dedupe_seeds(rs)]
    return {p: dict(sorted(v.items())) for p, v in out.items()}


def plot_fig4(
    runs: Sequence[Run], out_stem: str | Path, metric: str = "r1", title: str | None = None
) -> list[Path]:
    """Fig. 4: one panel per hyper-parameter; returns the written paths."""
    series = sweep_series(runs, metric)
    paper_default = paper_value(*FIG4_DEFAULT_R1)
    fig, axes = plt.subplots(1, len(FIG4), figsize=(3.0 * len(FIG4), 2.8), sharey=True)
    for ax, (name, param) in zip(axes, FIG4.items(), strict=True):
        pts = series.get(name, {})
        if pts:
            xs = list(pts)
            cells = [aggregate(v) for v in pts.values()]
            ys = [c.mean for c in cells]
            err = [c.std or 0.0 for c in cells]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color="tab:blue", label="ours")
            for x, c in zip(xs, cells, strict=True):
                if c.n > 1:
                    ax.annotate(f"n={c.n}", (x, c.mean), fontsize=6, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes,
                    color="0.5")  # fmt: skip
            ax.set_xlim(0, max(1.0, 2 * param.default))
        ax.axvline(param.default, color="tab:red", ls="--", lw=1)
        note = f"paper best: {param.default:g}"
        if paper_default is not None:
            note += f"\n(paper R@1 {paper_default:.2f})"
        ax.text(0.98, 0.02, note, ha="right", va="bottom", transform=ax.transAxes, fontsize=7,
                color="tab:red")  # fmt: skip
        ax.set_xlabel(param.symbol)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(
        f"ours {metric.replace('r', 'R@')} (%)" if metric.startswith("r") else metric
    )
    fig.suptitle(title or "Fig. 4: impact of the hyper-parameters (R@1, test split)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)


# ---- Fig. 5 ------------------------------------------------------------------------------
def load_topk(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: top-k file not found (written by `rasa evaluate`).") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("queries"), list):
        raise DataError(f"{path}: expected a top-k object with a 'queries' list.")
    for i, q in enumerate(doc["queries"]):
        for key in ("caption", "pid", "topk_images", "topk_pids"):
            if key not in q:
                raise DataError(f"{path}, record {i}: missing key {key!r} of a top-k query.")
    return doc


def resolve_image_root(topk: Mapping[str, Any], annotations: str | Path | None = None) -> Path:
    """The directory the top-k image paths are relative to: the ``image_root`` recorded in the
    top-k file when it exists here (each run's own dataset), else the annotation table's."""
    recorded = topk.get("image_root")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    if annotations is not None:
        from rasa.data.annotations import Annotations

        return Annotations.load(annotations).resolve_image_root(annotations)
    if recorded:
        return Path(recorded)
    raise DataError(
        "top-k file has no 'image_root'; pass the annotation table (--annotations) to find "
        "the images."
    )


def _show_image(ax: plt.Axes, path: Path, correct: bool, rank: int) -> None:
    from PIL import Image

    if not path.is_file():
        raise DataError(f"{path}: retrieved image not found (is the image root right?).")
    with Image.open(path) as im:
        ax.imshow(im.convert("RGB"))
    color = "#1a9641" if correct else "#d7191c"
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(3)
    ax.set_title(str(rank), fontsize=7, pad=2)


def plot_fig5(
    topks: Sequence[tuple[str, Mapping[str, Any]]],
    out_stem: str | Path,
    image_root: str | Path | Sequence[str | Path],
    queries: Sequence[int] | None = None,
    n_queries: int = 3,
    k: int = 10,
    width: int = 110,
) -> list[Path]:
    """Fig. 5: for each chosen query, its caption (wrapped) and one row of the top-``k``
    images per (label, topk document); correct images framed green, wrong red.

    ``queries`` are caption indices (default: the first ``n_queries`` of the first file).
    ``image_root`` is one directory or one per top-k document.
    """
    if not topks:
        raise DataError("no top-k file given for Fig. 5.")
    roots = (
        [Path(image_root)] * len(topks)
        if isinstance(image_root, str | Path)
        else list(map(Path, image_root))
    )
    by_caption = [
        {q.get("caption_index", i): q for i, q in enumerate(doc["queries"])} for _, doc in topks
    ]
    chosen = list(queries) if queries is not None else list(by_caption[0])[:n_queries]
    for c in chosen:
        for (label, _), index in zip(topks, by_caption, strict=True):
            if c not in index:
                raise DataError(f"caption index {c} is not among the queries of top-k {label!r}.")
    n_rows = len(topks)
    fig = plt.figure(figsize=(1.1 * k + 1.2, len(chosen) * (1.8 * n_rows + 0.5)))
    subfigs = fig.subfigures(len(chosen), 1, squeeze=False)[:, 0]
    for sf, c in zip(subfigs, chosen, strict=True):
        caption = by_caption[0][c]["caption"]
        sf.suptitle("Query: " + "\n".join(textwrap.wrap(caption, width)), fontsize=8, x=0.02,
                    ha="left")  # fmt: skip
        axes = sf.subplots(n_rows, k, squeeze=False)
        for row, ((label, _), index, root) in enumerate(zip(topks, by_caption, roots, strict=True)):
            q = index[c]
            for j in range(k):
                ax = axes[row, j]
                if j >= len(q["topk_images"]):
                    ax.axis("off")
                    continue
                correct = int(q["topk_pids"][j]) == int(q["pid"])
                _show_image(ax, root / q["topk_images"][j], correct, j + 1)
            if n_rows > 1 or label:
                axes[row, 0].set_ylabel(label, fontsize=8)
    # photographs only: JPEG (a PNG of them is about 1.3 MB per figure, a PDF as large)
    return save_figure(fig, out_stem, formats=("jpg",))
