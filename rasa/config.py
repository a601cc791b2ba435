"""Configuration: ``params.yaml`` validated by a JSON Schema, resolved into dataclasses.

``params.yaml`` is the single source of the experiment grid (DESIGN.md, "Workflow and
versioning"). One experiment resolves in this order, later wins:

1. the ``train`` / ``loss`` / ``eval`` defaults,
2. its backbone's ``train`` / ``loss`` entries (e.g. ``tiny`` trains from scratch with one lr),
3. the experiment's ``overrides`` (dotted keys: ``train.lr: 1e-4``),
4. ``--set key=value`` on the command line (values parsed as YAML, like ``dvc exp run -S``).

A backbone's weights come from ``backbones.<name>.pretrained`` only (:func:`resolve_pretrained`):
a local path, ``none`` (random init) or ``{url, sha256}`` (fetched by the workflow into
:func:`weights_path`); without the key, the backbone's default (``rasa.models.default_weights``).
``rasa train`` records the file's sha256 in the resolved config.

The result is validated again (``$defs/resolved`` in the schema) and saved as ``config.yaml``
beside every output; ``rasa train --config config.yaml`` runs it again as is. A bad value
raises :class:`~rasa.errors.ConfigError` naming the key path and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from rasa.errors import ConfigError
from rasa.io import write_text

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "params.schema.yaml"
SET_ROOTS = ("train", "loss", "eval", "model")
SET_TOP = (
    "dataset", "backbone", "variant", "seed", "tokenizer", "annotations", "tokens", "pretrained"
)  # fmt: skip
# Fig. 4's hyper-parameters (an experiment's ``sweep``) -> the loss key each one names
SWEEP_LOSS_KEYS = {
    "p_w": "p_weak",
    "p_m": "p_mask_rtd",
    "lambda1": "lambda_prd",
    "lambda2": "lambda_rtd",
    "lambda3": "lambda_cl",
}


@dataclass
class TrainConfig:
    """Optimisation and loop settings (paper Section 4.1: AdamW, cosine, 30 epochs, batch 52)."""

    epochs: int = 30
    batch_size: int = 52  # global batch per optimizer step
    grad_accum: int = 1
    lr: float = 1e-5
    lr_new: float = 1e-4
    weight_decay: float = 0.02
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.1
    alpha_warmup: bool = True
    clip_grad: float | None = None
    resize: str = "pad"
    ckpt_every_steps: int = 500
    eval_every_epochs: int = 1
    log_every_steps: int = 10
    bf16: bool | str = True  # true: bf16 autocast on CUDA; "always": on a CPU too
    compile: bool = False
    num_workers: int = 2
    val_from_train: float = 0.1
    max_steps: int | None = None


@dataclass
class EvalConfig:
    k_test: int = 128
    # k relative to the gallery (the paper re-ranks 128 of 3,074 test images: 0.04), at least
    # RELATIVE_K_FLOOR images; reported beside k_test (metrics["at_fraction"]); None: off
    k_test_fraction: float | None = None
    batch_size: int = 64
    select_metric: str = "r1"


@dataclass
class ExperimentConfig:
    """One fully resolved experiment: everything `rasa train` reads."""

    name: str
    dataset: str
    backbone: str
    variant: str
    seed: int
    tokenizer: str
    data_root: str
    annotations: str
    tokens: str
    model: dict[str, Any] = field(default_factory=dict)
    # the backbone's weights: None (its default), "none" (random init) or
    # {"path", "url", "sha256"} (sha256 of the file, filled in when training starts)
    pretrained: str | dict[str, Any] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: dict[str, Any] = field(default_factory=dict)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: str = "rasa"  # "cmmt": weakly supervised (rasa.weak), no identity labels
    # CMMT's settings (params `cmmt:`, fields of rasa.weak.train.CMMTConfig) for method cmmt,
    # so that `rasa train --config run/config.yaml` runs them again; None otherwise
    cmmt: dict[str, Any] | None = None
    # a Fig. 4 point: {"param": "p_w", "value": <the resolved loss value>}, else None
    sweep: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
        validate(raw, source, definition="resolved")
        raw = copy.deepcopy(raw)
        train = TrainConfig(**raw.pop("train"))
        ev = EvalConfig(**raw.pop("eval"))
        return cls(train=train, eval=ev, **raw)

    def save(self, path: str | Path) -> None:
        write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


# ---- schema ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def _key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def validate(doc: Any, source: str, definition: str | None = None) -> None:
    """Validate ``doc`` against the params schema (or one of its ``$defs``)."""
    import jsonschema

    schema = _schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: (len(e.absolute_path), e.message))
    if not errors:
        return
    err = errors[0]
    # oneOf failures hide the useful message in their context; take the deepest one.
    while err.context:
        err = max(err.context, key=lambda e: len(e.absolute_path))
    expected = err.schema.get("description") if isinstance(err.schema, dict) else None
    more = f" ({len(errors) - 1} more problem(s) after this one)" if len(errors) > 1 else ""
    hint = f"; expected {expected}" if expected else ""
    raise ConfigError(
        f"{source}, key {_key_path(err.absolute_path)!r}: {err.message}{hint}{more}. "
        f"The schema is {SCHEMA_PATH.name}."
    )


def _read_yaml(path: Path) -> Any:
    """A YAML file's content; not UTF-8 or not YAML -> :class:`ConfigError` naming it."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from exc


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate ``params.yaml``; also check cross-references (experiments, suites)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"{path}: params file not found (run from the repository root or pass --params)."
        )
    params = _read_yaml(path)
    validate(params, str(path))
    for name, exp in params["experiments"].items():
        for kind, table in (("dataset", "data.datasets"), ("backbone", "backbones")):
            known = params["data"]["datasets"] if kind == "dataset" else params["backbones"]
            if exp[kind] not in known:
                raise ConfigError(
                    f"{path}, key 'experiments.{name}.{kind}': {exp[kind]!r} is not defined in "
                    f"{table} (known: {', '.join(sorted(known))})."
                )
    for suite, names in params["suites"].items():
        for n in names:
            if n not in params["experiments"]:
                raise ConfigError(
                    f"{path}, key 'suites.{suite}': experiment {n!r} is not defined under "
                    "experiments."
                )
    return params


# ---- overrides ---------------------------------------------------------------------------
def parse_set(item: str) -> tuple[str, Any]:
    """``'train.lr=1e-4'`` -> ``('train.lr', 0.0001)``; the value is parsed as YAML."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(
            f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. train.lr=1e-4."
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({exc}).") from exc
    if isinstance(parsed, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", parsed):
        parsed = float(parsed)  # YAML 1.1 reads 1e-4 as a string
    return key, parsed


def set_dotted(doc: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``doc[a][b][c] = value`` for ``key = 'a.b.c'`` (creating nested dicts)."""
    parts = key.split(".")
    if parts[0] not in SET_ROOTS + SET_TOP or (parts[0] in SET_TOP and len(parts) > 1):
        raise ConfigError(
            f"{source}: cannot set {key!r}; settable keys are "
            f"{', '.join(SET_TOP)} and {', '.join(r + '.<field>' for r in SET_ROOTS)}."
        )
    node = doc
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise ConfigError(f"{source}: {key!r} goes through {p!r}, which is not a mapping.")
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def _fix_floats(node: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-4`` as a string: accept it as the number it means."""
    if isinstance(node, dict):
        return {k: _fix_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_floats(v) for v in node]
    if isinstance(node, str) and re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", node):
        return float(node)
    return node


def tokens_filename(tokenizer: str) -> str:
    """``wordpiece:2000`` -> ``tokens-wordpiece-2000.npz`` (safe in any file system)."""
    return "tokens-" + re.sub(r"[^A-Za-z0-9._-]+", "-", tokenizer).strip("-") + ".npz"


def dataset_paths(data_root: str, dataset: str, tokenizer: str) -> tuple[str, str]:
    """Where `rasa data` puts a dataset's annotation table and token cache."""
    base = Path(data_root) / dataset
    return str(base / "annotations.json"), str(base / tokens_filename(tokenizer))


def weights_path(data_root: str, backbone: str, url: str) -> str:
    """Where the workflow fetches a backbone's weights given by url:
    ``{data.root}/weights/{backbone}/{the url's file name}``."""
    from urllib.parse import urlsplit

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(urlsplit(url).path).name).strip("-.")
    return str(Path(data_root) / "weights" / backbone / (name or "weights.pth"))


def resolve_pretrained(value: Any, backbone: str, data_root: str) -> str | dict[str, Any] | None:
    """``backbones.<name>.pretrained`` -> the resolved config's ``pretrained`` (None = the
    backbone's default weights, ``"none"`` = random init, else ``{path, url, sha256}``)."""
    if value is None or value == "none":
        return value
    if isinstance(value, str):
        return {"path": value, "url": None, "sha256": None}
    if isinstance(value, dict) and {"url", "sha256"} <= set(value):
        return {
            "path": weights_path(data_root, backbone, value["url"]),
            "url": value["url"],
            "sha256": str(value["sha256"]).lower(),
        }
    raise ConfigError(
        f"backbones.{backbone}.pretrained: {value!r}; expected a local path, `none` or "
        "{url: ..., sha256: ...}."
    )


def generator_path(tokens_path: str | Path) -> Path:
    """Where the f-RTD generator of a token cache lives: beside it, ``<cache>.rtd_generator.pt``."""
    p = Path(tokens_path)
    return p.with_name(p.name + ".rtd_generator.pt")


def resolve_experiment(
    params: dict[str, Any],
    name: str,
    sets: list[str] | tuple[str, ...] = (),
    source: str = "params.yaml",
) -> ExperimentConfig:
    """Resolve experiment ``name`` of validated ``params`` with ``--set`` items applied."""
    if name not in params["experiments"]:
        raise ConfigError(
            f"{source}: no experiment {name!r} under experiments (known: "
            f"{', '.join(sorted(params['experiments']))})."
        )
    exp = params["experiments"][name]
    backbone = params["backbones"].get(exp["backbone"], {})
    doc: dict[str, Any] = {
        "name": name,
        "dataset": exp["dataset"],
        "backbone": exp["backbone"],
        "variant": exp["variant"],
        "seed": exp["seed"],
        "method": exp.get("method", "rasa"),
        "cmmt": copy.deepcopy(params.get("cmmt") or {}) if exp.get("method") == "cmmt" else None,
        "model": copy.deepcopy(backbone.get("model", {})),
        "train": {**params["train"], **backbone.get("train", {})},
        "loss": {**params["loss"], **backbone.get("loss", {})},
        "eval": {**asdict(EvalConfig()), **params["eval"]},
    }
    for key, value in exp.get("overrides", {}).items():
        set_dotted(doc, key, value, f"{source}, key 'experiments.{name}.overrides'")
    explicit: dict[str, Any] = {}
    for item in sets:
        key, value = parse_set(item)
        if key in ("tokenizer", "annotations", "tokens", "pretrained"):
            explicit[key] = value
        else:
            set_dotted(doc, key, value, f"--set {item!r}")
    if doc["backbone"] not in params["backbones"]:
        raise ConfigError(
            f"backbone {doc['backbone']!r} is not defined under backbones "
            f"(known: {', '.join(sorted(params['backbones']))})."
        )
    # an experiment may name its own tokenizer and weights (e.g. `pretrained: none`: from
    # scratch), else its backbone's
    backbone = params["backbones"][doc["backbone"]]
    doc["tokenizer"] = explicit.get("tokenizer", exp.get("tokenizer", backbone["tokenizer"]))
    doc["data_root"] = params["data"]["root"]
    doc["pretrained"] = resolve_pretrained(
        explicit.get("pretrained", exp.get("pretrained", backbone.get("pretrained"))),
        doc["backbone"], doc["data_root"],
    )  # fmt: skip
    ann, tok = dataset_paths(doc["data_root"], doc["dataset"], doc["tokenizer"])
    doc["annotations"] = explicit.get("annotations", ann)
    doc["tokens"] = explicit.get("tokens", tok)
    doc = _fix_floats(doc)
    if exp.get("sweep"):
        param = exp["sweep"]
        doc["sweep"] = {"param": param, "value": doc["loss"][SWEEP_LOSS_KEYS[param]]}
    cfg = ExperimentConfig.from_dict(doc, f"experiment {name!r} of {source} (after overrides)")
    check_loss_fields(cfg.loss, f"experiment {name!r}")
    return cfg


def check_loss_fields(loss: dict[str, Any], source: str) -> None:
    """Every ``loss.*`` key must be a field of ``rasa.engine.step.LossConfig``."""
    try:
        from rasa.engine.step import LossConfig
    except ImportError:  # the step module is not there (partial install): schema check only
        return
    known = {f.name for f in dataclasses.fields(LossConfig)}
    for key in loss:
        if key not in known:
            raise ConfigError(
                f"{source}, key 'loss.{key}': not a field of LossConfig "
                f"(known: {', '.join(sorted(known))})."
            )


def load_config(path: str | Path, sets: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read a resolved ``config.yaml`` (as saved beside every run), with ``--set`` applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    doc = _read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping (a resolved experiment config).")
    for item in sets:
        key, value = parse_set(item)
        if key in ("tokenizer", "annotations", "tokens", "name", "data_root"):
            doc[key] = value
        elif key == "pretrained":
            doc[key] = resolve_pretrained(
                value, doc.get("backbone", "?"), doc.get("data_root", ".")
            )
        else:
            set_dotted(doc, key, value, f"--set {item!r}")
    doc = _fix_floats(doc)
    cfg = ExperimentConfig.from_dict(doc, str(path))
    check_loss_fields(cfg.loss, str(path))
    return cfg
