#!/usr/bin/env bash
# Here, before a GPU window (issue 11): what the device machine lacks, in .device/ (git-ignored; carried by the call).
#   .device/whl/     compressai 1.2.8 (cp312 manylinux), pytorch-msssim, and the grpcio / grpcio-health-checking /
#                    protobuf / prometheus-client this checkout's gRPC stubs need. No MVIC wheel: the work tree
#                    travels anyway and scripts/device-train.sh imports MVIC from it, so the weights travel once.
#   .device/corpus/  the photo corpus cut to fit: its train split only, long side 768 px, JPEG quality 88.
#   .device/init.safetensors  with --init RUN: that run's weights' average (fp16 kernels), to start the window from
#                    (e.g. the CPU campaign's /var/tmp/mvic-runs/fast-lite: v5 came from such a window). It takes the
#                    gRPC wheels' room: without them the tests of the gRPC side skip, training and the checks do not.
# Then checks that the tree plus .device/ fits what one call may carry (64 MiB; 60 MiB here, for margin).
#   scripts/device-prep.sh [--init RUN] [PYTHON_VERSION]      (default 3.12, the device machine's)
# The device command (one call, within its 600 s):
#   bash scripts/device-train.sh 570 configs/device-fast-lite.yaml [.device/init.safetensors]   carry: [".device"],
#   timeout_s: 600
set -euo pipefail
cd "$(dirname "$0")/.."
init_run=
if [ "${1:-}" = --init ]; then
  init_run=${2:?usage: scripts/device-prep.sh [--init RUN] [PYTHON_VERSION]}
  shift 2
fi
pyver=${1:-3.12}
B=.venv/bin
limit_mib=60
mkdir -p .device/whl
rm -f .device/whl/*.whl .device/init.safetensors .device/init.safetensors.record.json
if [ -n "$init_run" ]; then  # fails here, before any download, if RUN holds no weights
  $B/mvic-train --run "$init_run" --export .device/init.safetensors --fp16-kernels >/dev/null
  rm -f .device/init.safetensors.record.json
  echo "device-prep: .device/init.safetensors from $init_run (pass it to device-train.sh as INIT)"
fi
plat=(--platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
$B/python -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${plat[@]}" -d .device/whl compressai==1.2.8
$B/python -m pip download -q --no-deps --only-binary=:all: -d .device/whl pytorch-msssim==1.0.0
# the gRPC side (server tests, mvic-server on the GPU): the versions this checkout's stubs were generated for
if [ -z "$init_run" ]; then  # with --init the weights take their room (grpcio alone is 7 MiB)
  grpc_pins=$($B/python -c "import importlib.metadata as m; print(' '.join(f'{p}=={m.version(p)}' for p in \
('grpcio', 'grpcio-health-checking', 'protobuf', 'prometheus-client')))")
  $B/python -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    "${plat[@]}" -d .device/whl $grpc_pins
fi
if [ ! -f .device/corpus/manifest.json ]; then
  rm -rf .device/corpus.tmp
  $B/mvic-corpus build -o .device/corpus.tmp --max-side 768 --quality 88 >/dev/null
  $B/python - .device/corpus.tmp <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])  # keep the train split only: the test split is never trained on, so it need not travel
manifest = json.loads((root / "manifest.json").read_text())
for photo in manifest["photos"]:
    if photo["split"] != "train":
        (root / photo["file"]).unlink()
manifest["photos"] = [p for p in manifest["photos"] if p["split"] == "train"]
(root / "manifest.json").write_text(json.dumps(manifest, indent=1))
EOF
  mv .device/corpus.tmp .device/corpus
fi
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -n 1 | cut -f1)
carried=$(du -sb .device | cut -f1)
total=$(( (tree + carried) >> 20 ))
echo "device-prep: tree $((tree >> 20)) MiB + .device $((carried >> 20)) MiB = ${total} MiB (limit ${limit_mib})"
ls -1 .device/whl
echo "corpus: $(ls .device/corpus/photos | wc -l) photos"
if [ "$total" -gt "$limit_mib" ]; then
  echo "device-prep: over ${limit_mib} MiB; cut the corpus (--max-side) or drop files from the tree" >&2
  exit 1
fi
