"""SynthPEDES captions: sentences about one image, built from the attributes it shows.

A caption is written for ONE image (its strong pair, RaSa §3.2): it may mention only attributes
visible in that image (:func:`select_mentions`). :func:`compose` turns the chosen attribute
keys into 1-3 sentences with varied templates, subjects, clause order and synonyms (navy is
"navy", "dark blue" or "blue"; trousers are "pants" or "slacks"; a backpack is a "rucksack"),
and keeps at most ``max_words`` words (50, the paper's text length). It returns the keys it
really mentions; the generator compares them with what every other image of the person shows
to mark weak pairs.

Attribute keys: ``hair hat glasses scarf upper upper_pattern upper_print upper_inner lower
shoes carry umbrella view`` (``view`` = the caption says which way the person faces).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rasa.data.synth_attrs import COLOURS, HAIR_COLOURS

KEYS = (
    "hair",
    "hat",
    "glasses",
    "scarf",
    "upper",
    "upper_pattern",
    "upper_print",
    "upper_inner",
    "lower",
    "shoes",
    "carry",
    "umbrella",
    "view",
)
# Base probability that an annotator mentions a visible attribute (scaled per preset).
MENTION = {
    "upper": 0.97,
    "lower": 0.9,
    "shoes": 0.55,
    "hair": 0.6,
    "carry": 0.9,
    "umbrella": 0.85,
    "hat": 0.85,
    "glasses": 0.6,
    "scarf": 0.6,
    "upper_pattern": 0.8,
    "upper_print": 0.7,
    "upper_inner": 0.6,
    "view": 0.2,
}
# Dropped first when a caption is too long.
PRIORITY = (
    "view",
    "glasses",
    "scarf",
    "hair",
    "shoes",
    "upper_inner",
    "upper_print",
    "umbrella",
    "hat",
    "upper_pattern",
    "carry",
    "lower",
    "upper",
)

UPPER = {
    "t-shirt": ("t-shirt", "tee shirt", "t shirt", "tee"),
    "shirt": ("shirt", "button-up shirt"),
    "sweater": ("sweater", "jumper", "pullover"),
    "hoodie": ("hoodie", "hooded sweatshirt"),
    "jacket": ("jacket",),
    "coat": ("coat", "long coat", "overcoat"),
}
LOWER = {
    "trousers": ("trousers", "pants", "slacks"),
    "jeans": ("jeans", "denim jeans", "denim pants"),
    "shorts": ("shorts",),
    "skirt": ("skirt", "knee-length skirt"),
}
SHOES = {
    "sneakers": ("sneakers", "trainers", "running shoes", "sports shoes"),
    "leather shoes": ("leather shoes", "dress shoes", "shoes"),
    "boots": ("boots", "ankle boots"),
    "sandals": ("sandals",),
}
CARRY = {
    "backpack": ("backpack", "rucksack", "knapsack"),
    "shoulder bag": ("shoulder bag", "messenger bag", "bag"),
    "handbag": ("handbag", "purse", "hand bag"),
}
CARRY_WHERE = {
    "backpack": ("on the back", "on their back", "over both shoulders"),
    "shoulder bag": ("over one shoulder", "on the shoulder", "at the hip"),
    "handbag": ("in one hand", "in the hand", "by the side"),
}
HATS = {
    "cap": ("cap", "baseball cap"),
    "beanie": ("beanie", "knit hat", "wool hat"),
    "sun hat": ("sun hat", "wide-brimmed hat", "straw hat"),
}
HAIR_LEN = {
    "short": ("short",),
    "medium": ("medium-length", "shoulder-length", "medium"),
    "long": ("long",),
}
VIEW = {
    "front": ("is walking towards the camera", "is facing the camera", "is walking forward"),
    "back": (
        "is walking away from the camera",
        "is seen from behind",
        "has their back to the camera",
    ),
    "side": ("is walking to the side", "is seen from the side", "is walking sideways"),
}
# subject, be, have, wear, carry (agreement)
SUBJECTS = (
    ("A person", "is", "has", "wears", "carries"),
    ("The person", "is", "has", "wears", "carries"),
    ("A pedestrian", "is", "has", "wears", "carries"),
    ("This pedestrian", "is", "has", "wears", "carries"),
    ("An individual", "is", "has", "wears", "carries"),
    ("Someone", "is", "has", "wears", "carries"),
)
LATER = (
    ("They", "are", "have", "wear", "carry"),
    ("The person", "is", "has", "wears", "carries"),
    ("This person", "is", "has", "wears", "carries"),
)


@dataclass(frozen=True)
class CaptionStyle:
    """How annotators of one dataset write (knobs)."""

    mention_scale: float = 1.0  # multiplies MENTION probabilities (capped at 1)
    verbose: float = 0.3  # probability of extra words per phrase ("a pair of", "on the back")
    min_words: int = 0  # pad with more visible attributes/verbosity/walking until this long
    max_words: int = 50  # the paper truncates captions to 50 words
    extras: tuple[str, ...] = field(
        default=("is walking down the street", "is walking along the pavement")
    )


def select_mentions(
    visible: set[str], style: CaptionStyle, rng: np.random.Generator, with_view: bool = True
) -> list[str]:
    """Keys one annotator mentions: each visible attribute with its (scaled) probability."""
    keys = []
    for key in KEYS:
        if key == "view":
            present = with_view
        elif key.startswith("upper_"):
            present = key in visible and "upper" in visible
        else:
            present = key in visible
        if present and rng.random() < min(1.0, MENTION[key] * style.mention_scale):
            keys.append(key)
    if "upper" not in keys and "lower" not in keys:  # every annotator says what is worn
        keys += [k for k in ("upper", "lower") if k in visible][:1]
    return _normalise(keys)


def _normalise(keys: list[str]) -> list[str]:
    """Canonical order; pattern/print/inner only together with the upper garment."""
    return [k for k in KEYS if k in keys and (not k.startswith("upper_") or "upper" in keys)]


def _w(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _colour(rng: np.random.Generator, name: str) -> str:
    return _w(rng, COLOURS[name].words)


def _article(np_: str) -> str:
    return ("an " if np_[0] in "aeiou" else "a ") + np_


def _phrases(
    ident: dict, keys: list[str], view: str, rng: np.random.Generator, verbose: float
) -> dict[str, str]:
    """One noun/verb phrase per mentioned key (pattern/print/inner fold into ``upper``)."""
    v = lambda: rng.random() < verbose  # noqa: E731
    out: dict[str, str] = {}
    if "hair" in keys:
        h = ident["hair"]
        out["hair"] = (
            f"{_w(rng, HAIR_LEN[h['length']])} {_w(rng, HAIR_COLOURS[h['colour']].words)} hair"
        )
    if "hat" in keys:
        hat = ident["hat"]
        out["hat"] = _article(f"{_colour(rng, hat['colour'])} {_w(rng, HATS[hat['type']])}")
        if v():
            out["hat"] += " on the head"
    if "glasses" in keys:
        out["glasses"] = _w(rng, ("glasses", "a pair of glasses", "eyeglasses", "spectacles"))
    if "scarf" in keys:
        out["scarf"] = _article(f"{_colour(rng, ident['scarf'])} scarf") + (
            " around the neck" if v() else ""
        )
    if "upper" in keys:
        up = ident["upper"]
        noun = _w(rng, UPPER[up["type"]])
        pre, post = [], []
        if v():
            pre.append("short-sleeved" if up["type"] == "t-shirt" else "long-sleeved")
        if "upper_pattern" in keys:
            pc = _colour(rng, up["pattern_colour"])
            if up["pattern"] == "striped":
                if rng.random() < 0.5:
                    pre.insert(0, "striped")
                else:
                    post.append(f"with {pc} stripes")
            elif rng.random() < 0.5:
                pre.insert(0, _w(rng, ("plaid", "checked", "checkered")))
            else:
                post.append(f"with a {pc} check pattern")
        if "upper_print" in keys:
            pr = up["print"]
            pc = _colour(rng, pr["colour"])
            post.append(
                f"with a {pc} logo on the front"
                if pr["shape"] == "logo"
                else f"with a {pc} band across the chest"
            )
        if "upper_inner" in keys:
            post.append("over " + _article(f"{_colour(rng, up['inner'])} top"))
        col = _colour(rng, up["colour"])
        out["upper"] = (
            " ".join([_article(" ".join([col, *pre, noun])), *post])
            if rng.random() < 0.7
            else " ".join([_article(" ".join([*pre, col, noun])), *post])
        )
    if "lower" in keys:
        low = ident["lower"]
        np_ = f"{_colour(rng, low['colour'])} {_w(rng, LOWER[low['type']])}"
        if low["type"] == "skirt":
            out["lower"] = _article(np_)
        else:
            out["lower"] = ("a pair of " if v() else "") + np_
    if "shoes" in keys:
        sh = ident["shoes"]
        out["shoes"] = ("a pair of " if v() else "") + (
            f"{_colour(rng, sh['colour'])} {_w(rng, SHOES[sh['type']])}"
        )
    if "carry" in keys:
        c = ident["carry"]
        out["carry"] = _article(f"{_colour(rng, c['colour'])} {_w(rng, CARRY[c['type']])}") + (
            " " + _w(rng, CARRY_WHERE[c["type"]]) if v() else ""
        )
    if "umbrella" in keys:
        out["umbrella"] = _article(
            f"{_w(rng, ('closed', 'folded', ''))} "
            f"{_colour(rng, ident['umbrella'])} umbrella".strip()
        )
    if "view" in keys:
        out["view"] = _w(rng, VIEW[view])
    return out


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _clauses(ph: dict[str, str], subj: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    """Verb phrases (without subject) in a random but natural order."""
    _, be, have, wear, carry = subj
    worn = [ph[k] for k in ("upper", "lower", "scarf", "hat", "shoes") if k in ph]
    clauses = []
    if worn:
        if len(worn) > 3 and rng.random() < 0.5:  # split the outfit over two clauses
            cut = int(rng.integers(2, len(worn)))
            clauses.append(
                f"{_w(rng, (f'{be} wearing', wear, f'{be} dressed in'))} {_join(worn[:cut])}"
            )
            clauses.append(
                f"{_w(rng, (f'{be} also wearing', f'{have} on', wear))} {_join(worn[cut:])}"
            )
        else:
            clauses.append(f"{_w(rng, (f'{be} wearing', wear, f'{be} dressed in'))} {_join(worn)}")
    held = [ph[k] for k in ("carry", "umbrella") if k in ph]
    if held:
        clauses.append(
            f"{_w(rng, (f'{be} carrying', carry, f'{have}', f'{be} holding'))} {_join(held)}"
        )
    if "hair" in ph:
        clauses.append(f"{have} {ph['hair']}")
    if "glasses" in ph:
        clauses.append(f"{_w(rng, (wear, f'{be} wearing', f'{have} on'))} {ph['glasses']}")
    order = list(range(len(clauses)))
    if len(order) > 1 and rng.random() < 0.35:
        rng.shuffle(order)
    out = [clauses[i] for i in order]
    if "view" in ph:
        out.insert(0 if rng.random() < 0.5 else len(out), ph["view"])
    return out


def _sentences(
    clauses: list[str], rng: np.random.Generator, first: tuple[str, ...], hair_with: str | None
) -> str:
    """Join verb phrases into sentences; later sentences start with a pronoun or noun."""
    subject = first[0] + (f" with {hair_with}" if hair_with else "")
    sentences, cur = [], f"{subject} {clauses[0]}" if clauses else subject
    who, joined = first, False
    for clause in clauses[1:]:
        if not joined and rng.random() < 0.45:
            cur += f" and {_conjugate(clause, who)}"
            joined = True
        else:
            sentences.append(cur)
            who = LATER[int(rng.integers(len(LATER)))]
            cur = f"{who[0]} {_conjugate(clause, who)}"
            joined = False
    sentences.append(cur)
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _conjugate(clause: str, subj: tuple[str, ...]) -> str:
    if subj[0] != "They":
        return clause
    head, _, rest = clause.partition(" ")
    swap = {"is": "are", "has": "have", "wears": "wear", "carries": "carry"}
    return f"{swap.get(head, head)} {rest}".strip() if rest else swap.get(head, head)


def compose(
    ident: dict,
    keys: list[str],
    view: str,
    style: CaptionStyle,
    rng: np.random.Generator,
    spare: list[str] | None = None,
) -> tuple[str, list[str]]:
    """Write one caption mentioning ``keys``; returns (caption, keys really mentioned).

    Too long → drop the least important key and write again; shorter than ``style.min_words``
    → add keys from ``spare`` (other visible attributes), then a neutral walking clause.
    """
    keys, spare = list(keys), list(spare or [])
    verbose = style.verbose
    extra = False
    for _ in range(40):
        keys = _normalise(keys)
        ph = _phrases(ident, keys, view, rng, verbose)
        subj = SUBJECTS[int(rng.integers(len(SUBJECTS)))]
        hair_with = None
        if "hair" in ph and rng.random() < 0.35:
            hair_with = ph.pop("hair")
        clauses = _clauses(ph, subj, rng)
        if extra:
            clauses.append(_w(rng, style.extras))
        text = _sentences(clauses, rng, subj, hair_with)
        n = len(text.split())
        if n > style.max_words and len(keys) > 1:
            keys.remove(next(k for k in PRIORITY if k in keys))
            continue
        if n < style.min_words and (spare or verbose < 1.0 or not extra):
            if spare:
                keys.append(spare.pop(0))
            elif verbose < 1.0:
                verbose = 1.0
            else:
                extra = True
            continue
        return text, keys
    return text, keys
