"""Image loading and the resize/flip/normalise transform (paper §4: 384×384, random flip).

Two resize modes:

- ``"pad"`` (default, correct): scale the image to fit inside (H, W) keeping its aspect ratio,
  centre it and pad with the mean colour, so the padding is 0 after normalisation. A
  pedestrian crop (about 1:2.5) is not distorted.
- ``"stretch"``: resize straight to (H, W), as the official code does (a square 384×384 that
  squeezes every pedestrian sideways); use it to score official checkpoints.

Both use bicubic interpolation (as the official transform). Normalisation defaults to the CLIP
mean/std that ALBEF/RaSa use. The horizontal flip is a decision passed in by the caller, so
all randomness stays in the dataset's seeded generator.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from rasa.errors import ConfigError, DataError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("pad", "stretch")


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image as RGB, with a clear error when it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError as exc:
        raise DataError(
            f"{path}: image not found (named by the annotation table); check the dataset's "
            "image folder or re-run `rasa data parse`."
        ) from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: not a readable image ({exc}).") from exc


def fitted_size(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) of an image of ``width`` × ``height`` scaled to fit in ``size`` = (H, W)."""
    out_h, out_w = size
    scale = min(out_h / height, out_w / width)
    return max(1, min(out_w, round(width * scale))), max(1, min(out_h, round(height * scale)))


def resize_image(
    img: Image.Image,
    size: tuple[int, int],
    mode: str = "pad",
    fill: tuple[int, int, int] = (0, 0, 0),
) -> Image.Image:
    """Resize ``img`` to ``size`` = (H, W) by padding (aspect kept) or stretching."""
    out_h, out_w = size
    if mode == "stretch":
        return img.resize((out_w, out_h), Image.BICUBIC)
    if mode != "pad":
        raise ConfigError(f"resize mode {mode!r} unknown; expected one of {RESIZE_MODES}.")
    w, h = fitted_size(img.width, img.height, size)
    scaled = img if (w, h) == img.size else img.resize((w, h), Image.BICUBIC)
    canvas = Image.new("RGB", (out_w, out_h), fill)
    canvas.paste(scaled, ((out_w - w) // 2, (out_h - h) // 2))
    return canvas


class ImageTransform:
    """PIL image -> normalised float32 tensor 3×H×W, optionally flipped horizontally."""

    def __init__(
        self,
        size: tuple[int, int],
        mean: Sequence[float] = MEAN,
        std: Sequence[float] = STD,
        resize: str = "pad",
    ) -> None:
        if resize not in RESIZE_MODES:
            raise ConfigError(f"resize mode {resize!r} unknown; expected one of {RESIZE_MODES}.")
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"image size {size!r}: expected (height, width), both positive.")
        self.size = (int(size[0]), int(size[1]))
        self.resize = resize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.fill = tuple(int(round(255 * m)) for m in mean)

    def resized(self, img: Image.Image) -> torch.Tensor:
        """Resize and normalise (no flip): float32 3×H×W."""
        img = resize_image(img, self.size, self.resize, self.fill)
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (x.float().div_(255.0) - self.mean) / self.std

    def __call__(self, img: Image.Image, flip: bool = False) -> torch.Tensor:
        x = self.resized(img)
        return x.flip(-1) if flip else x
