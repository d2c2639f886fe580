#!/usr/bin/env bash
# One GPU window, one foreground command (issue 11), on a machine whose python3 has torch but not compressai and
# that has no network. Prepare here with scripts/device-prep.sh, then call the device tool with
#   command: bash scripts/device-train.sh 570 configs/device-fast-lite.yaml     carry: [".device"]   timeout_s: 600
#
#   scripts/device-train.sh SECONDS CONFIG
# Within SECONDS of wall time, in this order:
#   1. install .device/whl into /tmp/site (--upgrade; any failure stops here) and import MVIC from the work tree;
#   2. start the CPU-encode -> CUDA-decode determinism test in the background (4 CPU threads, 240 s at most) and
#      render the synthetic plazas (one process per plaza);
#   3. train CONFIG in the foreground until a deadline that leaves time for 4-5 (--stop-at; checkpoints every few
#      minutes; the lr schedule is scaled to the time left); a failure before the first checkpoint (bf16, say)
#      retries the rest of the window in float32;
#   4. bring the weights back as <= 16 MiB pieces with the run's log.csv;
#   5. the GPU decoding benchmark (benchmarks/gpu_decode.py) with what time is left.
# Everything lands in $OUT (./device-out without it) as at most 8 files:
#   NAME/piece-*.safetensors, NAME/pieces.json, NAME/log.csv, device.log, determinism.txt, bench.txt
# MVIC_DEVICE=cpu runs the same command on a CPU (the dry run of the flow; the GPU-only steps say they are skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
budget=${1:?usage: device-train.sh SECONDS CONFIG [INIT]}
cfg=${2:?usage: device-train.sh SECONDS CONFIG [INIT]}
init=(); [ -z "${3:-}" ] || init=(--init-from "$3")  # weights to start a new run from, instead of the config's
name=$(basename "$cfg" .yaml)
device=${MVIC_DEVICE:-cuda}
out=${OUT:-$PWD/device-out}
mkdir -p "$out"
log="$out/device.log"
say() { echo "[device-train +$(( $(date +%s) - start ))s] $*" | tee -a "$log"; }
left() { echo $(( budget - ($(date +%s) - start) )); }
reserve_export=25
reserve_bench=${MVIC_BENCH_SECONDS:-110}

wheels=${MVIC_DEVICE_WHEELS:-.device/whl}  # "none": the python3 here has them (a dry run in .venv)
if [ "$wheels" != none ]; then
  say "installing $(ls "$wheels" | tr '\n' ' ')"
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$wheels"/*.whl 2>&1 \
    | tee -a "$log"
fi
mkdir -p /tmp/src/mvic  # MVIC from the work tree (its weights travel once): the namespace package mvic.*,
# every top-level part that pyproject.toml maps (mvic.shared -> shared/, ..., mvic.tools -> tools/)
for part in $(sed -n 's/^"mvic\.\([a-z_]*\)" = "\([a-z_]*\)"$/\2/p' pyproject.toml); do
  ln -sfn "$PWD/$part" "/tmp/src/mvic/$part"
done
export PYTHONPATH=/tmp/src:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import compressai, pytorch_msssim, torch, mvic.tools.training.train as t; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'compressai', compressai.__version__)" \
  2>&1 | tee -a "$log"
[ "$device" = cpu ] || python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
  || { say "CUDA is not available here; set MVIC_DEVICE=cpu for a dry run"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee -a "$log" || true

scenes=${MVIC_SCENES:-14}
grep -q 'data/scenes' "$cfg" || scenes=0  # a photos-only config renders nothing
frames=${MVIC_SCENE_FRAMES:-12}
say "rendering $scenes synthetic plazas x $frames timestamps x 7 cameras in the background"
mkdir -p data/scenes
render_pids=()
for s in $(seq 0 $((scenes - 1))); do
  [ -d "data/scenes/s$s" ] && continue
  ( nice -n 5 python3 -m mvic.shared.scene -o "data/scenes/.s$s" --frames "$frames" --cameras 7 --size 288x512 \
      --seed "$s" --textures .device/corpus/photos >/dev/null && mv "data/scenes/.s$s" "data/scenes/s$s" ) &
  render_pids+=($!)
done

det_pid=
if [ "$device" = cpu ] || [ "${MVIC_DETERMINISM:-1}" = 0 ]; then
  echo "skipped (dry run on a CPU, or MVIC_DETERMINISM=0)" > "$out/determinism.txt"
else  # beside the rendering and the training, on 4 CPU threads, so that it costs the training little
  say "determinism: CPU encode -> CUDA decode (pytest -m gpu), in the background"
  OMP_NUM_THREADS=4 timeout 240 nice -n 10 python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/shared/codec/test_determinism.py > "$out/determinism.txt" 2>&1 &
  det_pid=$!
fi
for pid in "${render_pids[@]}"; do
  wait "$pid" || { say "rendering the synthetic plazas failed"; exit 1; }
done
say "scenes ready: $(ls data/scenes | wc -l)"

run=/tmp/runs/$name
train_until() {  # CONFIG: train in the foreground until stop_at; the hard stop only ends a run that overran it
  # (its TERM lets the step end with a checkpoint; KILL 20 s later if that hangs)
  set +e
  timeout -k 20 $(( stop_at - $(date +%s) + reserve_bench / 2 )) python3 -m mvic.tools.training.train --config "$1" \
    --run "$run" --device "$device" --stop-at "$stop_at" --quiet "${init[@]}" 2>&1 | tail -n 20 | tee -a "$log"
  status=${PIPESTATUS[0]}
  set -e
  say "training ended (exit $status): $(tail -n 1 "$run/log.csv" 2>/dev/null)"
}
stop_at=$(( $(date +%s) + $(left) - reserve_export - reserve_bench ))
say "training $name on $device until +$(( stop_at - start ))s (run $run)"
train_until "$cfg"
if [ "$status" != 0 ] && [ ! -f "$run/checkpoint.json" ] && [ $(( stop_at - $(date +%s) )) -gt 90 ]; then
  # a failure before the first checkpoint (e.g. in bf16 autocast): the rest of the window in float32
  python3 -c "import sys, yaml; c = yaml.safe_load(open(sys.argv[1])); c['optim']['amp'] = 'off'; \
yaml.safe_dump(c, open(sys.argv[2], 'w'))" "$cfg" /tmp/fp32.yaml
  rm -rf "$run"
  say "retrying in float32 (optim.amp: off)"
  train_until /tmp/fp32.yaml
fi
if [ -f "$run/checkpoint.json" ]; then
  python3 -m mvic.tools.training.train --run "$run" --export-pieces "$out/$name" | tee -a "$log"
  cp "$run/log.csv" "$out/$name/log.csv"
else
  say "no checkpoint was written: nothing to bring back"
fi

[ -z "$det_pid" ] || wait "$det_pid" || true
say "determinism: $(tail -n 1 "$out/determinism.txt")"
if [ "$device" = cpu ] || [ "$reserve_bench" -lt 30 ]; then
  echo "skipped (dry run on a CPU, or MVIC_BENCH_SECONDS < 30)" > "$out/bench.txt"
elif [ "$(left)" -gt 20 ]; then
  say "benchmark: gpu_decode.py for $(( $(left) - 5 )) s at most"
  timeout $(( $(left) - 5 )) python3 benchmarks/gpu_decode.py > "$out/bench.txt" 2>&1 || true
fi
say "done; files: $(cd "$out" && find . -type f | sort | tr '\n' ' ')"
# success: training ended by itself, or the hard stop (timeout: 124) ended a run that overran stop_at while
# finishing (its last checkpoint write, interpreter exit on a busy CPU) and that checkpoint's pieces came back
[ "$status" = 0 ] || { [ "$status" = 124 ] && [ -f "$out/$name/pieces.json" ]; }
