"""Held-out figures of a pre-training checkpoint (checkpoint_last.pt, or an export's
model.safetensors), as the run's validation computes them: `python notes/heldout_eval.py
CHECKPOINT` (prints JSON)."""

import json
import sys

import torch

from rasa.config import ExperimentConfig
from rasa.data.annotations import Annotations
from rasa.data.token_cache import load_cache
from rasa.engine.evaluate import evaluate_split
from rasa.engine.metrics import flat_metrics
from rasa.engine.pretrain import heldout_itm
from rasa.models import ModelConfig, RaSaModel
from rasa.models.loaders.common import read_checkpoint

torch.set_num_threads(1)
weights, state = read_checkpoint(sys.argv[1])  # weights_only=True, or safetensors
cfg = ExperimentConfig.from_dict(state["config"])
model = RaSaModel(ModelConfig.from_dict(state["model_config"]))
model.load_state_dict(weights)
ann, cache = Annotations.load(cfg.annotations), load_cache(cfg.tokens)
m = evaluate_split(model, ann, cfg, cache, "val")
m.update(heldout_itm(model, ann, cfg, cache, "val"))
print(
    json.dumps({"step": state.get("step", state.get("record", {}).get("step")), **flat_metrics(m)})
)
