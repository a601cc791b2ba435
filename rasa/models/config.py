"""Model configuration: every size of a RaSa model in one dataclass (paper §3.1, Fig. 2).

A :class:`ModelConfig` fully determines the architecture (so a checkpoint that stores
``config.to_dict()`` beside its state dict can be rebuilt) plus the few hyper-parameters that
live inside the model (momentum coefficient, queue length, initial temperature). Sizes of
pretrained backbones are never typed in by hand: the loaders infer them from a checkpoint's
tensor shapes and build a config from those.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rasa.errors import ConfigError

# ALBEF/RaSa normalise images with CLIP's statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelConfig:
    """Architecture and in-model hyper-parameters of a :class:`~rasa.models.RaSaModel`.

    Image side: a ViT over ``image_size`` = (H, W) pixels cut in ``patch_size`` squares.
    Text side: a BERT stack of ``num_layers`` layers; layers ``< fusion_layer`` are the text
    encoder, layers ``>= fusion_layer`` the cross-modal (fusion) encoder whose cross-attention
    keys/values take the image width as input.
    """

    name: str = "custom"
    # "albef": timm ViT + BERT text/fusion stack; "clip": CLIP towers + BERT-layout cross encoder
    arch: str = "albef"
    # image encoder (ViT)
    image_size: tuple[int, int] = (384, 384)
    patch_size: int = 16
    vision_width: int = 768
    vision_depth: int = 12
    vision_heads: int = 0  # 0 = width / 64 (the ViT-B/16 head width the official code hard-codes)
    vision_mlp_dim: int = 3072
    vision_eps: float = 1e-6
    # text + fusion encoder (BERT layout)
    vocab_size: int = 30522
    text_width: int = 768
    text_heads: int = 12
    text_intermediate: int = 3072
    num_layers: int = 12
    fusion_layer: int = 6
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    # contrastive heads, momentum model, queues
    embed_dim: int = 256
    queue_size: int = 65536
    momentum: float = 0.995
    temp: float = 0.07
    # The one switch for the official code's quirks (unclamped temperature, MLM distillation
    # over the sequence axis, RTD sampling at every position): read by the model and by the
    # training step (rasa.engine.step), so it travels with the checkpoint's model config.
    official_semantics: bool = False
    # std of the normal init of the BERT side (BERT: 0.02); used only for weights not loaded.
    init_std: float = 0.02
    # image normalisation and text conventions that travel with the weights
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    tokenizer: str = "bert-base-uncased"
    add_sep: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_size = _pair(self.image_size, "image_size")
        self.mean = tuple(float(x) for x in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(x) for x in self.std)  # type: ignore[assignment]
        if self.vision_heads == 0:
            self.vision_heads = max(1, self.vision_width // 64)
        checks = [
            (self.vision_width % self.vision_heads == 0, "vision_width divisible by vision_heads"),
            (self.text_width % self.text_heads == 0, "text_width divisible by text_heads"),
            (0 <= self.fusion_layer <= self.num_layers, "0 <= fusion_layer <= num_layers"),
            (
                all(s % self.patch_size == 0 for s in self.image_size),
                "image_size a multiple of patch_size",
            ),
            (self.queue_size > 0 and self.embed_dim > 0, "positive queue_size and embed_dim"),
            (0.0 <= self.momentum <= 1.0, "momentum in [0, 1]"),
            (self.init_std > 0, "init_std > 0"),
            (self.arch in ("albef", "clip"), "arch 'albef' or 'clip'"),
        ]
        for ok, what in checks:
            if not ok:
                raise ConfigError(
                    f"Model config {self.name!r} is inconsistent: expected {what} "
                    f"(got {self.summary()})."
                )

    # ------------------------------------------------------------------ derived sizes
    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) at ``image_size``."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @property
    def num_fusion_layers(self) -> int:
        return self.num_layers - self.fusion_layer

    @property
    def encoder_width(self) -> int:
        """Input width of the cross-attention keys/values (the image width)."""
        return self.vision_width

    def summary(self) -> str:
        return (
            f"image {self.image_size[0]}x{self.image_size[1]}/{self.patch_size}, ViT "
            f"{self.vision_depth}x{self.vision_width} ({self.vision_heads} heads), BERT "
            f"{self.fusion_layer}+{self.num_fusion_layers}x{self.text_width} "
            f"({self.text_heads} heads), vocab {self.vocab_size}, embed {self.embed_dim}, "
            f"queue {self.queue_size}"
        )

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "model config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"{source}: unknown model config key(s) {unknown}; known keys are {sorted(known)}."
            )
        return cls(**d)

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with ``overrides`` applied (unknown keys raise :class:`ConfigError`)."""
        d = self.to_dict()
        if "vision_width" in overrides and "vision_heads" not in overrides:
            d["vision_heads"] = 0  # re-derive width / 64 for the new width
        d.update(overrides)
        return ModelConfig.from_dict(d, source=f"overrides for model {self.name!r}")


def _pair(value: Any, key: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"Model config key {key!r} must be an int or [height, width], got {value!r}."
        ) from None
    return (h, w)
