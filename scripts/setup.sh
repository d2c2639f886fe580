#!/usr/bin/env bash
# Create .venv and install MVIC with everything it needs; safe to run again (it skips work already done).
# compressai 1.2.8 imports torchvision (and torch_geometric) at import time, and torchvision must match torch
# exactly, so the pair is pinned here and installed first; PyPI's torchvision fails beside other torch builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
stamp=.venv/.mvic-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
echo "setup: installing ${TORCH_PINS[*]} (first run only; several minutes)" >&2
.venv/bin/python -m pip install -q "${TORCH_PINS[@]}"
echo "setup: installing MVIC and its dependencies" >&2
.venv/bin/python -m pip install -q -e ".[dev]" "${TORCH_PINS[@]}"
.venv/bin/python -c "import compressai, mvic.shared.codec.model" 2>/dev/null
echo "$want" > "$stamp"
