"""The RaSa paper's published numbers (IJCAI 2023, Tables 1-8 and the Fig. 4 defaults) as data.

``paper_results.csv`` beside this module holds every number of Tables 1-8, one row per
(table, dataset, method, metric), with the paper cell it was read from in ``source``;
cells printed as '-' are absent. Metrics are percentages: ``r1``, ``r5``, ``r10``, ``mAP``
(Tables 1-4, 7, 8), ``tr_r1`` ... ``ir_r10`` (Table 5: image-to-text / text-to-image recall),
``tr_r1`` and ``ir_ap50`` (Table 6). Datasets use the project's names (``cuhk``, ``icfg``,
``rstp``, ``flickr30k``, ``coco``, ``cub``, ``flowers``; Table 7: ``cuhk->icfg``,
``icfg->cuhk`` = source->target).

Fig. 4 (hyper-parameter sweeps, R@1 on CUHK-PEDES) is a plot only: the text gives the best
value of each parameter (p_w = 0.1, p_m = 0.3, lambda1 = lambda2 = lambda3 = 0.5, Section 4.4
and Appendix A.2) but neither the swept grids nor the R@1 of each point. :data:`FIG4` records
what the text gives; the R@1 at the defaults is the full model's (Table 4, MLM + m-RTD).

``other_results.csv`` holds other papers' numbers that our tables of our own show (CMMT, ICCV
2021, in the weakly-vs-supervised table), one row per (paper, dataset, method, metric) with its
``source``; an empty ``value`` records a cell no pinned source gives (shown as '--').
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from rasa.errors import ConfigError, DataError

CSV_PATH = Path(__file__).with_name("paper_results.csv")
COLUMNS = ("table", "dataset", "method", "group", "metric", "value", "source")
KEY = ("table", "dataset", "method", "metric")
OTHER_CSV_PATH = Path(__file__).with_name("other_results.csv")
OTHER_COLUMNS = ("paper", "dataset", "method", "metric", "value", "source")


@dataclass(frozen=True)
class SweepParam:
    """One panel of Fig. 4: a hyper-parameter, its default and what the paper says about it."""

    name: str  # key used in params.yaml sweeps and in our metrics meta
    symbol: str  # LaTeX / matplotlib mathtext
    default: float
    grid: tuple[float, ...] | None  # swept values; None where the paper text does not list them
    source: str


_NO_GRID = "swept values and per-point R@1 only in the plot, not in the text"
FIG4: dict[str, SweepParam] = {
    "p_w": SweepParam(
        "p_w",
        r"$p^w$",
        0.1,
        None,
        "rasa_paper.txt Sec. 4.4 Hyper-parameters: 'The best result is achieved at p^w = 0.1'; "
        f"A.2; {_NO_GRID}",
    ),
    "p_m": SweepParam(
        "p_m",
        r"$p^m$",
        0.3,
        None,
        f"rasa_paper.txt Sec. 4.4: 'RaSa performs best at p^m = 0.3'; A.2; {_NO_GRID}",
    ),
    "lambda1": SweepParam(
        "lambda1",
        r"$\lambda_1$",
        0.5,
        None,
        f"rasa_paper.txt Sec. 4.4: 'RaSa performs best when they are set as 0.5'; A.2; {_NO_GRID}",
    ),
    "lambda2": SweepParam(
        "lambda2",
        r"$\lambda_2$",
        0.5,
        None,
        f"rasa_paper.txt Sec. 4.4: 'RaSa performs best when they are set as 0.5'; A.2; {_NO_GRID}",
    ),
    "lambda3": SweepParam(
        "lambda3",
        r"$\lambda_3$",
        0.5,
        None,
        f"rasa_paper.txt Sec. 4.4: 'RaSa performs best when they are set as 0.5'; A.2; {_NO_GRID}",
    ),
}
# Every panel of Fig. 4 is at the full model's setting when its parameter is at the default.
FIG4_DEFAULT_R1 = (4, "cuhk", "MLM + m-RTD", "r1")


@lru_cache(maxsize=4)
def _load_cached(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: paper results table not found (it ships with the rasa package).")
    df = pd.read_csv(p, dtype={"table": int, "value": float}, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing columns {missing}; expected {list(COLUMNS)}.")
    dup = df[df.duplicated(list(KEY), keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise DataError(
            f"{p}: duplicate row for (table, dataset, method, metric) = "
            f"({first.table}, {first.dataset!r}, {first.method!r}, {first.metric!r})."
        )
    bad = df[(df.value < 0) | (df.value > 100)]
    if not bad.empty:
        raise DataError(f"{p}: values outside [0, 100] in rows {list(bad.index)}.")
    return df


def load_paper_results(path: str | Path = CSV_PATH) -> pd.DataFrame:
    """The paper's numbers as a DataFrame with columns :data:`COLUMNS` (a copy: edit freely)."""
    return _load_cached(str(path)).copy()


def paper_value(table: int, dataset: str, method: str, metric: str) -> float | None:
    """One published number, or None when the paper prints '-' (or has no such cell)."""
    df = _load_cached(str(CSV_PATH))
    hit = df[
        (df.table == table)
        & (df.dataset == dataset)
        & (df.method == method)
        & (df.metric == metric)
    ]
    return float(hit.value.iloc[0]) if len(hit) else None


def table_frame(table: int) -> pd.DataFrame:
    """One table in the paper's row order, wide: one row per (dataset, group, method), one
    column per metric (NaN where the paper prints '-')."""
    df = _load_cached(str(CSV_PATH))
    sub = df[df.table == table]
    if sub.empty:
        known = sorted(df.table.unique())
        raise ConfigError(f"paper table {table} does not exist; known tables: {known}.")
    order = {
        k: i
        for i, k in enumerate(dict.fromkeys(zip(sub.dataset, sub.group, sub.method, strict=True)))
    }
    metrics = list(dict.fromkeys(sub.metric))
    wide = sub.pivot_table(
        index=["dataset", "group", "method"], columns="metric", values="value", aggfunc="first"
    )
    wide = wide.reindex(columns=metrics)
    wide = wide.iloc[sorted(range(len(wide)), key=lambda i: order[wide.index[i]])]
    return wide.reset_index()


def methods(table: int, dataset: str | None = None) -> list[str]:
    """Row labels of a paper table in the paper's order."""
    df = _load_cached(str(CSV_PATH))
    sub = df[(df.table == table) & ((df.dataset == dataset) if dataset else True)]
    return list(dict.fromkeys(sub.method))


@lru_cache(maxsize=4)
def _load_other_cached(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: other papers' results table not found (ships with rasa).")
    df = pd.read_csv(p, dtype=str, keep_default_na=False)
    missing = [c for c in OTHER_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p}: missing columns {missing}; expected {list(OTHER_COLUMNS)}.")
    values = []
    for i, (raw, source) in enumerate(zip(df.value, df.source, strict=True)):
        if not source.strip():
            raise DataError(f"{p}, row {i + 2}: every number needs a source (column 'source').")
        try:
            value = float(raw) if raw.strip() else float("nan")
        except ValueError as exc:
            raise DataError(f"{p}, row {i + 2}: value {raw!r} is not a number.") from exc
        if not (value != value or 0 <= value <= 100):  # NaN: no number given
            raise DataError(f"{p}, row {i + 2}: value {value} is not a percentage in [0, 100].")
        values.append(value)
    df["value"] = values
    dup = df[df.duplicated(["dataset", "method", "metric"], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        raise DataError(f"{p}: duplicate row for ({first.dataset!r}, {first.method!r}, "
                        f"{first.metric!r}).")  # fmt: skip
    return df


def load_other_results(path: str | Path = OTHER_CSV_PATH) -> pd.DataFrame:
    """Other papers' numbers (columns :data:`OTHER_COLUMNS`; NaN value: no source gives it)."""
    return _load_other_cached(str(path)).copy()


def other_value(
    dataset: str, method: str, metric: str, path: str | Path = OTHER_CSV_PATH
) -> float | None:
    """One number of another paper (e.g. CMMT's own R@1 on CUHK-PEDES), or None."""
    df = _load_other_cached(str(path))
    hit = df[(df.dataset == dataset) & (df.method == method) & (df.metric == metric)]
    if not len(hit) or hit.value.iloc[0] != hit.value.iloc[0]:
        return None
    return float(hit.value.iloc[0])
