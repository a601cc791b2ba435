#!/usr/bin/env bash
# Fine-tune synth-cuhk-300 from a pre-trained checkpoint other than params' (issue #12 recipe
# exploration), one variant, one seed, extra --set items after OUT:
#   notes/finetune.sh PRETRAINED(.pt|.safetensors) VARIANT SEED OUT [--set key=value ...]
# The suites themselves fine-tune from params' backbones.tiny.pretrained (the committed export).
set -euo pipefail
pre=$1 variant=$2 seed=$3 out=$4
shift 4
tok="checkpoint:${pre}"
tokens="data/synth-cuhk-300/tokens-$(basename "$(dirname "$pre")")-$(basename "$pre").npz"
[ -f "$tokens" ] || python -m rasa data tokenize --annotations data/synth-cuhk-300/annotations.json \
  --tokenizer "$tok" --out "$tokens"
python -m rasa train --experiment "synth-cuhk-300-tiny-${variant}-seed${seed}" --tokens "$tokens" \
  --set "tokenizer=${tok}" --set "pretrained=${pre}" --out "$out" --no-progress "$@"
