#!/usr/bin/env bash
# Set up a virtual environment in .venv with PyTorch and rasa (editable).
#   bash scripts/install.sh          # the package and the workflow tools
#   bash scripts/install.sh --test   # ... plus the test tools, and (as root) the Debian
#                                    # packages some tests use: LaTeX and a one-node SLURM
# PyTorch is pinned: torch 2.14.1 / torchvision 0.29.1 (an unpinned torch would pull a
# multi-GB CUDA build). Re-running is cheap: pip skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="workflow"
[[ "${1:-}" == "--test" ]] && extras="workflow,test"
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[${extras}]"
echo "rasa installed in $(pwd)/.venv"
if [[ "${1:-}" == "--test" ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    bash scripts/setup_latex.sh   # pdflatex + poppler for the report tests (~1 min once)
    bash scripts/slurm_up.sh      # slurm-wlm + munge, a single-node cluster on localhost
  else
    echo "not root: skipping LaTeX/SLURM setup (those tests skip outside CI)"
  fi
fi
