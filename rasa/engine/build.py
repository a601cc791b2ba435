"""What a training run starts from: the model for a token cache, its weights file, its losses.

:func:`build_model` creates the backbone (:func:`rasa.models.create_model`) from the weights
the config names (paper §4.1: every run starts from ALBEF), checked by
:func:`check_weights_file` (exists, sha256 as params give); :func:`make_loss_config` fills the
``loss`` section with the cache's special tokens; :func:`load_summary` is the train log's
account of what was loaded and of the optimizer groups (:mod:`rasa.engine.optim`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from rasa.engine.checkpoint import unwrap
from rasa.errors import ConfigError, DataError


def build_model(
    backbone: str,
    overrides: dict[str, Any],
    cache: Any,
    pretrained: str | dict[str, Any] | None = None,
) -> torch.nn.Module:
    """``create_model`` for a token cache, from the weights ``pretrained`` names.

    ``pretrained`` is the resolved config's (:func:`rasa.config.resolve_pretrained`): None = the
    backbone's default weights (refused for a backbone whose weights are ``required``),
    ``"none"`` = random init, ``{path, url, sha256}`` = that file, checked before anything is
    built: it must exist and match the sha256 params give; its sha256 is written into the
    dict, so the run's config.yaml records it. Errors name ``backbones.<name>.pretrained``.

    From scratch, a ``wordpiece:N`` cache (or a ``cache:``/``checkpoint:`` one reusing such a
    tokenizer) has its own vocabulary: the text embedding takes its
    size and pad id. A model loaded from a checkpoint must have been trained with the cache's
    tokenizer (identity hashes compared); a pretrained vocabulary (``minilm``, ``bert:DIR``)
    must fit the model's.
    """
    from rasa.models import create_model
    from rasa.models.registry import default_weights

    key = f"backbones.{backbone}.pretrained"
    kwargs = dict(overrides)
    spec = str(cache.meta.get("spec", ""))
    if pretrained is None and default_weights(backbone) == "required":
        raise ConfigError(
            f"{key} is not set: backbone {backbone!r} starts from a checkpoint (the paper "
            "starts every run from ALBEF). Give a local path, {url: ..., sha256: ...}, or "
            "`none` to train from random weights."
        )
    path = check_weights_file(pretrained, key) if isinstance(pretrained, dict) else None
    # `cache:` / `checkpoint:` reuse a tokenizer we learnt (e.g. the pre-training corpus's)
    if path is None and spec.startswith(("wordpiece", "cache:", "checkpoint:")):
        kwargs.setdefault("vocab_size", cache.vocab_size)
        kwargs.setdefault("pad_token_id", cache.pad_id)
    try:
        model = create_model(backbone, pretrained=path or pretrained, **kwargs)
    except DataError as err:
        raise ConfigError(
            f"{key}: {path} is not a checkpoint backbone {backbone!r} can start from: {err}"
        ) from err
    if path is not None:
        cache.check_tokenizer(getattr(model, "tokenizer_record", None), path)
    model.tokenizer_record = cache.tokenizer_record()  # travels with every checkpoint
    if cache.vocab_size > model.config.vocab_size:
        raise ConfigError(
            f"token cache {cache.path}: vocabulary of {cache.vocab_size} tokens ({spec}) does "
            f"not fit backbone {backbone!r} ({model.config.vocab_size} embeddings); use the "
            "backbone's tokenizer (backbones.<name>.tokenizer in params.yaml)."
        )
    return model


def check_weights_file(pretrained: dict[str, Any], key: str) -> str:
    """The path of a weights file that exists and has the sha256 params give (if any); its
    sha256 is stored in ``pretrained["sha256"]``."""
    from rasa.data.fetch import file_sha256

    path = Path(pretrained["path"])
    if not path.is_file():
        how = (
            f"it is fetched from {pretrained['url']} by the workflow (`rasa data fetch --url "
            f"{pretrained['url']} --sha256 {pretrained['sha256']} --out {path}`)"
            if pretrained.get("url")
            else "download the checkpoint and put it there, or give {url, sha256}"
        )
        raise ConfigError(f"{key}: weights file {path} not found; {how}.")
    digest = file_sha256(path)
    expected = pretrained.get("sha256")
    if expected and digest != str(expected).lower():
        raise ConfigError(
            f"{key}: {path} has sha256 {digest}, but params give {expected}; the file is not "
            "the checkpoint params name (delete it to fetch it again)."
        )
    pretrained["sha256"] = digest
    return str(path)


def load_summary(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str:
    """The train log's account of the starting weights (the load report, grouped by prefix)
    and of the optimizer groups' learning rates."""
    report = getattr(unwrap(model), "load_report", None)
    lines = [report.format() if report is not None else "weights: random init (nothing loaded)"]
    if optimizer is not None:
        lines.append(
            "optimizer groups: "
            + "; ".join(
                f"{g.get('name', i)} lr {g['base_lr']:g} wd {g['weight_decay']:g} "
                f"({len(g['params'])} tensors)"
                for i, g in enumerate(optimizer.param_groups)
            )
        )
    return "\n".join(lines)


def make_loss_config(loss: dict[str, Any], cache: Any) -> Any:
    """``LossConfig`` from the ``loss`` section, with the special-token ids of the cache."""
    from rasa.objectives import LossConfig, SpecialTokens

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in loss.items()}
    return LossConfig(**kwargs, tokens=SpecialTokens.from_meta(cache.meta))
