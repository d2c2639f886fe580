#!/usr/bin/env bash
# The standing CPU training campaign (issue 10): resume it at the start of every session, then work on.
#   scripts/campaign.sh start [INIT]   # set up, then train in the background at nice 19 (resumes the run if any)
#   scripts/campaign.sh status         # running or not, the last log rows, steps and CPU-hours so far
#   scripts/campaign.sh stop           # stop it (it checkpoints every 5 minutes; a stop loses at most that)
# Everything lives outside the work tree, under $MVIC_RUNS (default /var/tmp/mvic-runs):
#   data/corpus, data/scenes/s*   the training data, built once with the project's own tools
#   fast-lite/                    the run folder (checkpoint with the weights' average, log.csv)
#   campaign.log, campaign.pid    the process's output and id
# A new run (no run folder) starts from INIT if given (weights file, pieces folder or run folder), else from the
# newest pieces folder under $MVIC_RUNS/incoming/ (weights brought back from a GPU window), else from the shipped
# weights of ldmic-fast-lite.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${MVIC_RUNS:-/var/tmp/mvic-runs}
cfg=$repo/configs/campaign-fast-lite.yaml
run=$runs/fast-lite
B=$repo/.venv/bin
mkdir -p "$runs"

running() { [ -f "$runs/campaign.pid" ] && kill -0 "$(cat "$runs/campaign.pid")" 2>/dev/null; }

case "${1:-status}" in
  status)
    if running; then echo "campaign: running (pid $(cat "$runs/campaign.pid"))"; else echo "campaign: not running"; fi
    if [ -f "$run/log.csv" ]; then
      tail -n 3 "$run/log.csv"
      awk -F, 'NR > 1 { steps = $1 } END { print "steps logged: " steps }' "$run/log.csv"
      # wall hours trained: log.csv's seconds restart at every process start, so sum each segment's last value
      awk -F, 'NR > 1 { if ($8 + 0 < last) total += last; last = $8 + 0 } END { printf "hours trained: %.2f\n", (total + last) / 3600 }' "$run/log.csv"
    fi
    exit 0 ;;
  stop)
    if running; then kill "$(cat "$runs/campaign.pid")"; echo "campaign: stopped"; else echo "campaign: not running"; fi
    exit 0 ;;
  start) ;;
  *) echo "usage: campaign.sh start [INIT] | status | stop" >&2; exit 2 ;;
esac

if running; then echo "campaign: already running (pid $(cat "$runs/campaign.pid"))"; exit 0; fi
bash "$repo/scripts/setup.sh"
mkdir -p "$runs/data/scenes"
[ -f "$runs/data/corpus/manifest.json" ] || "$B/mvic-corpus" build -o "$runs/data/corpus"
for s in 0 1 2 3 4 5 6 7; do  # 8 plazas x 12 timestamps x 7 cameras, textured with the corpus (evaluation: seed 1000)
  [ -d "$runs/data/scenes/s$s" ] && continue
  "$B/mvic-scene" -o "$runs/data/scenes/.s$s" --frames 12 --cameras 7 --size 288x512 --seed "$s" \
    --textures "$runs/data/corpus/photos" >/dev/null
  mv "$runs/data/scenes/.s$s" "$runs/data/scenes/s$s"
done
init=()
if [ ! -f "$run/checkpoint.json" ]; then
  source=${2:-}
  if [ -z "$source" ]; then
    newest=$(ls -1dt "$runs"/incoming/*/ 2>/dev/null | head -n 1 || true)
    source=${newest:-$("$B/python" -c "from mvic.shared.codec.registry import default_weights as d; \
print(d('ldmic-fast-lite').path)")}
  fi
  init=(--init-from "$source")
  echo "campaign: new run from $source"
fi
cd "$runs"
nohup nice -n 19 "$B/mvic-train" --config "$cfg" --run "$run" --quiet "${init[@]}" \
  >> "$runs/campaign.log" 2>&1 < /dev/null &
echo $! > "$runs/campaign.pid"
echo "campaign: started (pid $!), log $runs/campaign.log, run $run"
