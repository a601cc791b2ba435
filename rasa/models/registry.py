"""Backbone registry (timm style): ``@register_model`` builders, ``create_model``, ``list_models``.

Backbones (DESIGN.md "Model", paper §4.1 and Table 8):

* ``tiny``    from scratch, small enough to train on a CPU in minutes;
* ``minilm``  BERT side initialised from all-MiniLM-L6-v2 (shipped by a pip package, offline);
* ``albef`` / ``tcl``  ViT-B/16 + BERT-base (6 text + 6 fusion layers) at 384x384, weights
  from a local ALBEF / TCL checkpoint (``pretrained=path``); random init without one;
* ``clip``    CLIP ViT-B/16 image + text towers and a 1-layer cross encoder (Table 8), weights
  from a local OpenAI-layout state dict;
* ``official`` an official RaSa checkpoint (``pretrained=path``, sizes read from it).

``pretrained`` may also name a checkpoint of ours (written by ``rasa train``/``rasa pretrain``,
:mod:`rasa.models.loaders.ours`) for any backbone; ``"none"`` or ``False`` means random init.
Each backbone declares its default weights (:func:`default_weights`): ``none`` (random init),
``packaged`` (shipped by a pip package, loaded when ``pretrained`` is None) or ``required`` (a
checkpoint the user gives; training refuses to start without one, params key
``backbones.<name>.pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rasa.errors import ConfigError
from rasa.models.config import ModelConfig
from rasa.models.loaders.ours import load_ours
from rasa.models.rasa_model import RaSaModel

Builder = Callable[..., RaSaModel]
_REGISTRY: dict[str, Builder] = {}
_CONFIGS: dict[str, ModelConfig] = {}
_WEIGHTS: dict[str, str] = {}
WEIGHT_KINDS = ("none", "packaged", "required")


def register_model(
    fn: Builder | None = None, *, config: ModelConfig | None = None, weights: str = "none"
) -> Any:
    """Register ``fn(pretrained=None, **overrides) -> RaSaModel`` under its function name.

    ``config``: the backbone's base architecture (our checkpoints of it are rebuilt from their
    own); ``weights``: its default weights, one of :data:`WEIGHT_KINDS`. Usable bare
    (``@register_model``) or with arguments.
    """
    if weights not in WEIGHT_KINDS:
        raise ConfigError(f"register_model: weights={weights!r}; expected one of {WEIGHT_KINDS}.")

    def register(f: Builder) -> Builder:
        name = f.__name__
        if name in _REGISTRY:
            raise ConfigError(f"Backbone {name!r} is registered twice.")
        _REGISTRY[name] = f
        _WEIGHTS[name] = weights
        if config is not None:
            _CONFIGS[name] = config
        return f

    return register(fn) if fn is not None else register


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise ConfigError(
            f"Unknown backbone {name!r}; known backbones: {', '.join(list_models())}."
        )


def default_weights(name: str) -> str:
    """``none``, ``packaged`` or ``required``: what backbone ``name`` starts from by default."""
    _check_name(name)
    return _WEIGHTS[name]


def create_model(
    name: str, pretrained: str | Path | bool | None = None, **overrides: Any
) -> RaSaModel:
    """Build backbone ``name``; ``overrides`` replace :class:`ModelConfig` fields.

    ``pretrained``: None (the backbone's default weights), ``"none"``/``False`` (random init),
    or a path: one of our checkpoints (any backbone) or the backbone's own layout.
    """
    _check_name(name)
    if pretrained == "none":
        pretrained = False
    if pretrained and name in _CONFIGS and is_our_checkpoint(pretrained):
        return load_ours(pretrained, _CONFIGS[name], **overrides)
    return _REGISTRY[name](pretrained=pretrained, **overrides)


def is_our_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint written by rasa (it stores its ``model_config``)."""
    import torch

    try:  # memory-mapped: only the small entries are read here
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not ours; the backbone's loader reports what it is
        return False
    return isinstance(obj, dict) and isinstance(obj.get("model_config"), dict)


def _build(config: ModelConfig, pretrained: Any, overrides: dict[str, Any]) -> RaSaModel:
    """``config`` with ``overrides``; from a checkpoint of ours (or a bare state dict of that
    architecture) when ``pretrained`` is a path."""
    if pretrained:
        return load_ours(pretrained, config, **overrides)
    return RaSaModel(config.replace(**overrides))


# ---------------------------------------------------------------------------- backbones
TINY = ModelConfig(
    name="tiny",
    image_size=(128, 64),
    patch_size=16,
    vision_width=128,
    vision_depth=4,
    vision_mlp_dim=512,
    text_width=128,
    text_heads=2,
    text_intermediate=512,
    num_layers=4,
    fusion_layer=2,
    max_position_embeddings=128,
    embed_dim=128,
    queue_size=1024,
    init_std=0.1,
)

MINILM = ModelConfig(
    name="minilm",
    image_size=(128, 64),
    patch_size=16,
    vision_width=384,
    vision_depth=6,
    vision_mlp_dim=1536,
    text_width=384,
    text_heads=12,
    text_intermediate=1536,
    num_layers=6,
    fusion_layer=3,
    max_position_embeddings=512,
    embed_dim=256,
    queue_size=4096,
    tokenizer="minilm",
)

BASE = ModelConfig(name="albef", image_size=(384, 384), add_sep=False)

# CLIP ViT-B/16 + CLIP text transformer (12 x 512) + 1 cross layer; person crops 384x128.
CLIP_B16 = ModelConfig(
    name="clip",
    arch="clip",
    image_size=(384, 128),
    patch_size=16,
    vision_width=768,
    vision_depth=12,
    vision_mlp_dim=3072,
    vision_eps=1e-5,
    vocab_size=49408,
    text_width=512,
    text_heads=8,
    text_intermediate=2048,
    num_layers=13,
    fusion_layer=12,
    max_position_embeddings=77,
    layer_norm_eps=1e-5,
    embed_dim=512,
    tokenizer="clip",
)


@register_model(config=TINY, weights="none")
def tiny(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """4-layer ViT-128/16 + 2+2-layer BERT-128, from scratch (CPU-sized)."""
    return _build(TINY, pretrained, overrides)


@register_model(config=MINILM, weights="packaged")
def minilm(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """MiniLM-L6 text (3 text + 3 fusion layers) + 6-layer ViT-384/16 from scratch.

    ``pretrained=None`` loads the packaged MiniLM weights, a path loads a checkpoint of ours,
    ``False`` leaves everything randomly initialised.
    """
    from rasa.models.loaders.minilm import load_minilm_text

    if pretrained:
        return load_ours(pretrained, MINILM, **overrides)
    model = RaSaModel(MINILM.replace(**overrides))
    if pretrained is None:
        model.load_report = load_minilm_text(model)
    return model


@register_model(config=BASE, weights="required")
def albef(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """ViT-B/16 + BERT-base 6+6 at 384x384 from an ALBEF checkpoint (random init without)."""
    from rasa.models.loaders.albef import load_albef

    if pretrained:
        return load_albef(pretrained, **overrides)
    return _build(BASE, None, overrides)


@register_model(config=BASE.replace(name="tcl"), weights="required")
def tcl(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """Like ``albef`` but initialised from a TCL checkpoint."""
    from rasa.models.loaders.albef import load_tcl

    if pretrained:
        return load_tcl(pretrained, **overrides)
    return _build(BASE.replace(name="tcl"), None, overrides)


@register_model(config=CLIP_B16, weights="required")
def clip(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """RaSa_CLIP (Table 8): CLIP ViT-B/16 towers from an OpenAI-layout state dict + 1 cross layer."""
    from rasa.models.loaders.clip import load_clip

    if pretrained:
        return load_clip(pretrained, **overrides)
    return _build(CLIP_B16, None, overrides)


@register_model(weights="required")
def official(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """An official RaSa checkpoint (``config_bert.json`` beside it); sizes come from the file."""
    from rasa.models.loaders.official import load_official

    if not pretrained:
        raise ConfigError("Backbone 'official' needs pretrained=<path of an official RaSa .pth>.")
    return load_official(pretrained, **overrides)


# Smaller than tiny, for tests: one ViT block, 1 text + 1 fusion layer of width 32, 32x16 images.
MICRO = TINY.replace(
    name="micro",
    image_size=(32, 16),
    vision_width=32,
    vision_depth=1,
    vision_mlp_dim=64,
    text_width=32,
    text_intermediate=64,
    num_layers=2,
    fusion_layer=1,
    max_position_embeddings=64,
    embed_dim=32,
    queue_size=64,
)


@register_model
def micro(pretrained: Any = None, **overrides: Any) -> RaSaModel:
    """1-layer ViT-32/16 + 1+1-layer BERT-32 at 32x16, from scratch (tests, seconds on a CPU)."""
    return _build(MICRO, pretrained, overrides)
