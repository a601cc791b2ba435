"""ALBEF and TCL checkpoints -> RaSa (the paper's initialisations, §4.1, Table 8).

Two layouts, both ``{'model': state_dict, ...}``:

- pre-training (``ALBEF.pth``, TCL's release): ``visual_encoder.*`` (ViT-B/16, pre-trained at
  256x256), ``text_encoder.bert.*`` (BERT-base, cross-attention from ``fusion_layer`` = 6 on),
  ``text_encoder.cls.predictions.*`` (MLM head), ``vision_proj``, ``text_proj``, ``itm_head``,
  ``temp``, momentum copies ``*_m``, ``image_queue``, ``text_queue``, ``queue_ptr``;
- fine-tuned retrieval (what ALBEF's and TCL's ``Retrieval.py`` save, e.g. the published
  Flickr/COCO fine-tunes): ``text_encoder.*`` without ``.bert.`` and without MLM head, plus
  ``idx_queue``. The MLM head is then reported new.

RaSa's own heads (``prd_head``, ``mrtd_head``) and whatever else the checkpoint lacks of
:func:`~rasa.models.loaders.common.foreign_new_prefixes` are new (trained at ``lr_new``); the ITM
head, when present, loads (the official code trains it at ``lr``). The ViT position grid is
interpolated to the configured resolution; sizes are read from the tensors, head counts from a
``config_bert.json`` beside the checkpoint or from params (else width / 64, noted in the report).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rasa.errors import DataError
from rasa.models.config import ModelConfig
from rasa.models.loaders.common import (
    attention_heads,
    bert_vit_sizes,
    foreign_new_prefixes,
    has_momentum,
    load_into,
    official_tokenizer,
    read_checkpoint,
)
from rasa.models.loaders.official import official_to_ours, resample_pos_embeds
from rasa.models.rasa_model import RaSaModel

BERT_CONFIG = "config_bert.json"


def bert_config_heads(path: Path) -> int | None:
    """``num_attention_heads`` of the ``config_bert.json`` beside a checkpoint, if there is one."""
    bert_path = path.parent / BERT_CONFIG
    if not bert_path.is_file():
        return None
    try:
        heads = json.loads(bert_path.read_text(encoding="utf-8")).get("num_attention_heads")
    except (ValueError, UnicodeDecodeError, AttributeError) as err:
        raise DataError(f"{bert_path}: not a readable BERT config JSON ({err}).") from err
    if heads is not None and (not isinstance(heads, int) or heads < 1):
        raise DataError(f"{bert_path}: num_attention_heads = {heads!r}, expected an integer >= 1.")
    return heads


def load_albef_layout(
    path: str | Path,
    name: str,
    image_size: tuple[int, int] = (384, 384),
    ckpt_image_size: tuple[int, int] | None = None,
    strict: bool = True,
    **overrides: Any,
) -> RaSaModel:
    """A :class:`RaSaModel` from an ALBEF/TCL checkpoint; ``model.load_report`` says how."""
    path = Path(path)
    raw, _ = read_checkpoint(path)
    dropped: list[str] = []
    state = official_to_ours(raw, str(path), dropped)
    notes: list[str] = []
    sizes = bert_vit_sizes(state, "text_encoder.", str(path))
    sizes.update(attention_heads(sizes, bert_config_heads(path), overrides, str(path), notes))
    sizes.update(name=name, image_size=image_size, add_sep=False)
    sizes.update(overrides)
    cfg = ModelConfig(**sizes)
    resample_pos_embeds(state, cfg, ckpt_image_size, notes)
    queue = state.get("image_queue")
    if queue is not None and queue.shape[1] != cfg.queue_size:
        notes.append(
            f"queues: checkpoint length {queue.shape[1]} != queue_size {cfg.queue_size}; "
            "re-initialised"
        )
        for k in RaSaModel.QUEUE_KEYS:
            if state.pop(k, None) is not None:
                dropped.append(k)
    momentum = has_momentum(state)
    if not momentum:
        notes.append("no momentum weights in the checkpoint: momentum copy = online weights")
    model = RaSaModel(cfg)
    official_tokenizer(model, str(path), notes)
    report = load_into(
        model, state, str(path), new_prefixes=foreign_new_prefixes(state), strict=strict,
        notes=notes, dropped=dropped,
    )  # fmt: skip
    if not momentum:
        model.copy_params_to_momentum()
    model.load_report = report
    return model


def load_albef(path: str | Path, **kw: Any) -> RaSaModel:
    """ALBEF (Li et al., 2021) 14M/4M pre-trained or Retrieval.py fine-tuned checkpoint."""
    return load_albef_layout(path, name="albef", **kw)


def load_tcl(path: str | Path, **kw: Any) -> RaSaModel:
    """TCL (Yang et al., 2022) checkpoint (ALBEF key layout)."""
    return load_albef_layout(path, name="tcl", **kw)
