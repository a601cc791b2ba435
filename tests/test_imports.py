"""A command loads no library it does not use: ``--help`` imports no torch; the model package
imports timm only when a ViT is built (timm pulls in torchvision, ~200 MB resident)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "torchvision", "matplotlib", "pandas", "sklearn", "dvclive",
         "tokenizers")  # fmt: skip


def loaded_after(code: str) -> set[str]:
    """The HEAVY libraries a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return {m for m in json.loads(out.strip().splitlines()[-1]) if m in HEAVY}


def test_cli_parser_imports_no_heavy_library():
    assert loaded_after("from rasa.cli import build_parser; build_parser()") == set()


def test_model_package_imports_timm_only_to_build_a_vit():
    assert loaded_after("import rasa.models, rasa.models.loaders") == {"torch"}
    built = loaded_after(
        "from rasa.models import create_model\n"
        "create_model('tiny', image_size=(32, 16), queue_size=8)"
    )
    assert {"torch", "timm"} <= built
    assert not built & {"matplotlib", "pandas", "sklearn", "dvclive"}
