"""The Table 4 registry: names, labels, losses per row, weak-positive rates."""

from __future__ import annotations

import dataclasses

import pytest

from rasa.data.annotations import Record
from rasa.errors import ConfigError
from rasa.variants import VARIANTS, Variant, get_variant, list_variants, natural_weak_rate

TABLE4 = [
    ("cl", "ITC + IMC"),
    ("itm", "ITM"),
    ("s-itm", "s-ITM"),
    ("p-itm", "p-ITM"),
    ("itm-prd", "ITM + PRD"),
    ("p-itm-prd", "p-ITM + PRD"),
    ("mlm", "MLM"),
    ("f-rtd", "MLM + f-RTD"),
    ("o-rtd", "MLM + o-RTD"),
    ("m-rtd", "MLM + m-RTD"),
]


def test_registry_lists_table4_rows_in_order_with_labels():
    assert list_variants() == [name for name, _ in TABLE4]
    for name, label in TABLE4:
        assert get_variant(name).label == label


def test_unknown_variant_lists_known_names():
    with pytest.raises(ConfigError) as err:
        get_variant("rtd")
    for name in VARIANTS:
        assert name in str(err.value)


def test_variants_are_frozen_and_validated():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_variant("cl").mlm = True  # type: ignore[misc]
    with pytest.raises(ConfigError, match="itm"):
        Variant("x", "x", "+RA", itm="q-itm")
    with pytest.raises(ConfigError, match="rtd"):
        Variant("x", "x", "++SA", rtd="distilbert")


def test_loss_names_per_row():
    assert get_variant("cl").loss_names == ("loss_cl",)
    assert not get_variant("cl").uses_fusion
    for name in ("itm", "s-itm", "p-itm"):
        assert get_variant(name).loss_names == ("loss_cl", "loss_itm")
    assert get_variant("itm-prd").loss_names == ("loss_cl", "loss_itm", "loss_prd")
    assert get_variant("mlm").loss_names == ("loss_cl", "loss_itm", "loss_prd", "loss_mlm")
    for name, gen in (("f-rtd", "fixed"), ("o-rtd", "online"), ("m-rtd", "momentum")):
        v = get_variant(name)
        assert v.rtd == gen and v.itm == "p-itm"
        assert v.loss_names == ("loss_cl", "loss_itm", "loss_prd", "loss_mlm", "loss_rtd")


def test_dataset_p_weak_mapping():
    assert get_variant("s-itm").dataset_p_weak(0.1, natural=0.7) == 0.0
    assert get_variant("p-itm").dataset_p_weak(0.1, natural=0.7) == 0.1
    assert get_variant("m-rtd").dataset_p_weak(0.1) == 0.1
    assert get_variant("cl").dataset_p_weak(0.1) == 0.1
    assert get_variant("itm").dataset_p_weak(0.1, natural=0.7) == 0.7
    assert get_variant("itm-prd").dataset_p_weak(0.1, natural=0.7) == 0.7
    with pytest.raises(ConfigError, match="natural"):
        get_variant("itm").dataset_p_weak(0.1)


def test_natural_weak_rate_hand_example():
    recs = [
        Record("a.jpg", 0, "train", ("x", "y")),  # person 0: 3 images, 2+2+1 = 5 captions
        Record("b.jpg", 0, "train", ("x", "y")),
        Record("c.jpg", 0, "train", ("x",)),
        Record("d.jpg", 1, "train", ("x", "y")),  # person 1: one image, no weak pair
        Record("e.jpg", 2, "test", ("x",)),
    ]
    # pairs: person 0 -> 3 images × 5 captions = 15 (5 strong); person 1 -> 2 (2 strong)
    assert natural_weak_rate(recs) == pytest.approx(1 - 7 / 17)
    with pytest.raises(ConfigError, match="val"):
        natural_weak_rate(recs, split="val")
