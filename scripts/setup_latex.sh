#!/usr/bin/env bash
# Install what `rasa report --compile` and tests/test_latex.py need: pdflatex with the LaTeX
# packages the tables use (booktabs, multirow, makecell, threeparttable, xcolor, caption,
# standalone, varwidth) and pdftoppm (poppler-utils) to render a page to PNG.
#
#   bash scripts/setup_latex.sh          # installs with apt-get when something is missing
#   bash scripts/setup_latex.sh --check  # only reports; exit 1 when something is missing
#
# Idempotent: when everything is present it returns at once without touching apt.
# Needs root (or sudo) on Debian/Ubuntu for the install; elsewhere install TeX Live yourself.
set -euo pipefail

STYLES=(booktabs.sty multirow.sty makecell.sty threeparttable.sty xcolor.sty caption.sty varwidth.sty standalone.cls)
PACKAGES=(texlive-latex-base texlive-latex-recommended texlive-latex-extra poppler-utils)

missing() {
  command -v pdflatex >/dev/null 2>&1 || { echo "pdflatex"; return; }
  command -v pdftoppm >/dev/null 2>&1 || echo "pdftoppm"
  command -v kpsewhich >/dev/null 2>&1 || { echo "kpsewhich"; return; }
  local f
  for f in "${STYLES[@]}"; do
    [[ -n "$(kpsewhich "$f" 2>/dev/null)" ]] || echo "$f"
  done
}

need=$(missing | tr '\n' ' ')
if [[ -z "${need// /}" ]]; then
  echo "setup_latex: pdflatex, pdftoppm and the LaTeX packages are installed"
  exit 0
fi
echo "setup_latex: missing: ${need}"
[[ "${1:-}" == "--check" ]] && exit 1

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "setup_latex: not root and no sudo: install ${PACKAGES[*]} by hand" >&2
    exit 1
  }
  SUDO="sudo"
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "setup_latex: no apt-get: install TeX Live (latex-base/recommended/extra) and poppler" >&2
  exit 1
}
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
need=$(missing | tr '\n' ' ')
if [[ -n "${need// /}" ]]; then
  echo "setup_latex: still missing after install: ${need}" >&2
  exit 1
fi
echo "setup_latex: installed in $(($(date +%s) - start)) s"
