"""Caption cleaning, as in the RaSa code's ``pre_caption`` (paper §4, Appendix A.2).

Lower-case; drop ``, . ' ! ? " ( ) * # : ; ~``; ``-`` and ``/`` become spaces; ``<person>``
becomes ``person``; collapse runs of whitespace; keep at most ``max_words`` words (before
WordPiece). Applied before tokenization, in training and evaluation alike.
"""

from __future__ import annotations

import re

MAX_WORDS = 50

_DROP = re.compile(r"[,.'!?\"()*#:;~]")
_SPACE = re.compile(r"[-/]")
_WS = re.compile(r"\s+")


def clean_caption(caption: str, max_words: int = MAX_WORDS) -> str:
    """Return the cleaned caption (may be empty if the input had no words)."""
    text = caption.lower().replace("<person>", "person")
    text = _DROP.sub("", text)
    text = _SPACE.sub(" ", text)
    words = _WS.sub(" ", text).strip().split(" ")
    if max_words > 0:
        words = words[:max_words]
    return " ".join(w for w in words if w)
