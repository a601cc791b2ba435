"""The rows of the paper's Table 4 (ablation of RaSa's objectives) as a registry.

Each :class:`Variant` names the losses one training run optimises and how. Rows are cumulative,
as in the table: every row has CL (ITC + IMC); the "+RA" rows add an ITM flavour (and PRD);
the "++SA" rows are p-ITM + PRD + MLM, plus RTD with one of three generators.

How the three ITM flavours map to the batch (paper §3.2 and the Table 4 caption). The dataset
feeds, for every (image, caption) pair, ``text2`` = the pair's caption or, with probability
``p_weak``, a caption of *another* image of the same person (a weak positive, ``replace`` = 1);
``text2`` is the positive of ITM/PRD and the text of CL, as in the official code.

- ``itm`` — "learns from all positive pairs without a probabilistic inputting": weak pairs are
  not down-weighted, so the positive of an image is any caption of its person, uniformly. The
  dataset is run at the *natural* weak rate of the split (:func:`natural_weak_rate`: the
  fraction of weak pairs among all (image, caption of the same person) pairs: 1 − 1/k for k
  images per person with equal caption counts, about 0.7 on CUHK-PEDES's ~3 images per id).
- ``s-itm`` — "learns from only strong positive pairs and discards all weak positive pairs":
  ``p_weak`` = 0, and the step also drops any positive with ``replace`` = 1 from the ITM loss.
- ``p-itm`` — "probabilistic inputting of strong and weak positive pairs": ``p_weak`` = p^w
  (``LossConfig.p_weak``, 0.1 in the paper).
- ``cl`` alone and the SA rows use p^w (the paper's default data).

RTD generators: ``fixed`` (f-RTD: a small MLM trained once on the training captions,
:mod:`rasa.models.generator`; the paper used DistilBERT), ``online`` (o-RTD: the online model's
MLM head, no gradient) and ``momentum`` (m-RTD: the momentum model's MLM head; full RaSa).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rasa.errors import ConfigError

ITM_MODES = ("itm", "s-itm", "p-itm")
GENERATORS = ("fixed", "online", "momentum")


@dataclass(frozen=True)
class Variant:
    """One Table 4 row. ``itm`` is None or one of ``ITM_MODES``; ``rtd`` None or a generator."""

    name: str
    label: str  # the paper's "Setting" column
    module: str  # the paper's "Module" column: "CL", "+RA", "++SA"
    itm: str | None = None
    prd: bool = False
    mlm: bool = False
    rtd: str | None = None
    cl: bool = True
    imc: bool = True  # CL = (ITC + IMC) / 2 (RaSa); False: ITC alone (ALBEF pre-training)

    def __post_init__(self) -> None:
        if self.itm is not None and self.itm not in ITM_MODES:
            raise ConfigError(f"variant {self.name!r}: itm = {self.itm!r}; expected {ITM_MODES}.")
        if self.rtd is not None and self.rtd not in GENERATORS:
            raise ConfigError(
                f"variant {self.name!r}: rtd = {self.rtd!r}; expected one of {GENERATORS}."
            )

    @property
    def uses_fusion(self) -> bool:
        """Whether any loss runs the cross-modal encoder."""
        return self.itm is not None or self.prd or self.mlm or self.rtd is not None

    @property
    def needs_generator(self) -> bool:
        """Whether a run needs the fixed RTD generator trained beforehand (f-RTD:
        ``rasa generator``, :mod:`rasa.models.generator`)."""
        return self.rtd == "fixed"

    @property
    def loss_names(self) -> tuple[str, ...]:
        """The named losses :func:`rasa.engine.step.compute_losses` returns (besides ``loss``)."""
        names = []
        if self.cl:
            names.append("loss_cl")
        if self.itm is not None:
            names.append("loss_itm")
        if self.prd:
            names.append("loss_prd")
        if self.mlm:
            names.append("loss_mlm")
        if self.rtd is not None:
            names.append("loss_rtd")
        return tuple(names)

    def dataset_p_weak(self, p_w: float, natural: float | None = None) -> float:
        """The weak-positive rate the training dataset should use for this row (see module doc).

        ``p_w`` is the paper's p^w; ``natural`` the split's natural weak rate, needed by ``itm``.
        """
        if self.itm == "s-itm":
            return 0.0
        if self.itm == "itm":
            if natural is None:
                raise ConfigError(
                    f"variant {self.name!r} feeds all positive pairs: it needs the natural weak "
                    "rate of the training split (rasa.variants.natural_weak_rate(records))."
                )
            return natural
        return p_w


_ROWS = (
    Variant("cl", "ITC + IMC", "CL"),
    Variant("itm", "ITM", "+RA", itm="itm"),
    Variant("s-itm", "s-ITM", "+RA", itm="s-itm"),
    Variant("p-itm", "p-ITM", "+RA", itm="p-itm"),
    Variant("itm-prd", "ITM + PRD", "+RA", itm="itm", prd=True),
    Variant("p-itm-prd", "p-ITM + PRD", "+RA", itm="p-itm", prd=True),
    Variant("mlm", "MLM", "++SA", itm="p-itm", prd=True, mlm=True),
    Variant("f-rtd", "MLM + f-RTD", "++SA", itm="p-itm", prd=True, mlm=True, rtd="fixed"),
    Variant("o-rtd", "MLM + o-RTD", "++SA", itm="p-itm", prd=True, mlm=True, rtd="online"),
    Variant("m-rtd", "MLM + m-RTD", "++SA", itm="p-itm", prd=True, mlm=True, rtd="momentum"),
)


def _build(rows: Iterable[Variant]) -> dict[str, Variant]:
    out: dict[str, Variant] = {}
    for row in rows:
        if row.name in out:
            raise ValueError(f"duplicate variant name {row.name!r}")
        out[row.name] = row
    return out


VARIANTS: dict[str, Variant] = _build(_ROWS)
FULL = "m-rtd"  # full RaSa

# Objective sets of pre-training on pairs (``rasa pretrain``, issue #12), not Table 4 rows:
# ALBEF's ITC (no IMC) with momentum distillation and queues, ITM on in-batch hard negatives
# (every image its own identity, so the positive is the pair itself: s-ITM with no weak
# pairs), MLM; and the same without MLM.
PRETRAINING: dict[str, Variant] = _build((
    Variant("albef", "ITC + ITM + MLM", "pre-training", itm="s-itm", mlm=True, imc=False),
    Variant("itc-itm", "ITC + ITM", "pre-training", itm="s-itm", imc=False),
))  # fmt: skip
if set(PRETRAINING) & set(VARIANTS):
    raise ValueError("a pre-training objective set shares its name with a Table 4 variant")


def list_variants() -> list[str]:
    """Names in Table 4 order."""
    return list(VARIANTS)


def get_variant(name: str) -> Variant:
    """A Table 4 row or a pre-training objective set (:data:`PRETRAINING`) by name."""
    try:
        return VARIANTS[name] if name in VARIANTS else PRETRAINING[name]
    except KeyError:
        raise ConfigError(
            f"unknown variant {name!r}; known variants (paper Table 4): {', '.join(VARIANTS)}; "
            f"pre-training objective sets: {', '.join(PRETRAINING)}."
        ) from None


def natural_weak_rate(records: Iterable, split: str = "train") -> float:
    """Fraction of weak pairs among all (image, caption of the same person) pairs of a split.

    ``records`` are :class:`rasa.data.annotations.Record`-like (``pid``, ``split``,
    ``captions``). For image i of person p with n_i captions and N_p captions per person, the
    pairs are Σ_i N_p of which Σ_i n_i are strong; weak rate = 1 − Σ n_i / Σ N_p.
    """
    per_person: dict[int, int] = {}
    images: list[tuple[int, int]] = []
    for rec in records:
        if rec.split != split:
            continue
        n = len(rec.captions)
        per_person[rec.pid] = per_person.get(rec.pid, 0) + n
        images.append((rec.pid, n))
    total = sum(per_person[pid] for pid, _ in images)
    if total == 0:
        raise ConfigError(f"natural_weak_rate: split {split!r} has no captions.")
    strong = sum(n for _, n in images)
    return 1.0 - strong / total
