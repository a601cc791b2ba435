"""Checkpoint loaders: official RaSa (load + export), ALBEF, TCL, all-MiniLM-L6-v2,
OpenAI CLIP.

Each converts a foreign key layout into ours and accounts for every key
(:class:`~rasa.models.loaders.common.LoadReport`, kept on ``model.load_report``).
"""

from rasa.models.loaders.albef import load_albef, load_tcl
from rasa.models.loaders.clip import load_clip
from rasa.models.loaders.common import LoadReport, read_checkpoint
from rasa.models.loaders.minilm import load_minilm_text
from rasa.models.loaders.official import export_official, load_official

__all__ = [
    "LoadReport",
    "export_official",
    "load_albef",
    "load_clip",
    "load_minilm_text",
    "load_official",
    "load_tcl",
    "read_checkpoint",
]
