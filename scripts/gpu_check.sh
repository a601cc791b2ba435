#!/usr/bin/env bash
# The GPU figures of the model and engine issues, in one run (< 8 min on one GPU); prints ONE
# JSON object. Needs only this repository and an installed environment (no data, no weights:
# random weights and inputs, which is enough for time, memory and bf16-vs-fp32 agreement).
#
#   bash scripts/gpu_check.sh            # on a machine with CUDA
#   bash scripts/gpu_check.sh --dry      # the same commands at tiny sizes on the CPU (tests)
#   bash scripts/gpu_check.sh --out FILE # also write the JSON to FILE
#
# Figures:
#   train_step  albef size (ViT-B/16 + BERT-base 6+6, queue 65,536) at 384x384, batch 13,
#               m-rtd, bf16 autocast: seconds per step, GFLOP, peak CUDA memory;
#   evaluate    CUHK-PEDES test size, 6,156 captions x 3,074 images, k 128, bf16 with the
#               same evaluation in fp32 beside it (seconds, peak memory), their agreement
#               (same top-1 share, R@1/mAP against synthetic ids) and the batched re-ranking
#               against the official per-query loop on 64 queries (largest score difference).
# Python: $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
DRY=0
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bash scripts/gpu_check.sh [--dry] [--out FILE]" >&2; exit 2 ;;
  esac
  shift
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if [[ $DRY -eq 1 ]]; then
  DEVICE=cpu
  STEP=(--backbone tiny --image-size 32 16 --batch-size 4 --caption-length 5 12
        --queue-size 32 --warmup 1 --repeats 2 --threads 1)
  EVAL=(--backbone tiny --image-size 32 16 --gallery 24 --queries 40 --k-test 8
        --caption-length 3 12 --naive-queries 8 --threads 1)
else
  DEVICE=cuda
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu_check: CUDA is not available (use --dry for the CPU smoke run)" >&2; exit 1; }
  STEP=(--backbone albef --image-size 384 384 --batch-size 13 --caption-length 15 50
        --warmup 3 --repeats 10)
  EVAL=(--backbone albef --image-size 384 384 --gallery 3074 --queries 6156 --k-test 128
        --caption-length 5 50 --batch-size 128 --naive-queries 64)
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
t0=$(date +%s)
"$PY" -m rasa bench train-step "${STEP[@]}" --variant m-rtd --dtype bf16 --device "$DEVICE" \
  | tail -n 1 > "$TMP/train_step.json"
"$PY" -m rasa bench evaluate "${EVAL[@]}" --dtype bf16 --compare fp32 --device "$DEVICE" \
  | tail -n 1 > "$TMP/evaluate.json"
t1=$(date +%s)

"$PY" - "$TMP" "$DRY" "$((t1 - t0))" "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path

tmp, dry, seconds, out = Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4]
import torch

doc = {
    "check": "gpu_check",
    "dry": dry,
    "wall_seconds": seconds,
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not dry else None,
    "train_step": json.loads((tmp / "train_step.json").read_text()),
    "evaluate": json.loads((tmp / "evaluate.json").read_text()),
}
text = json.dumps(doc)
print(text)
if out:
    Path(out).write_text(text + "\n")
PYEOF
