"""Token cache: every caption of an annotation table tokenized once (paper §4, max 50 tokens).

``build_cache(annotations, spec, out)`` cleans and tokenizes all captions (all splits, flat
caption order of :meth:`Annotations.captions`: row ``i`` is caption ``i``) and writes an
``.npz`` holding

- ``ids``  int32 ``(N, max_len)``: ``[CLS] word-pieces [SEP] [PAD]...`` (no ``[SEP]`` with
  ``add_sep=False``, the official ALBEF/RaSa layout);
- ``mask`` uint8 ``(N, max_len)``: 1 on real tokens;
- ``meta`` a JSON string: spec, key, vocab_size, special ids, add_sep, max_len, the number of
  captions, a hash of the captions, ``tokenizer_json`` (``Tokenizer.to_str()``) so the exact
  tokenizer is rebuilt with ``Tokenizer.from_str``, and ``tokenizer_sha256``, the tokenizer's
  identity hash (:func:`rasa.data.tokenizer.tokenizer_sha256`) that checkpoints are compared
  with.

The cache is keyed by a sha256 over the spec, the tokenizer JSON, ``max_len``, ``add_sep`` and
every caption (raw and cleaned) in order: a fresh cache with the same key is reused as is, and a
changed tokenizer, caption or cleaning rule rebuilds it. Training then indexes rows instead of
re-tokenizing every caption every epoch (``scripts/bench_tokens.py`` measures the gain).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from rasa.data.annotations import Annotations
from rasa.data.text import clean_caption
from rasa.data.tokenizer import (
    describe_record,
    encode_captions,
    get_tokenizer,
    spec_layout,
    special_ids,
    tokenizer_record,
    tokenizer_sha256,
)
from rasa.errors import ConfigError, DataError
from rasa.io import atomic_open

CACHE_FORMAT = 1
# what reading a damaged .npz raises (truncated zip, bad JSON, missing array, short read)
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def captions_sha256(captions: Iterable[str]) -> str:
    """sha256 of captions in order (each JSON-encoded on its own line: unambiguous)."""
    h = hashlib.sha256()
    for cap in captions:
        h.update(json.dumps(cap, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def cache_key(
    spec: str, tokenizer_json: str, max_len: int, add_sep: bool, captions: list[str]
) -> str:
    """The cache key: what the rows depend on, hashed."""
    h = hashlib.sha256()
    head = {
        "format": CACHE_FORMAT,
        "spec": spec,
        "max_len": int(max_len),
        "add_sep": bool(add_sep),
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest(),
        "captions_sha256": captions_sha256(captions),
        "cleaned_sha256": captions_sha256(clean_caption(c) for c in captions),
    }
    h.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    return h.hexdigest()


@dataclass
class TokenCache:
    """Token ids and masks of every caption, row ``i`` = flat caption ``i``."""

    ids: np.ndarray  # int32 (N, max_len)
    mask: np.ndarray  # uint8 (N, max_len)
    meta: dict
    path: Path | None = None
    _tokenizer: Tokenizer | None = field(default=None, repr=False, compare=False)
    _identity: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.meta["max_len"])

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def pad_id(self) -> int:
        return int(self.meta["pad_id"])

    @property
    def cls_id(self) -> int:
        return int(self.meta["cls_id"])

    @property
    def sep_id(self) -> int:
        return int(self.meta["sep_id"])

    @property
    def mask_id(self) -> int:
        return int(self.meta["mask_id"])

    @property
    def unk_id(self) -> int:
        return int(self.meta["unk_id"])

    @property
    def tokenizer_sha256(self) -> str:
        """The identity hash of the tokenizer that wrote the cache, computed from its JSON (a
        stored hash may come from an earlier definition of the identity)."""
        if self._identity is None:
            self._identity = tokenizer_sha256(self.meta["tokenizer_json"])
        return self._identity

    def tokenizer_record(self) -> dict:
        """The record of this cache's tokenizer that checkpoints carry (plain data)."""
        record = tokenizer_record(
            self.meta["tokenizer_json"], self.meta.get("spec", ""),
            bool(self.meta.get("add_sep", True)), self.max_len,
        )  # fmt: skip
        return record

    def check_tokenizer(self, record: dict | None, source: object) -> None:
        """Raise :class:`ConfigError` unless this cache was made by the tokenizer of ``record``
        (the record a checkpoint carries; ``source`` names that checkpoint).

        Identity hashes are compared, not vocabulary sizes: two tokenizers of one size give the
        same caption different ids.
        """
        if not record:
            return
        # the identity is recomputed from the recorded JSON where there is one: a stored hash
        # may come from an earlier definition of the identity (tokenizer_sha256)
        stored = record.get("tokenizer_json")
        if (tokenizer_sha256(stored) if stored else record.get("sha256")) == self.tokenizer_sha256:
            return
        if str(source).endswith((".pt", ".pth", ".safetensors")) and record.get("tokenizer_json"):
            hint = f"`rasa data tokenize --tokenizer checkpoint:{source}`"
        else:
            spec = str(record.get("spec"))
            sep = "" if record.get("add_sep", True) or spec.endswith("+nosep") else " --no-sep"
            hint = f"`rasa data tokenize --tokenizer {spec}{sep}`"
        raise ConfigError(
            f"token cache {self.path or '(in memory)'} was made by another tokenizer than "
            f"{source}: the cache has {describe_record(self.tokenizer_record())}, the model "
            f"was trained with {describe_record(record)}. Token ids would mean other words; "
            f"tokenize the captions with the model's tokenizer ({hint})."
        )

    def tokenizer(self) -> Tokenizer:
        """The exact tokenizer that wrote the cache (layout, truncation and padding included)."""
        if self._tokenizer is None:
            self._tokenizer = Tokenizer.from_str(self.meta["tokenizer_json"])
        return self._tokenizer

    def decode(self, row: int, skip_special_tokens: bool = True) -> str:
        """The text of cache row ``row`` (the cleaned caption, up to truncation)."""
        n = int(self.mask[row].sum())
        return self.tokenizer().decode(
            self.ids[row, :n].tolist(), skip_special_tokens=skip_special_tokens
        )

    def check_matches(self, annotations: Annotations, where: object = "annotations") -> None:
        """Raise :class:`DataError` unless the cache was built from these captions."""
        caps = [c for _, _, c in annotations.captions()]
        if len(caps) != len(self) or captions_sha256(caps) != self.meta.get("captions_sha256"):
            raise DataError(
                f"token cache {self.path or '(in memory)'} was built from other captions than "
                f"{where} ({len(self)} rows, the table has {len(caps)} captions); rebuild it "
                "with `rasa data tokenize`."
            )


def load_cache(path: str | os.PathLike) -> TokenCache:
    """Read a token cache written by :func:`build_cache` (no pickles)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: token cache not found; build it with `rasa data tokenize`.")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            ids = np.ascontiguousarray(z["ids"], dtype=np.int32)
            mask = np.ascontiguousarray(z["mask"], dtype=np.uint8)
    except _UNREADABLE as exc:
        raise DataError(
            f"{path}: not a readable token cache (expected an .npz with ids, mask, meta; {exc}); "
            "rebuild it with `rasa data tokenize`."
        ) from exc
    if not isinstance(meta, dict):
        raise DataError(f"{path}: token cache meta is not a JSON object; rebuild the cache.")
    if meta.get("format") != CACHE_FORMAT or ids.shape != mask.shape or ids.ndim != 2:
        raise DataError(
            f"{path}: token cache format {meta.get('format')!r} or shapes {ids.shape}/"
            f"{mask.shape} not understood (expected format {CACHE_FORMAT}, equal 2-D ids and "
            "mask); rebuild it with `rasa data tokenize`."
        )
    return TokenCache(ids=ids, mask=mask, meta=meta, path=path)


def stored_key(path: Path) -> str | None:
    """The key of an existing cache, or None when absent or unreadable (a truncated or foreign
    file at ``--out`` is rebuilt over, never a reason to stop)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            key = meta.get("key") if isinstance(meta, dict) else None
            if key is not None:  # the arrays must read back in full too, not only the meta
                np.asarray(z["ids"]), np.asarray(z["mask"])
            return key
    except _UNREADABLE:
        return None


def build_cache(
    annotations_path: str | os.PathLike,
    spec: str,
    out: str | os.PathLike,
    max_len: int = 50,
    add_sep: bool = True,
    progress: bool = True,
) -> TokenCache:
    """Tokenize every caption of ``annotations_path`` with ``spec`` into the cache ``out``.

    A cache at ``out`` with the same key is left untouched ("up to date"); otherwise it is
    (re)written atomically. Returns the cache.
    """
    annotations = Annotations.load(annotations_path)
    out = Path(out)
    add_sep = spec_layout(spec, add_sep)[1]
    tok = get_tokenizer(spec, annotations, add_sep=add_sep, max_len=max_len)
    tokenizer_json = tok.to_str()
    captions = [c for _, _, c in annotations.captions()]
    key = cache_key(spec, tokenizer_json, max_len, add_sep, captions)
    if stored_key(out) == key:
        print(f"{out}: up to date ({len(captions)} captions, key {key[:12]})")
        return load_cache(out)

    ids, mask = encode_captions(tok, captions, progress=progress)
    meta = {
        "format": CACHE_FORMAT,
        "spec": spec,
        "key": key,
        "vocab_size": int(tok.get_vocab_size(with_added_tokens=True)),
        **special_ids(tok),
        "add_sep": bool(add_sep),
        "max_len": int(max_len),
        "num_captions": len(captions),
        "captions_sha256": captions_sha256(captions),
        "dataset": annotations.dataset,
        "at_max_len": int((mask.sum(1) == max_len).sum()),
        "tokenizer_json": tokenizer_json,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_json),
    }
    with atomic_open(out, "wb") as fh:  # a file object: np.savez adds no ".npz" suffix
        np.savez(fh, ids=ids, mask=mask, meta=np.array(json.dumps(meta, sort_keys=True)))
    lengths = mask.sum(1)
    print(
        f"{out}: {len(captions)} captions, vocab {meta['vocab_size']}, tokens/caption mean "
        f"{lengths.mean() if len(lengths) else 0:.1f} max {lengths.max() if len(lengths) else 0}"
        f" (max_len {max_len}, {meta['at_max_len']} at the limit), key {key[:12]}"
    )
    return TokenCache(ids=ids, mask=mask, meta=meta, path=out, _tokenizer=tok)
