"""The report's tables as declarations: which of our runs fill which row, beside which
published numbers (DESIGN.md "Reports"; RaSa paper Tables 1-8).

One :class:`TableSpec` per table in :data:`ALL_SPECS`; a new report table is one declaration
there. A table of the paper (``number`` an int) takes its rows and published numbers from
``paper_results.csv`` (:mod:`rasa.report.paper`) and one :class:`RowRule` per paper row we
reproduce (Table 4 rows <- the ten variants, Tables 1-3/5-7 "RaSa (Ours)" <- ``m-rtd``, Table 8
<- one row per backbone). A table that is not in the paper (``number`` a name) declares its
rows itself (:class:`OwnRow`: group, rule, and per dataset the :class:`Reference` its paper
column shows), repeated for each admitted dataset of ours.

Runs are split into one table per *context* (the meta fields in ``TableSpec.context``, e.g.
dataset and backbone), so numbers from a synthetic dataset and a real one are never mixed in
one cell. Only runs of the requested split (test) count, Fig. 4 sweep runs do not, and one run
per seed does (:mod:`rasa.report.aggregate`); :mod:`rasa.report.latex` writes them.

Tables 1-8 take supervised runs only (``method`` rasa): a weakly supervised CMMT run (issue #6,
``method`` cmmt) goes to :data:`WEAK_SPEC`, a table that is not in the paper: CMMT beside
supervised CL (``cl``) and RaSa (``m-rtd``) per dataset and backbone, with the RaSa paper's
numbers for CL and RaSa and CMMT's own where a pinned source gives them
(``other_results.csv``, :func:`rasa.report.paper.other_value`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rasa.data.formats import DATASETS
from rasa.report.paper import other_value, paper_value
from rasa.report.results import Run
from rasa.variants import FULL, VARIANTS

METRIC_LABELS = {
    "r1": "R@1",
    "r5": "R@5",
    "r10": "R@10",
    "mAP": "mAP",
    "tr_r1": "TR R@1",
    "tr_r5": "TR R@5",
    "tr_r10": "TR R@10",
    "ir_r1": "IR R@1",
    "ir_r5": "IR R@5",
    "ir_r10": "IR R@10",
    "ir_ap50": "IR AP@50",
}
DATASET_LABELS = {d.key: d.label for d in DATASETS}


@dataclass(frozen=True)
class RowRule:
    """Our runs matching ``match`` (meta field -> value, or tuple of allowed values) fill the
    paper row ``method``; ``{backbone}`` in ``method`` makes one row per backbone."""

    method: str
    match: Mapping[str, Any]

    def matches(self, run: Run) -> bool:
        for key, want in self.match.items():
            got = run.method if key == "method" else run.get(key)
            allowed = want if isinstance(want, tuple) else (want,)
            if got not in allowed:
                return False
        return True

    def row_name(self, run: Run) -> str:
        return self.method.format(backbone=str(run.get("backbone") or "?").upper())


@dataclass(frozen=True)
class Reference:
    """A published number a table of ours shows in its paper column: the RaSa paper's cell
    (``table``, dataset, row), or with ``table`` None a row of ``other_results.csv``."""

    dataset: str
    method: str
    table: int | None = None

    def value(self, metric: str) -> float | None:
        if self.table is None:
            return other_value(self.dataset, self.method, metric)
        return paper_value(self.table, self.dataset, self.method, metric)


@dataclass(frozen=True)
class OwnRow:
    """A row of a table that is not in the paper: its group, which runs fill it, and per
    dataset key the published number beside ours (none: '--')."""

    group: str
    rule: RowRule
    references: Mapping[str, Reference] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.rule.method


@dataclass(frozen=True)
class TableSpec:
    number: int | str  # the paper's table number; a name for a table not in the paper
    title: str  # the paper's caption, shortened
    metrics: tuple[str, ...]
    rules: tuple[RowRule, ...]
    context: tuple[str, ...]  # meta fields that separate tables of ours
    datasets_in_columns: tuple[str, ...] = ()  # Tables 5, 6: column blocks per dataset
    show_group: bool = True
    extra_group: str = "ours"  # group of our rows the paper does not have
    decimals: int = 2
    note: str = ""  # what "ours" means where it differs from the paper's protocol
    methods: tuple[str, ...] = ("rasa",)  # training methods whose runs may fill the rows
    # a table not in the paper: its rows, repeated for each dataset of ours among
    # ``own_datasets`` (the first alone when there is no run)
    own_rows: tuple[OwnRow, ...] = ()
    own_datasets: tuple[str, ...] = ()
    index_name: str = ""  # its name in the report's index (default "Table N")
    index_intro: str = ""  # a paragraph the index puts before it

    @property
    def stem(self) -> str:
        """File-name stem: ``table4``, ``table-weak``."""
        return f"table{self.number}" if isinstance(self.number, int) else f"table-{self.number}"

    @property
    def heading(self) -> str:
        """``Table 4 of RaSa (IJCAI 2023)`` or the name of a table of ours."""
        if isinstance(self.number, int):
            return f"Table {self.number} of RaSa (IJCAI 2023)"
        return f"A table of ours ({self.number}), not in the RaSa paper"

    @property
    def in_paper(self) -> bool:
        return not self.own_rows

    @property
    def row_rules(self) -> tuple[RowRule, ...]:
        """Every rule that assigns runs to rows, in order."""
        return self.rules + tuple(r.rule for r in self.own_rows)

    @property
    def name(self) -> str:
        return self.index_name or f"Table {self.number}"


_M4 = ("r1", "r5", "r10", "mAP")
_OURS = RowRule("RaSa (Ours)", {"variant": FULL})
TABLE4_VARIANTS = {v.label: v.name for v in VARIANTS.values()}  # paper row -> variant
_PEDES = ("cuhk", "icfg", "rstp")

# ---- the tables, in report order ---------------------------------------------------------
_TABLES = (
    TableSpec(
        1, "Comparison with other methods on CUHK-PEDES.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    TableSpec(
        2, "Comparison with other methods on ICFG-PEDES.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    TableSpec(
        3, "Comparison with other methods on RSTPReid.", _M4, (_OURS,), ("dataset", "backbone")
    ),
    TableSpec(
        4,
        "Comparison of RaSa with different settings on CUHK-PEDES.",
        _M4,
        tuple(RowRule(m, {"variant": v}) for m, v in TABLE4_VARIANTS.items()),
        ("dataset", "backbone"),
    ),
    TableSpec(
        5,
        "Results of coarse-grained retrieval on Flickr30K and COCO.",
        ("tr_r1", "tr_r5", "tr_r10", "ir_r1", "ir_r5", "ir_r10"),
        (_OURS,),
        ("backbone",),
        datasets_in_columns=("flickr30k", "coco"),
        show_group=False,
        note="Ours: the m-rtd runs (the paper drops RA here: SA with vanilla ITM); TR from the "
        "metrics' i2t block when present.",
    ),
    TableSpec(
        6,
        "Results of fine-grained retrieval on CUB and Flowers.",
        ("tr_r1", "ir_ap50"),
        (_OURS,),
        ("backbone",),
        datasets_in_columns=("cub", "flowers"),
        show_group=False,
        decimals=1,
        note="Ours: TR R@1 from the metrics' i2t block, IR AP@50 from 'ap50', when present.",
    ),
    TableSpec(
        7,
        "Domain generalization: CUHK-PEDES (C) and ICFG-PEDES (I) as source and target in turn.",
        ("r1", "r5", "r10"),
        (_OURS,),
        ("backbone",),
        note="Ours: runs whose meta names the training set (source_dataset) and the test set.",
    ),
    TableSpec(
        8,
        "RaSa on other backbones, CUHK-PEDES.",
        _M4,
        (RowRule("RaSa_{backbone}", {"variant": FULL}),),
        ("dataset",),
    ),
    # Issue #6: weakly supervised CMMT (ICCV 2021) next to supervised CL and RaSa.
    TableSpec(
        "weak",
        "Weakly supervised (CMMT, ICCV 2021: no identity labels, image-caption pairs only) vs "
        "supervised (CL and RaSa, identity labels).",
        _M4,
        (),
        ("dataset", "backbone"),
        note="Paper column: CL and RaSa from the RaSa paper (Table 4 on CUHK-PEDES; RaSa (Ours) "
        "of Tables 2-3 on ICFG-PEDES and RSTPReid); CMMT from rasa/report/other_results.csv, "
        "which holds no number yet (the pinned CMMT notes, seeds/cmmt_weakly_supervised_notes."
        "txt, give none). Ours: CMMT = runs with method cmmt; CL and RaSa = supervised runs of "
        "variants cl and m-rtd.",
        methods=("rasa", "cmmt"),
        own_rows=(
            OwnRow(
                "weakly supervised",
                RowRule("CMMT", {"method": "cmmt"}),
                {d: Reference(d, "CMMT") for d in _PEDES},
            ),
            OwnRow(
                "supervised",
                RowRule("CL (ITC + IMC)", {"method": "rasa", "variant": "cl"}),
                {"cuhk": Reference("cuhk", VARIANTS["cl"].label, 4)},
            ),
            OwnRow(
                "supervised",
                RowRule("RaSa (MLM + m-RTD)", {"method": "rasa", "variant": FULL}),
                {
                    "cuhk": Reference("cuhk", VARIANTS[FULL].label, 4),
                    "icfg": Reference("icfg", "RaSa (Ours)", 2),
                    "rstp": Reference("rstp", "RaSa (Ours)", 3),
                },
            ),
        ),
        own_datasets=_PEDES,
        index_name="Weakly vs supervised",
        index_intro="\nNot in the RaSa paper: weakly supervised CMMT vs supervised CL and RaSa "
        "(issue #6; CMMT runs fill no row of Tables 1-8).\n",
    ),
)


def _build(specs: tuple[TableSpec, ...]) -> dict[int | str, TableSpec]:
    out: dict[int | str, TableSpec] = {}
    for spec in specs:
        if spec.number in out:
            raise ValueError(f"report table {spec.number!r} is declared twice")
        out[spec.number] = spec
    return out


ALL_SPECS: dict[int | str, TableSpec] = _build(_TABLES)
SPECS: dict[int, TableSpec] = {n: s for n, s in ALL_SPECS.items() if isinstance(n, int)}
WEAK_SPEC = ALL_SPECS["weak"]
