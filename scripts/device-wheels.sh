#!/usr/bin/env bash
# Wheels for training or decoding on a machine with no network whose Python has torch but not compressai
# (e.g. a lent GPU machine): MVIC itself plus the few packages such a machine lacks, for its Python and platform.
#   scripts/device-wheels.sh [DIR] [PYTHON_VERSION]      (default .whl and 3.12)
# Then, on that machine:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site DIR/*.whl && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
pyver=${2:-3.12}
mkdir -p "$out"
rm -f "$out"/mvic-*.whl
plat=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
pip_dl=(python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp
        "${plat[@]}" -d "$out")
"${pip_dl[@]}" compressai==1.2.8
python3 -m pip download -q --no-deps -d "$out" pytorch-msssim==1.0.0 || "${pip_dl[@]}" pytorch-msssim
"${PYTHON:-.venv/bin/python}" -m pip wheel -q --no-deps -w "$out" . 2>&1 | grep -v "^WARNING: Location" || true
ls -1 "$out"
du -sh "$out"
