#!/usr/bin/env bash
# Train shipped models on a GPU machine with no network (torch present, compressai not): the recipe of issue 5.
#   scripts/device-wheels.sh                       # here: MVIC + compressai + pytorch-msssim wheels into .whl/
#   mvic-corpus build -o corpus                    # here: the real-photo corpus (carried along)
#   scripts/device-train.sh MINUTES CONFIG...      # there: install the wheels, render the synthetic scenes,
#                                                  # start one background training per config (runs/<config>/)
#   scripts/device-train.sh --status [OUT]         # there: progress; with OUT, the weights as <=16 MiB pieces
# MVIC_DEVICE=cpu runs the same recipe on a CPU (a dry run of the whole flow).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl 2>/dev/null || true
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
if [ "${1:-}" = "--status" ]; then
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null || true
  for run in runs/*/; do
    name=$(basename "$run")
    echo "== $name: $(tail -n 1 "$run/log.csv" 2>/dev/null)"
    tail -n 3 "runs/$name.log" 2>/dev/null | tr '\r' '\n' | tail -n 2
    if [ -n "${2:-}" ] && [ -f "$run/checkpoint.json" ]; then
      python3 -m mvic.shared.training.train --run "$run" --export-pieces "$2/$name" >/dev/null
      cp "$run/log.csv" "$2/$name/log.csv"
    fi
  done
  exit 0
fi
minutes=$1; shift
mkdir -p data/scenes runs
textures=(); [ -d corpus/photos ] && textures=(--textures corpus/photos)  # real photos on the scene's surfaces
pids=()
for s in $(seq 0 15); do  # 16 seeded plazas x 24 timestamps x 7 cameras, rendered in parallel
  [ -d "data/scenes/s$s" ] && continue
  ( python3 -m mvic.shared.scene -o "data/scenes/.s$s" --frames 24 --cameras 7 --size 288x512 --seed "$s" \
      "${textures[@]}" >/dev/null && mv "data/scenes/.s$s" "data/scenes/s$s" ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "device-train: rendering the synthetic scenes failed (see above)" >&2; exit 1; }
done
for cfg in "$@"; do
  name=$(basename "$cfg" .yaml)
  setsid nohup python3 -m mvic.shared.training.train --config "$cfg" --run "runs/$name" --device "${MVIC_DEVICE:-cuda}" \
    --max-minutes "$minutes" >"runs/$name.log" 2>&1 < /dev/null &
  echo "started $name (log runs/$name.log)"
done
