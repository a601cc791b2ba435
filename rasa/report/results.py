"""Our result records: metrics JSON files written by ``rasa evaluate`` (rasa/engine/evaluate.py).

A record is ``{"r1", "r5", "r10", "mAP", "mINP", ..., "meta": {"experiment", "dataset",
"split", "backbone", "variant", "seed", ...}}`` (percentages, text-to-image). This module turns
records into :class:`Run` objects whose values use the paper tables' metric names, so the
tables (rasa/report/tables.py) and figures (rasa/report/figures.py) can look them up:

- ``r1``, ``r5``, ``r10``, ``mAP``, ``mINP`` as written; ``ir_r1`` ... ``ir_r10`` (Table 5's
  "IR" = image retrieval from a text query) are the same text-to-image numbers;
- ``tr_r1`` ... ``tr_r10`` (Tables 5, 6: text retrieval from an image query) from an optional
  ``"i2t": {"r1", "r5", "r10"}`` block; ``ir_ap50`` (Table 6) from an optional ``"ap50"``.

Optional meta keys the report understands: ``method`` (``rasa``, the default, or ``cmmt``:
weakly supervised, rasa/weak/; a CMMT run fills only the weakly-vs-supervised table, never the
paper's supervised rows, whatever its ``variant``), ``suite`` (which suite produced the run),
``source_dataset`` / ``train_dataset`` (Table 7: trained on one dataset, evaluated on
another), ``sweep`` = ``{"param": "p_w", "value": 0.2}`` (or ``sweep_param`` and
``sweep_value``; or ``p_w=0.2`` / ``loss.p_weak=0.2`` in the experiment name): a Fig. 4 point,
left out of the tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rasa.config import SWEEP_LOSS_KEYS
from rasa.data.formats import dataset_key
from rasa.errors import DataError

# Fig. 4's parameters under every name a run may give them: p_w, p_weak, loss.p_weak, ...
PARAM_ALIASES = {
    alias: param for param, key in SWEEP_LOSS_KEYS.items() for alias in (param, key, f"loss.{key}")
}
_NAME_RE = re.compile(
    r"(?<![A-Za-z])(" + "|".join(re.escape(k) for k in sorted(PARAM_ALIASES, key=len)[::-1]) + r")"
    r"=([0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
)

REQUIRED = ("r1", "r5", "r10", "mAP")


@dataclass(frozen=True)
class Run:
    """One evaluated checkpoint: values under the paper's metric names, plus its meta."""

    values: dict[str, float]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    @property
    def source_dataset(self) -> str | None:
        return self.meta.get("source_dataset") or self.meta.get("train_dataset")

    @property
    def dataset(self) -> str:
        """Full dataset name; ``source->target`` for a cross-dataset run (Table 7)."""
        target = str(self.meta.get("dataset") or "")
        src = self.source_dataset
        return f"{src}->{target}" if src and src != target else target

    @property
    def name(self) -> str | None:
        """The evaluation's name: the experiment, or ``<experiment>--on-<target>`` for a
        cross-dataset run (as its files are named, rasa/workflow.py ``Transfer.name``)."""
        experiment = self.meta.get("experiment")
        target = self.meta.get("dataset")
        src = self.source_dataset
        if experiment and src and target and src != target:
            return f"{experiment}--on-{target}"
        return experiment

    @property
    def dataset_key(self) -> str | None:
        target = dataset_key(self.meta.get("dataset"))
        src = dataset_key(self.source_dataset)
        if src and target and src != target:
            return f"{src}->{target}"
        return target

    @property
    def method(self) -> str:
        """``rasa`` (supervised) or ``cmmt`` (weakly supervised); older files without a
        ``method`` are supervised unless their variant says ``cmmt`` (rasa/weak/train.py)."""
        method = self.meta.get("method")
        if method:
            return str(method)
        return "cmmt" if self.meta.get("variant") == "cmmt" else "rasa"

    @property
    def seed(self) -> Any:
        return self.meta.get("seed")


def run_from_record(record: Any, path: str | Path = "<record>") -> Run:
    """Validate one metrics record and convert it to a :class:`Run`."""
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a metrics object (dict), got {type(record).__name__}.")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise DataError(
            f"{path}: not a metrics file: missing key(s) {missing}; expected the output of "
            "`rasa evaluate` with r1, r5, r10, mAP (percent) and meta."
        )
    meta = record.get("meta") or {}
    if not isinstance(meta, dict):
        raise DataError(f"{path}, key 'meta': expected an object, got {type(meta).__name__}.")
    values: dict[str, float] = {}
    try:
        for k in ("r1", "r5", "r10", "mAP", "mINP", "r_mean"):
            if record.get(k) is not None:
                values[k] = float(record[k])
        for k in ("r1", "r5", "r10"):
            values[f"ir_{k}"] = values[k]
        i2t = record.get("i2t") or {}
        for k in ("r1", "r5", "r10"):
            if i2t.get(k) is not None:
                values[f"tr_{k}"] = float(i2t[k])
        if record.get("ap50") is not None:
            values["ir_ap50"] = float(record["ap50"])
        # the two-stage figures (rasa evaluate): first stage alone, re-ranked at the share of
        # the gallery (eval.k_test_fraction); r1 itself is re-ranked at k_test
        for name, key in (("first_stage", "first_r1"), ("at_fraction", "fraction_r1")):
            part = record.get(name)
            if isinstance(part, dict) and part.get("r1") is not None:
                values[key] = float(part["r1"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: a metric is not a number ({exc}).") from exc
    for k, v in values.items():
        if not 0.0 <= v <= 100.0:
            raise DataError(f"{path}, key {k!r}: {v} is not a percentage in [0, 100].")
    meta = dict(meta)
    if isinstance(record.get("k"), int):
        meta.setdefault("k_test", record["k"])
    fraction = record.get("at_fraction")
    if isinstance(fraction, dict) and isinstance(fraction.get("k"), int):
        meta.setdefault("fraction_k", fraction["k"])
    return Run(values=values, meta=meta, path=str(path))


def find_metrics_files(dirs: Sequence[str | Path], pattern: str = "**/*.json") -> list[Path]:
    """Metrics JSON files under ``dirs`` (files given directly are kept), sorted, skipping
    files that are clearly not metrics (topk.json, params, curves)."""
    out: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            out.append(d)
            continue
        if not d.is_dir():
            raise DataError(f"{d}: results directory not found.")
        out.extend(p for p in d.glob(pattern) if p.is_file() and not p.name.startswith("."))
    return sorted(set(out))


def load_runs(files: Iterable[str | Path], strict: bool = False) -> tuple[list[Run], list[str]]:
    """Load metrics files; returns (runs, skipped) where skipped names files that are JSON but
    not metrics records (e.g. topk.json). With ``strict`` a non-metrics file raises."""
    runs: list[Run] = []
    skipped: list[str] = []
    for f in files:
        f = Path(f)
        try:
            record = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{f}: not valid JSON ({exc.msg} at line {exc.lineno}).") from exc
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
            if strict:
                run_from_record(record, f)
            skipped.append(str(f))
            continue
        runs.append(run_from_record(record, f))
    return runs, skipped


def sweep_point(run: Run) -> tuple[str, float] | None:
    """(parameter, value) of a sweep run, or None for a run outside the sweeps."""
    sweep = run.get("sweep")
    if isinstance(sweep, Mapping) and "param" in sweep and "value" in sweep:
        param, value = sweep["param"], sweep["value"]
    elif run.get("sweep_param") is not None and run.get("sweep_value") is not None:
        param, value = run.get("sweep_param"), run.get("sweep_value")
    else:
        m = _NAME_RE.search(str(run.get("experiment") or ""))
        if not m:
            return None
        param, value = m.group(1), m.group(2)
    if param not in PARAM_ALIASES:
        raise DataError(
            f"{run.path}, key 'meta.sweep': unknown sweep parameter {param!r}; expected one of "
            f"{sorted(set(PARAM_ALIASES.values()))} (or their params.yaml names)."
        )
    try:
        return PARAM_ALIASES[param], float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{run.path}, key 'meta.sweep': value {value!r} is not a number.") from exc
