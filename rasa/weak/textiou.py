"""Text-IoU: noun-phrase overlap between two captions (CMMT, ICCV 2021, "Text-IoU").

CMMT assumes that two descriptions of the same person mention the same (or synonymous) noun
phrases, and scores a caption pair by ``IoU_ij = |NP_i ∩ NP_j| / |NP_i ∪ NP_j|`` over their
noun-phrase sets. The paper uses an off-the-shelf parser; nothing may be downloaded here, so
:func:`noun_phrases` is a small rule-based chunker for person descriptions:

* words are the cleaned caption (:func:`rasa.data.text.clean_caption`) split on spaces;
* a phrase is a maximal run of modifiers (colour words, common appearance adjectives, "and"
  between two colours) ending in a head noun from a lexicon of garments, accessories, hair
  and carried objects (not "head"/"hand"/"arm": they appear in most captions); the phrase key is ``"<modifiers> <head>"`` with plural heads
  singularised (a trailing "s"/"es" dropped when the stem is in the lexicon);
* a head noun without modifiers is a phrase of its own ("a bag" -> ``"bag"``).

Limits (documented, measured nowhere else): the lexicons are English person-description
vocabulary, so captions about other domains yield few phrases; only a short list of synonyms is
merged (``SYNONYMS``: "trousers"/"slacks" -> "pants", "rucksack" -> "backpack", "gray" ->
"grey", ...), not "navy" vs "dark blue"; determiners/adverbs between modifier and noun ("a
shirt that is red") split the colour from its noun; compound nouns outside the lexicon are
missed. A caption without any phrase has an empty set; the IoU of two empty sets is 0, and a
caption with itself (the diagonal of a batch) is defined as 1.

Batches: :func:`phrase_vocabulary` maps each caption's set to ids once; :func:`iou_matrix`
builds the ``B x B`` (or ``B x C``) matrix from binary incidence matrices with one matmul.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from rasa.data.text import clean_caption

COLOURS = frozenset(
    "black white grey gray red blue green yellow orange purple pink brown beige tan navy khaki "
    "maroon burgundy cream olive teal turquoise gold golden silver violet magenta cyan "
    "dark light bright pale colorful colourful multicolored".split()
)
ADJECTIVES = frozenset(
    "long short sleeved sleeveless striped plaid checked checkered patterned printed floral "
    "dotted spotted plain solid denim leather wool woolen knit knitted cotton jean big small "
    "large little tight loose baggy skinny high low thick thin heavy hooded zip zipped "
    "casual formal sports athletic running canvas open closed straight curly wavy ponytail "
    "shoulder length ankle knee mini midi rimmed framed round square backpack t".split()
)
HEADS = frozenset(
    "shirt tshirt shirts blouse top tee jacket coat hoodie sweater sweatshirt cardigan vest "
    "dress skirt pants trousers jeans shorts leggings tights suit uniform jumpsuit overalls "
    "shoes shoe sneakers sneaker boots boot sandals sandal heels slippers socks loafers "
    "hat cap beanie helmet hood scarf glasses sunglasses mask gloves belt tie watch necklace "
    "bag backpack handbag purse bags suitcase luggage umbrella bottle phone cup box bike "
    "bicycle scooter stroller cart paper papers book folder "
    "hair ponytail bun beard mustache "
    "slacks chinos capris rucksack knapsack satchel tote briefcase pullover jumper blazer "
    "parka windbreaker raincoat polo trainers flats pumps".split()
)
# head synonyms merged into one key (the chunker's only normalisation besides plurals)
SYNONYMS = {
    "trousers": "pants", "slacks": "pants", "chinos": "pants", "jean": "jeans",
    "rucksack": "backpack", "knapsack": "backpack", "trainers": "sneaker", "trainer": "sneaker",
    "tshirt": "shirt", "tee": "shirt", "sweatshirt": "sweater", "pullover": "sweater",
    "jumper": "sweater", "handbag": "bag", "purse": "bag", "satchel": "bag", "tote": "bag",
    "gray": "grey", "colourful": "colorful", "cap": "hat",
}  # fmt: skip
CONNECTORS = frozenset({"and", "or", "with"})
_MODIFIERS = COLOURS | ADJECTIVES


def _head(word: str) -> str | None:
    """The lexicon form of ``word`` when it is a head noun (plurals singularised), else None."""
    head = None
    if word in HEADS:
        head = word[:-1] if word.endswith("s") and word[:-1] in HEADS else word
    else:
        for suffix in ("es", "s"):
            if word.endswith(suffix) and word[: -len(suffix)] in HEADS:
                head = word[: -len(suffix)]
                break
    return None if head is None else SYNONYMS.get(head, head)


def noun_phrases(caption: str) -> frozenset[str]:
    """The noun-phrase keys of ``caption`` (rule-based chunker, see the module docstring)."""
    words = clean_caption(caption).split()
    phrases: set[str] = set()
    mods: list[str] = []
    for i, word in enumerate(words):
        head = _head(word)
        nxt = words[i + 1] if i + 1 < len(words) else ""
        # a modifier that is also a head ("backpack", "ponytail") modifies a following head
        if word in _MODIFIERS and (head is None or _head(nxt) is not None):
            mods.append(word)
            continue
        if head is not None:
            phrases.add(" ".join([*(SYNONYMS.get(m, m) for m in mods), head]))
            mods = []
            continue
        if word in CONNECTORS and mods and nxt in _MODIFIERS:
            continue  # "black and white shirt": keep the colour run going
        mods = []
    return frozenset(phrases)


def phrase_vocabulary(
    phrase_sets: Sequence[Iterable[str]],
) -> tuple[list[np.ndarray], dict[str, int]]:
    """Phrase ids per caption (sorted int64 arrays) and the phrase -> id vocabulary."""
    vocab: dict[str, int] = {}
    ids = []
    for phrases in phrase_sets:
        ids.append(np.asarray(sorted(vocab.setdefault(p, len(vocab)) for p in phrases), np.int64))
    return ids, vocab


def incidence(phrase_ids: Sequence[np.ndarray], num_phrases: int) -> torch.Tensor:
    """Binary ``[N, num_phrases]`` float matrix: row i marks caption i's phrases."""
    out = torch.zeros(len(phrase_ids), max(num_phrases, 1))
    for i, ids in enumerate(phrase_ids):
        if len(ids):
            out[i, torch.from_numpy(ids)] = 1.0
    return out


def iou_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Text-IoU of every row of incidence ``a`` [N, P] against every row of ``b`` [M, P].

    ``|A ∩ B| = a @ b.T``; ``|A ∪ B| = |A| + |B| - |A ∩ B|``; 0 where the union is empty.
    """
    b = a if b is None else b
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1).view(1, -1) - inter
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.zeros_like(inter))


def batch_iou(phrase_ids: Sequence[np.ndarray], diagonal_one: bool = True) -> torch.Tensor:
    """The ``B x B`` Text-IoU matrix of a batch from its captions' phrase ids.

    Only the phrases present in the batch get a column; ``diagonal_one`` sets IoU(t_i, t_i) = 1
    also for captions without phrases (a caption always matches itself).
    """
    present = np.unique(np.concatenate([*phrase_ids, np.zeros(0, np.int64)]))
    remap = {int(p): j for j, p in enumerate(present)}
    local = [np.asarray([remap[int(p)] for p in ids], np.int64) for ids in phrase_ids]
    iou = iou_matrix(incidence(local, len(present)))
    if diagonal_one:
        iou.fill_diagonal_(1.0)
    return iou


def text_iou(a: str, b: str) -> float:
    """Text-IoU of two captions (0 when neither has a noun phrase)."""
    pa, pb = noun_phrases(a), noun_phrases(b)
    union = len(pa | pb)
    return len(pa & pb) / union if union else 0.0
