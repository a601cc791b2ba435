"""Shared checkpoint-loading machinery: reading, shape inference, strict accounting.

Every loader renames a foreign checkpoint's keys into ours and hands the result to
:func:`load_into`, which accounts for every key: loaded, ``new`` (heads or buffers the
checkpoint does not have and that are initialised fresh, reported but not an error), missing
(an error when strict), unexpected (an error when strict), shape mismatches (always an error).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rasa.errors import ConfigError, DataError
from rasa.models.rasa_model import RaSaModel

BERT_VOCAB_SIZE = 30522  # bert-base-uncased, the vocabulary of ALBEF, TCL and RaSa


@dataclass
class LoadReport:
    """What happened to every key of a checkpoint load.

    ``loaded``: model keys copied from the checkpoint (trained at ``train.lr``); ``new``: model
    keys the checkpoint lacks by design (heads, queues, ...), initialised fresh and trained at
    ``train.lr_new``; ``dropped``: checkpoint keys deliberately not used (buffers, duplicates,
    heads a run re-initialises); ``missing`` / ``unexpected``: errors of a strict load.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def format(self) -> str:
        """The report grouped by key prefix (layer numbers folded), one line per kind."""
        lines = [f"loaded {len(self.loaded)} tensors from {self.source}"]
        for title, keys in (
            ("loaded", self.loaded),
            ("new (initialised fresh)", self.new),
            ("dropped", self.dropped),
            ("missing", self.missing),
            ("unexpected", self.unexpected),
        ):
            if keys:
                lines.append(f"  {title}: {group_keys(keys)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def group_keys(keys: list[str]) -> str:
    """``['a.b.0.w', 'a.b.1.w', 'c']`` -> ``'a.b.* (2), c (1)'`` (layer numbers folded)."""
    groups: dict[str, int] = defaultdict(int)
    for k in keys:
        parts = re.sub(r"\.\d+\.", ".N.", k).split(".")
        groups[".".join(parts[:2]) + (".*" if len(parts) > 2 else "")] += 1
    return ", ".join(f"{g} ({n})" for g, n in sorted(groups.items()))


# ---- the exported form of our checkpoints: safetensors + the tokenizer as JSON --------------
# A pre-trained model that is committed or shared (``rasa pretrain``'s export, issue #12):
# ``model.safetensors`` holds the weights and, as plain-text metadata, the model config, the run
# config and record that made it; ``tokenizer.json`` beside it is the tokenizer record
# (rasa.data.tokenizer.tokenizer_record), whose identity hash the metadata repeats.
EXPORT_FORMAT = "rasa-export-1"
EXPORT_META_KEYS = ("model_config", "config", "record")
EXPORT_KEY = "rasa"  # the one safetensors metadata entry: JSON of the above and more


def write_export(
    path: str | Path,
    state_dict: dict[str, Tensor],
    tokenizer: dict[str, Any],
    **meta: Any,
) -> Path:
    """Write ``path`` (``*.safetensors``) and ``tokenizer.json`` beside it, atomically; the
    same tensors and metadata give the same bytes. ``meta``: :data:`EXPORT_META_KEYS` plus
    plain scalars (e.g. ``threads``, ``torch``), stored as JSON text."""
    from safetensors.torch import save

    from rasa.data.tokenizer import TOKENIZER_FILE
    from rasa.io import write_bytes, write_json

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"{path}: an export is written as FILE.safetensors.")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    # one metadata entry: safetensors writes its metadata map in hash order, and the bytes
    # must be a function of the content
    doc = {"format": EXPORT_FORMAT, "tokenizer_sha256": str(tokenizer["sha256"]), **meta}
    header = {EXPORT_KEY: json.dumps(doc, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path.parent / TOKENIZER_FILE, tokenizer)
    write_bytes(path, save(tensors, metadata=header))
    return path


def read_export(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, rest) of an export: ``rest`` holds the metadata of
    :data:`EXPORT_META_KEYS` and ``tokenizer``, the record of the ``tokenizer.json`` beside it
    (checked against the identity hash the weights file names)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    from rasa.data.tokenizer import TOKENIZER_FILE, read_tokenizer_file

    path = Path(path)
    if not path.is_file():
        raise DataError(f"Checkpoint {path} does not exist; pass the path of a .safetensors file.")
    try:
        with safe_open(str(path), framework="pt") as fh:
            text = (fh.metadata() or {}).get(EXPORT_KEY)
        state = load_file(str(path))
        header = json.loads(text) if text else {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DataError(f"Checkpoint {path}: not a readable safetensors file ({err}).") from err
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise DataError(
            f"Checkpoint {path}: metadata 'format' is {header.get('format')!r}; expected "
            f"{EXPORT_FORMAT!r} (written by `rasa pretrain`). Other safetensors files are not "
            "read as a starting point."
        )
    rest: dict[str, Any] = {}
    for key in EXPORT_META_KEYS:
        if not isinstance(header.get(key), dict):
            raise DataError(f"Checkpoint {path}: metadata {key!r} missing (expected an object).")
        rest[key] = header[key]
    record = read_tokenizer_file(path.parent / TOKENIZER_FILE)
    if record["sha256"] != header.get("tokenizer_sha256"):
        raise DataError(
            f"{path.parent / TOKENIZER_FILE}: tokenizer identity {record['sha256'][:12]} is not "
            f"the one {path} was trained with ({str(header.get('tokenizer_sha256'))[:12]}); "
            "keep the two files of an export together."
        )
    rest["tokenizer"] = record
    return state, rest


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, rest) of a ``{'model': sd, ...}`` or bare state-dict file (weights only),
    or of an export (``*.safetensors``, :func:`read_export`)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_export(path)
    if not path.is_file():
        raise DataError(f"Checkpoint {path} does not exist; pass the path of a .pth file.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - report any unreadable file the same way
        raise DataError(
            f"Checkpoint {path} could not be read with torch.load(weights_only=True): {err}"
        ) from err
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], {k: v for k, v in obj.items() if k != "model"}
    if isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj, {}
    raise DataError(
        f"Checkpoint {path}: expected a state dict or a dict with key 'model' holding one, "
        f"got {type(obj).__name__} with keys {list(obj)[:10] if isinstance(obj, dict) else '-'}."
    )


def official_tokenizer(model: RaSaModel, source: str, notes: list[str]) -> None:
    """Give ``model`` the tokenizer record of ALBEF/TCL/official RaSa checkpoints (BERT uncased,
    no ``[SEP]``) when it embeds BERT's 30,522 pieces; other vocabularies get none (only their
    size can be checked)."""
    from rasa.data.tokenizer import official_tokenizer_record

    model.tokenizer_source = source
    if model.config.vocab_size != BERT_VOCAB_SIZE:
        notes.append(
            f"tokenizer: vocabulary of {model.config.vocab_size} (not BERT uncased's "
            f"{BERT_VOCAB_SIZE}); no tokenizer recorded, only its size is checked"
        )
        return
    try:
        model.tokenizer_record = official_tokenizer_record()
    except ConfigError as err:
        notes.append(f"tokenizer: BERT uncased not recorded ({err})")


def foreign_new_prefixes(state: dict[str, Tensor], extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """What a checkpoint of another codebase may lack (reported new, not missing): every head
    (``RaSaModel.HEADS``), the queues, the momentum copy when it has none at all, and
    ``extra`` (loader-specific modules, e.g. MiniLM's ViT). Anything else missing is an error."""
    heads = with_momentum(tuple(p for group in RaSaModel.HEADS.values() for p in group))
    new = heads + RaSaModel.QUEUE_KEYS + extra
    if not has_momentum(state):
        new += RaSaModel.MOMENTUM_PREFIXES
    return new


def with_momentum(prefixes: tuple[str, ...]) -> tuple[str, ...]:
    """``prefixes`` and their momentum counterparts (``mlm_head.`` -> ``mlm_head_m.``)."""
    out = list(prefixes)
    for online, momentum in RaSaModel.MOMENTUM_PAIRS:
        out += [momentum + p[len(online) :] for p in prefixes if p.startswith(online + ".")]
    return tuple(out)


def has_momentum(state: dict[str, Tensor]) -> bool:
    """Whether a state dict (our key names) holds any momentum weights."""
    return any(k.startswith(RaSaModel.MOMENTUM_PREFIXES) for k in state)


def bert_vit_sizes(sd: dict[str, Tensor], text: str, source: str) -> dict[str, Any]:
    """:class:`ModelConfig` sizes read from the tensors of a timm-ViT + BERT state dict whose
    BERT keys start with ``text`` (``text_encoder.`` or ``text_encoder.bert.``). Head counts are
    not in the shapes: see :func:`attention_heads`."""
    patch = require(sd, "visual_encoder.patch_embed.proj.weight", source)
    word = require(sd, text + "embeddings.word_embeddings.weight", source)
    num_layers = count_layers(sd, text + "encoder.layer")
    layer0 = text + "encoder.layer.0."
    return dict(
        patch_size=patch.shape[-1],
        vision_width=patch.shape[0],
        vision_depth=count_layers(sd, "visual_encoder.blocks"),
        vision_mlp_dim=require(sd, "visual_encoder.blocks.0.mlp.fc1.weight", source).shape[0],
        vocab_size=word.shape[0],
        text_width=word.shape[1],
        text_intermediate=require(sd, layer0 + "intermediate.dense.weight", source).shape[0],
        num_layers=num_layers,
        fusion_layer=first_cross_layer(sd, text + "encoder.layer", num_layers),
        max_position_embeddings=require(
            sd, text + "embeddings.position_embeddings.weight", source
        ).shape[0],
        type_vocab_size=require(sd, text + "embeddings.token_type_embeddings.weight", source).shape[
            0
        ],
        embed_dim=require(sd, "vision_proj.weight", source).shape[0],
    )


def attention_heads(
    sizes: dict[str, Any],
    bert_heads: int | None,
    overrides: dict[str, Any],
    source: str,
    notes: list[str],
    bert_file: str = "config_bert.json",
) -> dict[str, int]:
    """``text_heads`` / ``vision_heads`` of a checkpoint: tensor shapes do not encode them.

    From the BERT config beside the checkpoint (``bert_heads``) or params (``overrides``), used
    for both the text and the ViT side; every number given must agree. With none, width / 64
    (ViT-B/16's and BERT-base's head width), said in the load report.
    """
    given = {f"{bert_file} num_attention_heads": bert_heads}
    given.update({f"model.{k}": overrides.get(k) for k in ("text_heads", "vision_heads")})
    given = {k: int(v) for k, v in given.items() if v is not None}
    if len(set(given.values())) > 1:
        raise ConfigError(
            f"Checkpoint {source}: attention head counts disagree ("
            + ", ".join(f"{k} = {v}" for k, v in given.items())
            + "); the text encoder and the ViT of this layout use one head count: give one."
        )
    if given:
        heads = next(iter(given.values()))
        where = " and ".join(given)
        for width in (sizes["text_width"], sizes["vision_width"]):
            if width % heads:
                raise ConfigError(
                    f"Checkpoint {source}: {heads} attention heads ({where}) do not divide "
                    f"width {width}."
                )
        notes.append(f"attention heads: {heads} (from {where}), text and ViT")
        return {"text_heads": heads, "vision_heads": heads}
    text, vision = max(1, sizes["text_width"] // 64), max(1, sizes["vision_width"] // 64)
    notes.append(
        f"attention heads: not recorded with the checkpoint ({bert_file} beside it) nor in "
        f"params (model.text_heads): assumed width / 64 = {text} (text), {vision} (ViT)"
    )
    return {"text_heads": text, "vision_heads": vision}


def require(sd: dict[str, Tensor], key: str, source: str) -> Tensor:
    if key not in sd:
        raise DataError(
            f"Checkpoint {source}: key {key!r} is missing; cannot infer the model size."
        )
    return sd[key]


def count_layers(sd: dict[str, Tensor], prefix: str) -> int:
    """Number of ``prefix.N.`` indices present (0 if none)."""
    pat = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    idx = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(idx) + 1 if idx else 0


def first_cross_layer(sd: dict[str, Tensor], prefix: str, num_layers: int) -> int:
    """Index of the first BERT layer with cross-attention (= fusion_layer)."""
    for i in range(num_layers):
        if f"{prefix}.{i}.crossattention.self.key.weight" in sd:
            return i
    return num_layers


def check_tied(sd: dict[str, Tensor], key: str, ref: Tensor, what: str, source: str) -> None:
    """A duplicate/tied checkpoint key must equal the tensor it duplicates."""
    t = sd[key]
    if t.shape != ref.shape or not torch.equal(t, ref):
        raise DataError(f"Checkpoint {source}: {key!r} should equal {what} (tied), but differs.")


def check_position_ids(sd: dict[str, Tensor], key: str, source: str) -> None:
    t = sd[key]
    if not torch.equal(t.reshape(-1).long(), torch.arange(t.numel())):
        raise DataError(f"Checkpoint {source}: buffer {key!r} is not 0..N-1 position ids.")


def load_into(
    model: RaSaModel,
    state: dict[str, Tensor],
    source: str,
    new_prefixes: tuple[str, ...] = (),
    strict: bool = True,
    notes: list[str] | None = None,
    dropped: list[str] | None = None,
) -> LoadReport:
    """Copy ``state`` (already in our key names) into ``model`` and account for every key.

    Model keys absent from ``state`` whose name starts with one of ``new_prefixes`` are
    reported as new (they keep their fresh initialisation); ``dropped`` lists the checkpoint
    keys a converter left out on purpose. Shape mismatches always raise; missing/unexpected
    keys raise when ``strict``.
    """
    report = LoadReport(source=source, notes=list(notes or []))
    own = model.state_dict()
    bad_shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad_shapes:
        raise DataError(f"Checkpoint {source}: shape mismatch for {'; '.join(bad_shapes)}.")
    report.unexpected = sorted(k for k in state if k not in own)
    report.dropped = sorted(dropped or [])
    for k in own:
        if k in state:
            report.loaded.append(k)
        elif k.startswith(new_prefixes):
            report.new.append(k)
        else:
            report.missing.append(k)
    if strict and not report.ok:
        raise DataError(f"Checkpoint {source} does not match the model:\n{report.format()}")
    to_load = {k: v for k, v in state.items() if k in own}
    model.load_state_dict(to_load, strict=False)
    return report
