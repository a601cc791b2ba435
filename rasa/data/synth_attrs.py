"""SynthPEDES attribute vocabulary and sampling: who a person is, and how one photo of them looks.

An *identity* is a fixed set of attributes (build, skin, hair, hat, glasses, scarf, upper and
lower garment with colour and pattern, shoes, carried item, umbrella). An *image* of that
identity adds the things that change between cameras: view (front/back/side), facing, pose,
framing jitter, crops, an occluder, camera (background) and lighting. Captions are built from
the identity's attributes, but only from what the caption's own image shows; another image of
the same person may hide some of them, which makes the paper's weak positive pairs (RaSa §1,
§3.2: "the text ... is not always well-aligned to other positive images of the same person").

Hardness knobs: every palette below is deliberately short and skewed (``weights ** skew``), so
many identities share most attributes (black trousers, a black backpack, short black hair) and
differ in a few details; colour words overlap in captions (navy is also called "dark blue" and
sometimes just "blue"; grey/gray; dark grey/charcoal), as they do in human annotations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Colour:
    rgb: RGB
    words: tuple[str, ...]  # caption synonyms, the first is the canonical name


COLOURS: dict[str, Colour] = {
    "black": Colour((28, 28, 32), ("black", "black", "dark")),
    "white": Colour((232, 232, 228), ("white", "white", "off-white")),
    "grey": Colour((130, 130, 134), ("grey", "gray")),
    "dark grey": Colour((72, 72, 78), ("dark grey", "dark gray", "charcoal")),
    "blue": Colour((42, 86, 192), ("blue",)),
    "navy": Colour((26, 36, 88), ("navy", "dark blue", "navy blue", "blue")),
    "light blue": Colour((140, 182, 226), ("light blue", "pale blue", "blue")),
    "red": Colour((188, 32, 38), ("red",)),
    "pink": Colour((230, 142, 172), ("pink",)),
    "purple": Colour((112, 52, 142), ("purple", "violet")),
    "green": Colour((44, 122, 62), ("green",)),
    "khaki": Colour((190, 170, 122), ("khaki", "beige", "tan")),
    "brown": Colour((112, 72, 42), ("brown",)),
    "yellow": Colour((226, 200, 44), ("yellow",)),
    "orange": Colour((230, 122, 32), ("orange",)),
}

HAIR_COLOURS: dict[str, Colour] = {
    "black": Colour((22, 20, 20), ("black", "dark")),
    "dark brown": Colour((58, 38, 24), ("dark brown", "brown", "dark")),
    "brown": Colour((110, 70, 38), ("brown", "light brown")),
    "blonde": Colour((212, 182, 112), ("blonde", "blond", "fair")),
    "grey": Colour((176, 176, 172), ("grey", "gray", "silver")),
}

SKIN_TONES: tuple[RGB, ...] = (
    (242, 212, 186),
    (226, 184, 150),
    (196, 146, 108),
    (150, 104, 72),
    (104, 70, 48),
)

# ---- palettes (relative weights; sharpened by ``skew``) ------------------------------------
UPPER_COLOURS = {
    "black": 22,
    "white": 14,
    "grey": 11,
    "blue": 9,
    "navy": 8,
    "red": 7,
    "dark grey": 5,
    "light blue": 4,
    "pink": 4,
    "green": 4,
    "khaki": 3,
    "brown": 3,
    "yellow": 3,
    "purple": 2,
    "orange": 1,
}
LOWER_COLOURS = {
    "black": 35,
    "blue": 12,
    "navy": 10,
    "grey": 10,
    "dark grey": 7,
    "khaki": 8,
    "white": 5,
    "light blue": 4,
    "brown": 4,
    "red": 1,
    "green": 1,
}
JEANS_COLOURS = {"blue": 40, "light blue": 22, "navy": 22, "black": 16}
SHOE_COLOURS = {
    "black": 40,
    "white": 26,
    "brown": 12,
    "grey": 10,
    "red": 4,
    "blue": 4,
    "pink": 2,
    "khaki": 2,
}
ITEM_COLOURS = {
    "black": 40,
    "brown": 14,
    "grey": 10,
    "navy": 7,
    "blue": 6,
    "red": 6,
    "pink": 4,
    "white": 4,
    "khaki": 4,
    "green": 3,
    "purple": 2,
}
HAIR_PALETTE = {"black": 55, "dark brown": 22, "brown": 10, "blonde": 7, "grey": 6}

BUILDS = {"slim": (30, 0.86), "medium": (50, 1.0), "broad": (20, 1.14)}  # weight, width
HAIR_LENGTHS = {"short": 45, "medium": 25, "long": 30}
HATS = {"none": 72, "cap": 12, "beanie": 8, "sun hat": 8}
UPPER_TYPES = {"t-shirt": 30, "shirt": 15, "sweater": 12, "hoodie": 10, "jacket": 18, "coat": 15}
PATTERNS = {"plain": 72, "striped": 16, "checked": 12}
LOWER_TYPES = {"trousers": 36, "jeans": 30, "shorts": 17, "skirt": 17}
SHOE_TYPES = {"sneakers": 45, "leather shoes": 25, "boots": 20, "sandals": 10}
CARRY = {"none": 33, "backpack": 30, "shoulder bag": 21, "handbag": 16}
P_GLASSES, P_SCARF, P_UMBRELLA = 0.18, 0.12, 0.07
P_PRINT = 0.35  # t-shirts, sweaters and hoodies with a print on the chest (front only)
P_OPEN = 0.55  # jackets and coats worn open over an inner top (inner visible from the front)

VIEWS = {"front": 40, "back": 30, "side": 30}
OCCLUSIONS = {"none": 55, "low": 17, "side": 13, "crop_top": 6, "crop_bottom": 9}
OCCLUDER_KINDS = {"low": ("car", "bench", "barrier"), "side": ("pillar", "tree", "passer-by")}
TIMES = ("morning", "noon", "afternoon", "evening")
CAMERAS = 15  # camera ids 1..15 (RSTPReid and ICFG-PEDES use up to 15 cameras)


def pick(
    rng: np.random.Generator,
    weights: dict[str, float],
    skew: float = 1.0,
    exclude: tuple[str, ...] = (),
) -> str:
    """Sample a key with probability proportional to ``weight ** skew``."""
    keys = [k for k in weights if k not in exclude]
    w = np.array([weights[k] for k in keys], dtype=np.float64) ** skew
    return keys[int(rng.choice(len(keys), p=w / w.sum()))]


def sample_identity(rng: np.random.Generator, skew: float = 1.0) -> dict:
    """The fixed attributes of one person (JSON-serialisable, colours by name)."""
    upper = pick(rng, UPPER_TYPES, skew)
    ucol = pick(rng, UPPER_COLOURS, skew)
    lower = pick(rng, LOWER_TYPES, skew)
    carry = pick(rng, CARRY, skew)
    hat = pick(rng, HATS, skew)
    ident = {
        "build": pick(rng, {k: v[0] for k, v in BUILDS.items()}, skew),
        "height": round(float(rng.uniform(0.92, 1.0)), 3),
        "skin": int(rng.integers(len(SKIN_TONES))),
        "hair": {"length": pick(rng, HAIR_LENGTHS, skew), "colour": pick(rng, HAIR_PALETTE, skew)},
        "hat": None if hat == "none" else {"type": hat, "colour": pick(rng, ITEM_COLOURS, skew)},
        "glasses": bool(rng.random() < P_GLASSES),
        "scarf": pick(rng, ITEM_COLOURS, skew) if rng.random() < P_SCARF else None,
        "upper": {
            "type": upper,
            "colour": ucol,
            "pattern": pick(rng, PATTERNS, skew),
            "pattern_colour": pick(rng, UPPER_COLOURS, skew, exclude=(ucol,)),
            "print": None,
            "inner": None,
        },
        "lower": {
            "type": lower,
            "colour": pick(rng, JEANS_COLOURS if lower == "jeans" else LOWER_COLOURS, skew),
        },
        "shoes": {"type": pick(rng, SHOE_TYPES, skew), "colour": pick(rng, SHOE_COLOURS, skew)},
        "carry": None
        if carry == "none"
        else {
            "type": carry,
            "colour": pick(rng, ITEM_COLOURS, skew),
            "side": "right" if rng.random() < 0.6 else "left",
        },
        "umbrella": pick(rng, ITEM_COLOURS, skew) if rng.random() < P_UMBRELLA else None,
    }
    up = ident["upper"]
    if upper in ("t-shirt", "sweater", "hoodie") and rng.random() < P_PRINT:
        up["print"] = {
            "shape": "logo" if rng.random() < 0.6 else "stripe",
            "colour": pick(rng, UPPER_COLOURS, skew, exclude=(ucol,)),
        }
    if upper in ("jacket", "coat") and rng.random() < P_OPEN:
        up["inner"] = pick(rng, UPPER_COLOURS, skew, exclude=(ucol,))
    return ident


def sample_condition(
    rng: np.random.Generator, camera: int, p_occlusion_scale: float = 1.0, view: str | None = None
) -> dict:
    """What varies between two photos of one person (JSON-serialisable)."""
    view = view or pick(rng, VIEWS)
    occ_w = dict(OCCLUSIONS)
    occ_w["none"] = OCCLUSIONS["none"] / max(p_occlusion_scale, 1e-6)
    occlusion = pick(rng, occ_w)
    occluder = None
    if occlusion == "low":
        top = float(rng.uniform(0.56, 0.72))
        occluder = {
            "kind": str(rng.choice(OCCLUDER_KINDS["low"])),
            "box": [-0.05, round(top, 3), 1.05, 1.05],
        }
    elif occlusion == "side":
        width = float(rng.uniform(0.36, 0.5))
        left = rng.random() < 0.5
        x0, x1 = (-0.05, width) if left else (1.0 - width, 1.05)
        occluder = {
            "kind": str(rng.choice(OCCLUDER_KINDS["side"])),
            "box": [round(x0, 3), -0.05, round(x1, 3), 1.05],
        }
    if occluder is not None:
        occluder["colour"] = pick(rng, ITEM_COLOURS)
    time = TIMES[int(rng.integers(len(TIMES)))]
    gain = {"morning": 0.95, "noon": 1.15, "afternoon": 1.0, "evening": 0.72}[time]
    return {
        "view": view,
        "facing": ("left" if rng.random() < 0.5 else "right") if view == "side" else None,
        "stride": round(float(rng.uniform(0.0, 1.0)), 3),
        "swing": round(float(rng.uniform(-1.0, 1.0)), 3),
        "zoom": round(float(rng.uniform(0.86, 1.0)), 3),
        "dx": round(float(rng.uniform(-0.07, 0.07)), 3),
        "dy": round(float(rng.uniform(-0.025, 0.025)), 3),
        "crop": {"crop_top": "top", "crop_bottom": "bottom"}.get(occlusion),
        "occluder": occluder,
        "occlusion": occlusion,
        "camera": camera,
        "time": time,
        "gain": round(gain * float(rng.uniform(0.85, 1.15)), 3),
    }


def attribute_value(ident: dict, key: str) -> object:
    """The canonical value a caption key describes (for ambiguity statistics)."""
    up = ident["upper"]
    item = ident["carry"]
    values = {
        "hair": (ident["hair"]["length"], ident["hair"]["colour"]),
        "hat": ident["hat"] and (ident["hat"]["type"], ident["hat"]["colour"]),
        "glasses": ident["glasses"],
        "scarf": ident["scarf"],
        "upper": (up["type"], up["colour"]),
        "upper_pattern": (up["pattern"], up["pattern_colour"]),
        "upper_print": up["print"] and (up["print"]["shape"], up["print"]["colour"]),
        "upper_inner": up["inner"],
        "lower": (ident["lower"]["type"], ident["lower"]["colour"]),
        "shoes": (ident["shoes"]["type"], ident["shoes"]["colour"]),
        "carry": item and (item["type"], item["colour"]),
        "umbrella": ident["umbrella"],
    }
    return values[key]
