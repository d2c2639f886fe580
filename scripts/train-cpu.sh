#!/usr/bin/env bash
# The CPU-only recipe of the *-cpu-v1 weights (issue 5; both retired: the fast one by ldmic-fast-lite-v2 ... -v4, the
# autoregressive one by ldmic-lite-v2, from scripts/campaign.sh refresh-ar); the standing campaign is
# scripts/campaign.sh. One command on a plain two-core machine:
#   scripts/train-cpu.sh [HOURS]      # default 5 h: 70 % ldmic-fast-lite, then 30 % ldmic-lite started from it
# Builds the data with the project's own tools (mvic-corpus, mvic-scene), trains configs/lite-cpu.yaml and
# configs/lite-cpu-ar.yaml (both resume where a previous call stopped), exports both into shared/codec/weights/,
# evaluates them with mvic-eval on the held-out sets (synthetic seed 1000, stereo-photos) and publishes the figures
# into records.json and the README (mvic-publish). The GPU recipe is scripts/device-train.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
B=.venv/bin
hours=${1:-5}
W=shared/codec/weights
[ -f corpus/manifest.json ] || $B/mvic-corpus build -o corpus
[ -f evaldata/manifest.json ] || $B/python -m mvic.tools.evaluation.stereo_photos build -o evaldata
for s in 0 1 2 3; do  # 4 seeded plazas x 12 timestamps x 7 cameras, scikit-image textures (evaluation: seed 1000)
  [ -d "data/scenes/s$s" ] || $B/mvic-scene -o "data/scenes/s$s" --frames 12 --cameras 7 --size 288x512 --seed "$s"
done
minutes() { $B/python -c "print(round($hours * 60 * $1, 1))"; }
$B/mvic-train --config configs/lite-cpu.yaml --run runs/lite-cpu --max-minutes "$(minutes 0.7)" --quiet
$B/mvic-train --run runs/lite-cpu --export $W/ldmic-fast-lite-cpu-v1.safetensors --fp16-kernels
$B/mvic-train --config configs/lite-cpu-ar.yaml --run runs/lite-cpu-ar --max-minutes "$(minutes 0.3)" --quiet
$B/mvic-train --run runs/lite-cpu-ar --export $W/ldmic-lite-cpu-v1.safetensors --fp16-kernels
for name in ldmic-fast-lite-cpu-v1 ldmic-lite-cpu-v1; do
  $B/mvic-eval --weights $W/$name.safetensors --data synthetic --groups 2 --cameras 3 --size 270x480 --seed 1000 \
      -o "results/$name/synthetic"
  $B/mvic-eval --weights $W/$name.safetensors --data stereo-photos --groups 5 -o "results/$name/stereo-photos"
  $B/mvic-publish --weights $W/$name.safetensors --results "synthetic=results/$name/synthetic" \
      "stereo-photos=results/$name/stereo-photos" --readme README.md --plot "docs/rd-$name.png"
done
