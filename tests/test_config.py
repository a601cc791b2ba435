"""params.yaml schema validation, experiment resolution and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rasa.config import (
    ExperimentConfig,
    load_config,
    load_params,
    parse_set,
    resolve_experiment,
    tokens_filename,
    validate,
)
from rasa.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def params() -> dict:
    return load_params(ROOT / "params.yaml")


def test_repository_params_validate_and_every_experiment_resolves(params):
    assert "quick" in params["suites"]
    for name in params["experiments"]:
        cfg = resolve_experiment(params, name)
        assert cfg.annotations.endswith(f"{cfg.dataset}/annotations.json")


def test_resolution_order_defaults_backbone_overrides_set(params):
    params["experiments"]["x"] = {
        "dataset": "synth-cuhk", "backbone": "tiny", "variant": "cl", "seed": 3,
        "overrides": {"train.epochs": 4, "loss.lambda_cl": 0.25},
    }  # fmt: skip
    cfg = resolve_experiment(params, "x", ["train.epochs=7", "model.queue_size=64"])
    assert cfg.train.weight_decay == 0.02  # default
    assert cfg.train.batch_size == 32  # backbone tiny
    assert cfg.loss["lambda_cl"] == 0.25  # experiment override
    assert cfg.train.epochs == 7  # --set wins
    assert cfg.model == {**params["backbones"]["tiny"]["model"], "queue_size": 64}  # --set
    # tiny's tokenizer: the one recorded beside the pre-trained export
    assert cfg.tokenizer == "checkpoint:pretrained/synth-tiny/model.safetensors"
    assert (
        cfg.tokens
        == "data/synth-cuhk/tokens-checkpoint-pretrained-synth-tiny-model.safetensors.npz"
    )
    # an experiment may start from scratch with its own vocabulary
    params["experiments"]["x"].update(pretrained="none", tokenizer="wordpiece:2000")
    cfg = resolve_experiment(params, "x")
    assert cfg.pretrained == "none" and cfg.tokens == "data/synth-cuhk/tokens-wordpiece-2000.npz"


def test_set_values_are_yaml_and_1e_notation_is_a_number():
    assert parse_set("train.lr=1e-4") == ("train.lr", 1e-4)
    assert parse_set("train.clip_grad=null") == ("train.clip_grad", None)
    assert parse_set("model.image_size=[32, 16]") == ("model.image_size", [32, 16])
    assert parse_set("train.bf16=false") == ("train.bf16", False)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_set("train.lr")


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("train.lr=-1", r"key 'train\.lr'.*less than or equal to the minimum of 0"),
        ("train.batch_size=abc", r"key 'train\.batch_size'.*not of type 'integer'"),
        ("train.lrr=1", r"key 'train'.*'lrr' was unexpected"),
        ("eval.select_metric=r2", r"key 'eval\.select_metric'"),
        ("loss.not_a_loss=1", r"loss\.not_a_loss"),
        ("foo.bar=1", r"cannot set 'foo\.bar'"),
    ],
)
def test_bad_values_name_the_key_path(params, item, message):
    with pytest.raises(ConfigError, match=message):
        resolve_experiment(params, "synth-cuhk-tiny-cl", [item])


def test_schema_errors_in_params_name_the_path(params):
    params["data"]["datasets"]["synth-cuhk"]["preset"] = "nope"
    with pytest.raises(ConfigError, match=r"data\.datasets\.synth-cuhk\.preset.*'nope'"):
        validate(params, "params.yaml")


def test_cross_references_are_checked(tmp_path, params):
    params["suites"]["quick"] = ["missing-experiment"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ConfigError, match=r"suites\.quick.*missing-experiment"):
        load_params(path)
    with pytest.raises(ConfigError, match="no experiment 'nope'"):
        resolve_experiment(load_params(ROOT / "params.yaml"), "nope")


def test_saved_config_round_trips_and_accepts_set(tmp_path, params):
    cfg = resolve_experiment(params, "synth-cuhk-tiny-m-rtd", ["train.lr=3e-4"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert isinstance(again, ExperimentConfig)
    changed = load_config(tmp_path / "config.yaml", ["train.epochs=2", "tokens=/x/t.npz"])
    assert changed.train.epochs == 2 and changed.tokens == "/x/t.npz"


def test_tokens_filename_is_path_safe():
    assert tokens_filename("wordpiece:2000") == "tokens-wordpiece-2000.npz"
    assert tokens_filename("bert:/models/bert base") == "tokens-bert-models-bert-base.npz"


def test_synth_parts_add_up_to_the_synth_suite(params):
    """The suites that run `synth` in sittings (issue #12) cover its plan exactly, each run once:
    their reports together stand for `synth`, so a run added to one list must reach the other."""
    suites = params["suites"]
    parts = ["synth-table4", "synth-tables23-cmmt", "synth-fig4", "synth-tables568"]
    runs = [r for p in parts for r in suites[p]]
    assert len(runs) == len(set(runs)), "a run is in two parts"
    assert sorted(runs) == sorted(suites["synth"])
    assert set(suites["synth-core"]) <= set(suites["synth-table4"])
