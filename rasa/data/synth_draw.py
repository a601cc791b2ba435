"""SynthPEDES drawing: one pedestrian crop from an identity and an image condition (Pillow).

The figure is laid out in *figure units* (1.0 = the person's height; x = 0 is the body's
centre line) and drawn ``scale`` times larger than the output, then reduced with a box filter
(anti-aliasing). :func:`part_boxes` gives the same geometry without drawing: the box of every
attribute that this view shows, in output pixels. :func:`visibility` turns those boxes into the
fraction of each attribute left visible after the crop and the occluder, which is how the
generator decides which caption/image pairs are weak positives.

Gender-neutral bodies: one body plan, three builds (widths), heights 0.92-1.0.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from rasa.data.synth_attrs import COLOURS, HAIR_COLOURS, RGB, SKIN_TONES

Box = tuple[float, float, float, float]
WIDTH = {"slim": 0.86, "medium": 1.0, "broad": 1.14}
TINT = {"morning": (6, 3, -6), "noon": (4, 4, 0), "afternoon": (8, 2, -8), "evening": (-6, -4, 10)}
DARK: RGB = (24, 24, 26)


def _shade(rgb: RGB, f: float) -> RGB:
    return tuple(int(max(0, min(255, c * f))) for c in rgb)  # type: ignore[return-value]


class _Geo:
    """Figure-unit → pixel mapping for one image (output pixels times ``scale``)."""

    def __init__(self, ident: dict, cond: dict, size: tuple[int, int], scale: float = 1.0):
        w, h = size
        self.s = scale
        self.hf = h * 0.9 * cond["zoom"] * ident["height"]
        top = (h - self.hf) / 2 + cond["dy"] * h
        if cond["crop"] == "top":
            top = -0.13 * self.hf
        elif cond["crop"] == "bottom":
            top = h - 0.86 * self.hf
        self.top = top
        self.cx = w / 2 + cond["dx"] * w
        self.mx = -1.0 if cond["view"] == "side" and cond["facing"] == "left" else 1.0
        self.b = WIDTH[ident["build"]]
        self.view = cond["view"]

    def x(self, xu: float) -> float:
        return (self.cx + self.mx * xu * self.hf) * self.s

    def y(self, yu: float) -> float:
        return (self.top + yu * self.hf) * self.s

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        xa, xb = sorted((self.x(x0), self.x(x1)))
        return [xa, self.y(y0), xb, self.y(y1)]

    def poly(self, pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return [(self.x(a), self.y(b)) for a, b in pts]


def _sides(ident: dict, view: str) -> tuple[float, bool]:
    """x sign of the carried item's side, and whether that side faces the camera."""
    side = (ident["carry"] or {}).get("side", "right")
    if view == "front":
        return (-1.0 if side == "right" else 1.0), True
    if view == "back":
        return (1.0 if side == "right" else -1.0), True
    return 0.0, side == "left"  # side view drawn facing +x: the person's left side is near


def _torso(ident: dict, view: str) -> tuple[float, float, float]:
    b = WIDTH[ident["build"]]
    sw, hw = (0.115 * b, 0.095 * b) if view != "side" else (0.06 * b, 0.055 * b)
    bottom = 0.66 if ident["upper"]["type"] == "coat" else 0.5
    return sw, hw, bottom


def _carry_box(ident: dict, view: str) -> Box | None:
    item = ident["carry"]
    if item is None:
        return None
    sgn, near = _sides(ident, view)
    sw, hw, _ = _torso(ident, view)
    if item["type"] == "backpack":
        if view == "front":
            return None
        if view == "back":
            return (-0.085 * WIDTH[ident["build"]], 0.19, 0.085 * WIDTH[ident["build"]], 0.43)
        return (-sw - 0.075, 0.19, -sw + 0.01, 0.42)
    if view == "side":
        if not near:
            return None
        return (
            (-0.045, 0.43, 0.045, 0.55)
            if item["type"] == "shoulder bag"
            else (-0.02, 0.5, 0.06, 0.6)
        )
    if item["type"] == "shoulder bag":
        xs = sorted((sgn * (hw + 0.005), sgn * (hw + 0.085)))
        return (xs[0], 0.42, xs[1], 0.54)
    xs = sorted((sgn * (sw - 0.02), sgn * (sw + 0.055)))
    return (xs[0], 0.5, xs[1], 0.6)


def _umbrella_box(ident: dict, view: str) -> Box | None:
    if ident["umbrella"] is None:
        return None
    sgn, _ = _sides(ident, view)
    sw, _, _ = _torso(ident, view)
    x = -sgn * (sw + 0.02) if view != "side" else 0.03
    return (x - 0.025, 0.49, x + 0.025, 0.9)


def part_boxes(ident: dict, cond: dict) -> dict[str, Box]:
    """Figure-unit box of every attribute this view shows (hidden-by-view ones are absent)."""
    view = cond["view"]
    sw, hw, bottom = _torso(ident, view)
    up, lower = ident["upper"], ident["lower"]["type"]
    boxes: dict[str, Box] = {"hair": (-0.058, 0.0, 0.058, 0.14), "upper": (-sw, 0.17, sw, bottom)}
    if view == "back" and ident["hair"]["length"] != "short":
        boxes["hair"] = (-0.065, 0.0, 0.065, 0.3 if ident["hair"]["length"] == "long" else 0.2)
    if ident["hat"] is not None:
        boxes["hat"] = (-0.06, -0.015, 0.06, 0.06)
    if ident["glasses"] and view != "back":
        boxes["glasses"] = (
            (-0.045, 0.06, 0.045, 0.085) if view == "front" else (0.0, 0.06, 0.05, 0.085)
        )
    if ident["scarf"] is not None:
        boxes["scarf"] = (-0.06, 0.13, 0.06, 0.185)
    if up["pattern"] != "plain":
        boxes["upper_pattern"] = boxes["upper"]
    if up["print"] is not None and view == "front":
        boxes["upper_print"] = (-0.05, 0.23, 0.05, 0.31)
    if up["inner"] is not None and view == "front":
        boxes["upper_inner"] = (-0.04, 0.17, 0.04, 0.48)
    legs = {"shorts": 0.66, "skirt": 0.7}.get(lower, 0.92)
    boxes["lower"] = (-hw - (0.035 if lower == "skirt" else 0.0), 0.49, hw + 0.03, legs)
    boxes["shoes"] = (-0.085, 0.9, 0.085, 0.98)
    carry, umb = _carry_box(ident, view), _umbrella_box(ident, view)
    if carry is not None:
        boxes["carry"] = carry
    if umb is not None:
        boxes["umbrella"] = umb
    return boxes


def visibility(ident: dict, cond: dict, size: tuple[int, int]) -> dict[str, float]:
    """Fraction (0..1) of each drawn attribute's box inside the crop and not occluded."""
    geo = _Geo(ident, cond, size)
    w, h = size
    occ = cond["occluder"]
    ob = (
        None
        if occ is None
        else (occ["box"][0] * w, occ["box"][1] * h, occ["box"][2] * w, occ["box"][3] * h)
    )
    out = {}
    for key, (x0, y0, x1, y1) in part_boxes(ident, cond).items():
        bx0, by0, bx1, by1 = geo.box(x0, y0, x1, y1)
        area = max(bx1 - bx0, 1e-6) * max(by1 - by0, 1e-6)
        ix0, iy0, ix1, iy1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
        inside = max(ix1 - ix0, 0) * max(iy1 - iy0, 0)
        hidden = 0.0
        if ob is not None and inside > 0:
            hidden = max(min(ix1, ob[2]) - max(ix0, ob[0]), 0) * max(
                min(iy1, ob[3]) - max(iy0, ob[1]), 0
            )
        out[key] = round((inside - hidden) / area, 3)
    return out


# ---- rendering ----------------------------------------------------------------------------
def _limb(d: ImageDraw.ImageDraw, g: _Geo, p0, p1, w0: float, w1: float, fill: RGB) -> None:
    (x0, y0), (x1, y1) = p0, p1
    d.polygon(
        g.poly([(x0 - w0 / 2, y0), (x0 + w0 / 2, y0), (x1 + w1 / 2, y1), (x1 - w1 / 2, y1)]),
        fill=fill,
    )


def _muted(rng: np.random.Generator, lo: int, hi: int) -> RGB:
    """A desaturated random colour (street scenes are mostly greys and browns)."""
    grey = float(rng.integers(lo, hi))
    hue = rng.integers(lo, hi, 3).astype(np.float64)
    return tuple(int(v) for v in 0.65 * grey + 0.35 * hue)  # type: ignore[return-value]


def _background(
    rng: np.random.Generator, size: tuple[int, int], camera: int, seed: int, scale: int
) -> Image.Image:
    """A street scene fixed per camera (wall, windows, ground) with small per-image clutter."""
    w, h = size[0] * scale, size[1] * scale
    cam = np.random.default_rng([seed, 9173, camera])
    wall = _muted(cam, 90, 200)
    ground = _muted(cam, 80, 160)
    horizon = int(h * cam.uniform(0.5, 0.72))
    img = Image.new("RGB", (w, h), wall)
    d = ImageDraw.Draw(img)
    d.rectangle([0, horizon, w, h], fill=ground)
    for _ in range(int(cam.integers(2, 5))):  # buildings / windows / doors
        x0 = int(cam.integers(-w // 4, w))
        bw, bh = int(cam.integers(w // 6, w // 2)), int(cam.integers(h // 8, horizon))
        col = _muted(cam, 50, 220)
        d.rectangle([x0, horizon - bh, x0 + bw, horizon], fill=col)
    for _ in range(int(rng.integers(0, 4))):  # per-image clutter
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        col = _muted(rng, 40, 230)
        d.rectangle(
            [x0, y0, x0 + int(rng.integers(3, w // 5)), y0 + int(rng.integers(3, h // 8))], fill=col
        )
    return img


def _draw_head(d: ImageDraw.ImageDraw, g: _Geo, ident: dict, view: str) -> None:
    skin = SKIN_TONES[ident["skin"]]
    hair = HAIR_COLOURS[ident["hair"]["colour"]].rgb
    length = ident["hair"]["length"]
    d.rectangle(g.box(-0.022, 0.12, 0.022, 0.17), fill=_shade(skin, 0.9))  # neck
    if view == "back":
        d.ellipse(g.box(-0.052, 0.005, 0.052, 0.145), fill=hair)
        if length != "short":
            bottom = 0.3 if length == "long" else 0.2
            d.rounded_rectangle(
                g.box(-0.06, 0.06, 0.06, bottom), radius=g.hf * g.s * 0.03, fill=hair
            )
    elif view == "front":
        d.ellipse(g.box(-0.05, 0.01, 0.05, 0.14), fill=skin)
        d.chord(g.box(-0.056, 0.0, 0.056, 0.1), 180, 360, fill=hair)
        for ex in (-0.02, 0.02):
            d.ellipse(g.box(ex - 0.006, 0.066, ex + 0.006, 0.078), fill=DARK)
        if ident["glasses"]:
            for ex in (-0.022, 0.022):
                d.rectangle(
                    g.box(ex - 0.017, 0.062, ex + 0.017, 0.082),
                    outline=DARK,
                    width=max(1, int(g.s)),
                )
    else:
        d.ellipse(g.box(-0.048, 0.01, 0.05, 0.14), fill=skin)
        d.polygon(g.poly([(0.045, 0.07), (0.062, 0.09), (0.045, 0.1)]), fill=skin)  # nose
        d.pieslice(g.box(-0.056, 0.0, 0.05, 0.14), 90, 300, fill=hair)
        d.ellipse(g.box(0.024, 0.066, 0.036, 0.078), fill=DARK)
        if ident["glasses"]:
            d.rectangle(g.box(0.012, 0.062, 0.048, 0.082), outline=DARK, width=max(1, int(g.s)))
    hat = ident["hat"]
    if hat is not None:
        col = COLOURS[hat["colour"]].rgb
        if hat["type"] == "sun hat":
            d.ellipse(g.box(-0.1, 0.03, 0.1, 0.065), fill=_shade(col, 0.85))
            d.chord(g.box(-0.055, -0.02, 0.055, 0.09), 180, 360, fill=col)
        elif hat["type"] == "beanie":
            d.chord(g.box(-0.058, -0.02, 0.058, 0.12), 180, 360, fill=col)
        else:
            d.chord(g.box(-0.056, -0.01, 0.056, 0.11), 180, 360, fill=col)
            if view == "front":
                d.ellipse(g.box(-0.05, 0.042, 0.05, 0.066), fill=_shade(col, 0.75))
            elif view == "side":
                d.rectangle(g.box(0.02, 0.045, 0.095, 0.06), fill=_shade(col, 0.75))
    if ident["scarf"] is not None:
        col = COLOURS[ident["scarf"]].rgb
        d.rounded_rectangle(g.box(-0.055, 0.135, 0.055, 0.18), radius=g.hf * g.s * 0.015, fill=col)
        if view == "front":
            d.rectangle(g.box(0.01, 0.17, 0.04, 0.3), fill=_shade(col, 0.9))


def _draw_upper(d: ImageDraw.ImageDraw, g: _Geo, ident: dict, view: str) -> None:
    up = ident["upper"]
    col, pcol = COLOURS[up["colour"]].rgb, COLOURS[up["pattern_colour"]].rgb
    sw, hw, bottom = _torso(ident, view)
    flare = 0.02 if up["type"] == "coat" else 0.0
    d.polygon(
        g.poly([(-sw, 0.17), (sw, 0.17), (hw + flare, bottom), (-hw - flare, bottom)]), fill=col
    )
    lw = max(1, int(g.hf * g.s * 0.012))
    if up["pattern"] != "plain":  # stripes (and checks) across the torso
        step = 0.045 if up["pattern"] == "striped" else 0.05
        y = 0.2
        while y < bottom - 0.01:
            t = (y - 0.17) / (bottom - 0.17)
            half = sw + (hw + flare - sw) * t
            d.line(g.poly([(-half, y), (half, y)]), fill=pcol, width=lw)
            y += step
        if up["pattern"] == "checked":
            x = -hw + 0.02
            while x < hw:
                d.line(g.poly([(x, 0.18), (x, bottom - 0.005)]), fill=pcol, width=lw)
                x += 0.05
    if view == "front" and up["inner"] is not None:
        d.polygon(
            g.poly([(-0.035, 0.17), (0.035, 0.17), (0.03, 0.48), (-0.03, 0.48)]),
            fill=COLOURS[up["inner"]].rgb,
        )
    elif view == "front" and up["type"] in ("jacket", "coat"):
        d.line(g.poly([(0, 0.18), (0, bottom)]), fill=_shade(col, 0.6), width=lw)
    if view == "front" and up["print"] is not None:
        prcol = COLOURS[up["print"]["colour"]].rgb
        if up["print"]["shape"] == "logo":
            d.ellipse(g.box(-0.035, 0.235, 0.035, 0.305), fill=prcol)
        else:
            d.rectangle(g.box(-sw * 0.95, 0.245, sw * 0.95, 0.29), fill=prcol)
    if up["type"] == "hoodie" and view != "side":
        d.chord(g.box(-0.07, 0.13, 0.07, 0.22), 0, 180, fill=_shade(col, 0.85))
    if up["type"] == "shirt" and view == "front":
        d.polygon(g.poly([(-0.03, 0.165), (0, 0.2), (0.03, 0.165)]), fill=_shade(col, 1.25))
    if up["type"] == "sweater":
        d.rectangle(g.box(-hw, bottom - 0.025, hw, bottom), fill=_shade(col, 0.8))


def _draw_arm(d, g, ident, p0, p1, fill_scale: float = 1.0) -> None:
    up = ident["upper"]
    col = _shade(COLOURS[up["colour"]].rgb, fill_scale)
    skin = _shade(SKIN_TONES[ident["skin"]], fill_scale)
    if up["type"] == "t-shirt":
        mid = (p0[0] + (p1[0] - p0[0]) * 0.4, p0[1] + (p1[1] - p0[1]) * 0.4)
        _limb(d, g, mid, p1, 0.036, 0.03, skin)
        _limb(d, g, p0, mid, 0.05, 0.042, col)
    else:
        _limb(d, g, p0, p1, 0.048, 0.038, col)
    d.ellipse(g.box(p1[0] - 0.017, p1[1] - 0.01, p1[0] + 0.017, p1[1] + 0.025), fill=skin)


def _draw_legs(d, g, ident: dict, view: str, stride: float) -> None:
    low = ident["lower"]
    col = COLOURS[low["colour"]].rgb
    skin = SKIN_TONES[ident["skin"]]
    shoe = COLOURS[ident["shoes"]["colour"]].rgb
    b = WIDTH[ident["build"]]
    if view == "side":
        legs = [
            ((0.0, 0.49), (-stride * 0.09, 0.92), 0.8),
            ((0.0, 0.49), (stride * 0.09, 0.92), 1.0),
        ]
    else:
        s = stride * 0.015
        legs = [((x * 0.045 * b, 0.49), (x * (0.04 + s), 0.92), 1.0) for x in (-1, 1)]
    knee = {"shorts": 0.66, "skirt": 0.49}.get(low["type"])
    for p0, p1, f in legs:
        if knee is None:
            _limb(d, g, p0, p1, 0.066 * b, 0.048, _shade(col, f))
        else:
            _limb(d, g, p0, p1, 0.058 * b, 0.04, _shade(skin, f))
            if low["type"] == "shorts":
                t = (knee - p0[1]) / (p1[1] - p0[1])
                mid = (p0[0] + (p1[0] - p0[0]) * t, knee)
                _limb(d, g, p0, mid, 0.07 * b, 0.062, _shade(col, f))
        ax = p1[0]
        kind = ident["shoes"]["type"]
        top = 0.86 if kind == "boots" else 0.905
        if view == "side":
            box = g.box(ax - 0.03, top, ax + 0.07, 0.965)
        else:
            box = g.box(ax - 0.033, top, ax + 0.033, 0.965)
        if kind == "sandals":
            d.rectangle(box, fill=_shade(skin, f))
            box[1] = (box[1] + box[3]) / 2
        d.rounded_rectangle(box, radius=g.hf * g.s * 0.012, fill=_shade(shoe, f))
    if low["type"] == "skirt":
        sw, hw, _ = _torso(ident, view)
        d.polygon(g.poly([(-hw, 0.47), (hw, 0.47), (hw + 0.04, 0.7), (-hw - 0.04, 0.7)]), fill=col)


def _draw_items(d, g, ident: dict, view: str, layer: str) -> None:
    """Bags and umbrella; ``layer`` is 'behind' (drawn before the body) or 'front'."""
    item = ident["carry"]
    if item is not None:
        col = COLOURS[item["colour"]].rgb
        box = _carry_box(ident, view)
        kind = item["type"]
        if kind == "backpack" and layer == ("behind" if view == "side" else "front"):
            if box is None:  # front view: only the straps
                for x in (-0.07, 0.07):
                    d.line(
                        g.poly([(x, 0.17), (x * 1.1, 0.38)]),
                        fill=DARK,
                        width=max(1, int(g.hf * g.s * 0.012)),
                    )
            else:
                d.rounded_rectangle(g.box(*box), radius=g.hf * g.s * 0.02, fill=col)
                x0, y0, x1, _ = box
                d.rectangle(g.box(x0, y0 + 0.06, x1, y0 + 0.075), fill=_shade(col, 0.7))
        elif kind != "backpack" and box is not None and layer == "front":
            if kind == "shoulder bag" and view != "side":
                sgn, _ = _sides(ident, view)
                sw, _, _ = _torso(ident, view)
                d.line(
                    g.poly([(-sgn * sw * 0.7, 0.17), (sgn * (sw * 0.9), 0.44)]),
                    fill=_shade(col, 0.7),
                    width=max(1, int(g.hf * g.s * 0.012)),
                )
            d.rounded_rectangle(g.box(*box), radius=g.hf * g.s * 0.012, fill=col)
    umb = _umbrella_box(ident, view)
    if umb is not None and layer == "front":
        x0, y0, x1, y1 = umb
        xm = (x0 + x1) / 2
        d.polygon(
            g.poly([(x0, y0 + 0.06), (x1, y0 + 0.06), (xm + 0.004, y1), (xm - 0.004, y1)]),
            fill=COLOURS[ident["umbrella"]].rgb,
        )
        d.line(g.poly([(xm, y0), (xm, y0 + 0.06)]), fill=DARK, width=max(1, int(g.s)))


def _draw_occluder(d: ImageDraw.ImageDraw, occ: dict, size: tuple[int, int], s: int) -> None:
    w, h = size[0] * s, size[1] * s
    x0, y0, x1, y1 = occ["box"][0] * w, occ["box"][1] * h, occ["box"][2] * w, occ["box"][3] * h
    col = COLOURS[occ["colour"]].rgb
    kind = occ["kind"]
    if kind == "car":
        d.rounded_rectangle([x0, y0, x1, y1], radius=(y1 - y0) * 0.2, fill=col)
        d.rectangle([x0, y0 + (y1 - y0) * 0.08, x1, y0 + (y1 - y0) * 0.3], fill=(60, 70, 85))
        for cx in (x0 + w * 0.2, x1 - w * 0.2):
            d.ellipse([cx - w * 0.1, y1 - h * 0.08, cx + w * 0.1, y1 + h * 0.05], fill=DARK)
    elif kind == "bench":
        d.rectangle([x0, y0, x1, y1], fill=_shade(col, 0.8))
        for k in range(4):
            yy = y0 + (y1 - y0) * k / 4
            d.rectangle([x0, yy, x1, yy + (y1 - y0) * 0.08], fill=_shade(col, 1.2))
    elif kind == "barrier":
        d.rectangle([x0, y0, x1, y1], fill=(200, 200, 196))
        for k in range(6):
            xx = x0 + (x1 - x0) * k / 6
            d.polygon(
                [(xx, y0), (xx + w * 0.08, y0), (xx + w * 0.16, y1), (xx + w * 0.08, y1)],
                fill=(200, 40, 40),
            )
    elif kind == "tree":
        d.rectangle([x0, y0, x1, y1], fill=(92, 66, 40))
        d.line(
            [(x0 + (x1 - x0) * 0.3, y0), (x0 + (x1 - x0) * 0.4, y1)],
            fill=(70, 50, 30),
            width=max(1, int(w * 0.03)),
        )
    elif kind == "passer-by":
        d.rectangle([x0, y0 + h * 0.18, x1, y1], fill=col)
        d.ellipse(
            [x0 + (x1 - x0) * 0.15, y0, x1 - (x1 - x0) * 0.15, y0 + h * 0.22], fill=SKIN_TONES[2]
        )
    else:  # pillar
        d.rectangle([x0, y0, x1, y1], fill=(170, 166, 158))
        d.rectangle([x0, y0, x0 + (x1 - x0) * 0.15, y1], fill=(130, 126, 120))


def render(
    ident: dict,
    cond: dict,
    size: tuple[int, int],
    seed: int,
    rng: np.random.Generator,
    scale: int = 2,
    noise: float = 3.0,
) -> Image.Image:
    """Draw one image (RGB, ``size`` = (width, height)). ``rng`` drives per-image clutter/noise;
    ``seed`` fixes the per-camera backgrounds."""
    view = cond["view"]
    g = _Geo(ident, cond, size, scale)
    canvas = _background(rng, size, cond["camera"], seed, scale)
    person = Image.new("RGBA", canvas.size, (0, 0, 0, 0))
    d = ImageDraw.Draw(person)
    sw, _, _ = _torso(ident, view)
    if view == "front" and ident["hair"]["length"] != "short":
        bottom = 0.3 if ident["hair"]["length"] == "long" else 0.21
        d.rounded_rectangle(
            g.box(-0.064, 0.03, 0.064, bottom),
            radius=g.hf * scale * 0.03,
            fill=HAIR_COLOURS[ident["hair"]["colour"]].rgb,
        )
    sway = cond["swing"]
    if view == "side":
        _draw_arm(d, g, ident, (0.0, 0.18), (-sway * 0.08, 0.5), 0.8)
        _draw_items(d, g, ident, view, "behind")
    _draw_legs(d, g, ident, view, cond["stride"])
    _draw_upper(d, g, ident, view)
    if view == "side":
        _draw_arm(d, g, ident, (0.0, 0.18), (sway * 0.08, 0.5))
    else:
        for x in (-1, 1):
            _draw_arm(d, g, ident, (x * sw * 0.9, 0.18), (x * (sw + 0.02 + 0.01 * sway), 0.5))
    _draw_head(d, g, ident, view)
    _draw_items(d, g, ident, view, "front")
    canvas.paste(person, (0, 0), person)
    if cond["occluder"] is not None:
        _draw_occluder(ImageDraw.Draw(canvas), cond["occluder"], size, scale)
    img = canvas.resize(size, Image.Resampling.BOX) if scale != 1 else canvas
    arr = np.asarray(img, dtype=np.float32) * cond["gain"] + np.array(
        TINT[cond["time"]], dtype=np.float32
    )
    if noise > 0:
        arr += rng.normal(0.0, noise, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")
