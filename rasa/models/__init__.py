"""RaSa models: encoders, the RaSa model, the backbone registry and checkpoint loaders.

``from rasa.models import create_model, list_models, register_model``.
"""

from rasa.models.config import ModelConfig
from rasa.models.rasa_model import RaSaModel, gather_image_kv, official_two_stage_scores
from rasa.models.registry import create_model, list_models, register_model

__all__ = [
    "ModelConfig",
    "RaSaModel",
    "create_model",
    "gather_image_kv",
    "list_models",
    "official_two_stage_scores",
    "register_model",
]
