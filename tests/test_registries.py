"""Every list of names agrees with the registry it comes from (issue 15): the params schema's
enums, the CLI's choices, the report's labels and the evaluation protocols."""

from __future__ import annotations

import yaml
from conftest import ROOT

from rasa.cli import build_parser
from rasa.config import SWEEP_LOSS_KEYS, _schema, load_params
from rasa.data.annotations import SPLITS
from rasa.data.formats import DATASETS, PAPER_STATS, dataset_key, list_formats
from rasa.data.synth import PARSE_FORMATS, PRESETS
from rasa.engine.evaluate import BOTH_DIRECTIONS, FINE_GRAINED
from rasa.engine.metrics import METRIC_KEYS
from rasa.models import list_models
from rasa.report.paper import load_paper_results
from rasa.report.tables import ALL_SPECS, DATASET_LABELS, METRIC_LABELS, TABLE4_VARIANTS
from rasa.variants import VARIANTS, list_variants


def _defs() -> dict:
    return _schema()["$defs"]


def _choices(*path: str) -> tuple:
    """The ``choices`` of an option of ``rasa <path...>``."""
    parser = build_parser()
    *commands, option = path
    for name in commands:
        sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = sub.choices[name]
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


def test_schema_variant_enum_is_the_variant_registry():
    assert _defs()["experiment"]["properties"]["variant"]["enum"] == list_variants()


def test_schema_formats_and_presets_are_the_registries():
    synth, real = _defs()["dataset"]["oneOf"]
    assert set(synth["properties"]["preset"]["enum"]) == set(PRESETS)
    assert set(real["properties"]["format"]["enum"]) == {"auto", *list_formats()}


def test_schema_sweeps_and_select_metric():
    assert set(_defs()["experiment"]["properties"]["sweep"]["enum"]) == set(SWEEP_LOSS_KEYS)
    assert set(_defs()["eval"]["properties"]["select_metric"]["enum"]) <= set(METRIC_KEYS)


def test_params_backbones_are_registered_models():
    params = load_params(ROOT / "params.yaml")
    assert set(params["backbones"]) <= set(list_models())
    for exp in params["experiments"].values():
        assert exp["variant"] in VARIANTS


def test_cli_choices_come_from_the_registries():
    assert set(_choices("data", "parse", "--format")) == {"auto", *list_formats()}
    assert set(_choices("data", "synth", "--preset")) == set(PRESETS)
    assert _choices("evaluate", "--split") == SPLITS
    assert list(_choices("bench", "train-step", "--variant")) == list_variants()


def test_every_format_reads_a_declared_dataset_and_back():
    formats = set(list_formats())
    assert {d.format for d in DATASETS} == formats
    assert set(PARSE_FORMATS.values()) <= formats
    assert {d.name for d in DATASETS} == set(PAPER_STATS)
    assert len({d.key for d in DATASETS}) == len(DATASETS)


def test_dataset_keys_labels_and_protocols_come_from_the_declarations():
    assert DATASET_LABELS == {d.key: d.label for d in DATASETS}
    assert set(BOTH_DIRECTIONS) == {"flickr30k", "coco"}
    assert set(FINE_GRAINED) == {"cub", "flowers"}
    for d in DATASETS:  # a dataset's own names and its SynthPEDES stand-in map to its key
        assert dataset_key(d.name) == d.key
        assert dataset_key(f"synth-{d.match}-300") == d.key
    assert dataset_key("toy") is None


def test_paper_numbers_use_declared_names():
    df = load_paper_results()
    keys = {d.key for d in DATASETS}
    for name in set(df.dataset):
        assert set(name.split("->")) <= keys, name
    assert set(df.metric) <= set(METRIC_LABELS)
    assert set(df.table) <= {n for n in ALL_SPECS if isinstance(n, int)}


def test_table4_labels_are_the_variant_labels():
    assert TABLE4_VARIANTS == {v.label: v.name for v in VARIANTS.values()}
    df = load_paper_results().query("table == 4")
    assert list(dict.fromkeys(df.method)) == [v.label for v in VARIANTS.values()]
    assert list(dict.fromkeys(df.group)) == list(dict.fromkeys(v.module for v in VARIANTS.values()))


def test_only_f_rtd_needs_a_generator():
    assert [v.name for v in VARIANTS.values() if v.needs_generator] == ["f-rtd"]


def test_workflow_plans_a_generator_exactly_for_generator_variants():
    from rasa.workflow import make_plan

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    plan = make_plan(params, "synth")
    for name, run in plan.runs.items():
        variant = VARIANTS[params["experiments"][name]["variant"]]
        assert (run.generator is not None) == variant.needs_generator, name
