#!/usr/bin/env bash
# Fine-tune synth-cuhk-300 from a pre-trained checkpoint (issue #12), one variant, one seed:
#   notes/finetune.sh PRETRAINED.pt VARIANT SEED OUT
# Needs data/synth-cuhk-300/annotations.json and its token cache made with the corpus
# tokenizer: rasa data tokenize --tokenizer cache:data/pretrain-corpus/tokens-wordpiece-2000.npz
set -euo pipefail
pre=$1 variant=$2 seed=$3 out=$4
tok=cache:data/pretrain-corpus/tokens-wordpiece-2000.npz
python -m rasa train --experiment "synth-cuhk-300-tiny-${variant}-seed${seed}" \
  --tokens data/synth-cuhk-300/tokens-cache-data-pretrain-corpus-tokens-wordpiece-2000.npz \
  --set "tokenizer=${tok}" --set "pretrained=${pre}" --out "$out" --no-progress
