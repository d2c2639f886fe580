#!/usr/bin/env bash
# The standing CPU training campaign (issue 10): resume it at the start of every session, then work on.
#   scripts/campaign.sh start [INIT]   # set up, then train in the background at nice 19 (resumes the run if any)
#   scripts/campaign.sh status         # running or not, the last log rows, steps and CPU-hours so far
#   scripts/campaign.sh stop           # stop it: it ends its step and checkpoints (killed harder, it loses at most
#                                      # the 5 minutes since its last checkpoint)
#   scripts/campaign.sh export         # the run's weights' average -> exports/, mvic-eval on both held-out sets
#                                      # (MVIC only; the classical codecs are coded once and reused), a row of the
#                                      # learning curve (learning-curve.csv / .png); copy both to docs/ to publish
#   scripts/campaign.sh anneal STEPS   # export, but from a branch that first trains STEPS more at lr 1e-5
#                                      # (anneal-step<S>/; the campaign pauses meanwhile and resumes after)
#   scripts/campaign.sh rebase INIT STEPS HOURS  # stop, keep the run folder as fast-lite-until-step<S>/, and
#                                      # start a new run from INIT (e.g. a GPU window's pieces), whose own lineage
#                                      # is STEPS steps and HOURS hours of training (the curve's x for its exports)
#   scripts/campaign.sh refresh-ar MINUTES [FAST [AR]]  # the autoregressive ldmic-lite from fast weights (default:
#                                      # the shipped ones): MINUTES of configs/refresh-lite-ar.yaml at nice 19 (or
#                                      # $MVIC_REFRESH_NICE, e.g. 5 to come before the campaign) in
#                                      # lite-ar-from-<FAST>/ (resumed), export, mvic-eval, BD against FAST; with AR
#                                      # (older AR weights), the new run starts from FAST with AR's entropy model
#                                      # (python -m mvic.tools.training.graft); FAST with a refinement head
#                                      # hands it on (ldmic-lite-r)
#   scripts/campaign.sh head MINUTES [FAST [AR]]  # the decoder-only refinement head (ldmic-fast-lite-r) on FAST's
#                                      # frozen transforms and bits (default: the shipped fast weights; a file with a
#                                      # head goes on training it): MINUTES of configs/refine-head-fast-lite.yaml at nice
#                                      # 19 (or $MVIC_HEAD_NICE) in head-on-<FAST>/ (resumed), export, mvic-eval, BD
#                                      # against FAST; with AR (autoregressive weights of FAST's transforms) also AR with
#                                      # that head (ldmic-lite-r, a record beside it), measured the same way
# Everything lives outside the work tree, under $MVIC_RUNS (default /var/tmp/mvic-runs):
#   data/corpus, data/scenes/s*   the training data, built once with the project's own tools
#   fast-lite/                    the run folder (checkpoint with the weights' average, log.csv)
#   fast-lite.lineage             "STEPS HOURS" of training before the run started (written by rebase)
#   campaign.log, campaign.pid    the process's output and id
#   exports/, eval/               exported weights and their mvic-eval results
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
# stop the running campaign and wait until it has ended its step and written its checkpoint
stop_and_wait() {
  local pid
  pid=$(cat "$runs/campaign.pid")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 2; done
}
# wall hours trained: log.csv's seconds restart at every process start, so sum each segment's last value
hours_trained() {
  awk -F, 'NR > 1 { if ($8 + 0 < last) total += last; last = $8 + 0 } END { printf "%.3f", (total + last) / 3600 }' \
    "${1:-$run}/log.csv"
}
# the step of run folder $1's checkpoint
checkpoint_step() {
  "$B/python" -c "import json, sys; print(json.load(open(sys.argv[1]))['step'])" "$1/checkpoint.json"
}

# "STEPS HOURS" of training before the run: fast-lite.lineage (rebase writes it), else ldmic-fast-lite-v3's 12347
# steps and 5.06 h (4.93 h to v2, then 0.13 h on one H200), where the run of 2026-11-30 started (v4 is its step 2268)
lineage() {
  if [ -f "$run.lineage" ]; then cat "$run.lineage"; else echo "12347 5.06"; fi
}

# the shipped weights file of the default model (the fast one: ldmic-fast-lite's transforms, with or without a head)
shipped_fast() {
  "$B/python" -c "from mvic.shared.codec.registry import default_weights as d; from mvic.shared.model_table import \
DEFAULT_MODEL as m; print(d(m).path)"
}

# exit unless the training data is there (start builds it)
need_data() {
  [ -f "$runs/data/corpus/manifest.json" ] && return 0
  echo "campaign: no training data under $runs/data; scripts/campaign.sh start builds it (then stop it if need be)" >&2
  exit 1
}

# mvic-eval of exports/$3.safetensors (measured afresh) and of weights file $2 (eval/$1-<set>, once) on both sets,
# then BD-rate of the first against the second on each
measure_against() {
  rm -rf "$runs/eval/$3-synthetic" "$runs/eval/$3-stereo-photos"
  evaluate "$1" "$2"
  evaluate "$3" "$runs/exports/$3.safetensors"
  local ds
  for ds in synthetic stereo-photos; do
    "$B/python" -m mvic.tools.evaluation.compare --anchor "$runs/eval/$1-$ds" --test "$runs/eval/$3-$ds"
  done
}

# whether weights file $1 holds a decoder-only refinement head (ldmic-fast-lite-r, ldmic-lite-r)
has_head() {
  "$B/python" -c "import sys; from safetensors import safe_open; f = safe_open(sys.argv[1], 'pt'); \
sys.exit(0 if any(k.startswith('refine_head.') for k in f.keys()) else 1)" "$1"
}

# mvic-eval of weights file $2 on both held-out sets into eval/$1-<set>; the classical codecs are coded once; the
# synthetic rig is calibrated (--rig scene: its server would read the cameras' calibration)
evaluate() {
  [ -f "$runs/data/evaldata/manifest.json" ] || "$B/python" -m mvic.tools.evaluation.stereo_photos build -o "$runs/data/evaldata"
  local synth=(--data synthetic --groups 2 --cameras 3 --size 270x480 --seed 1000 --rig scene)
  local real=(--data stereo-photos --root "$runs/data/evaldata" --groups 5)
  local ds args
  for ds in synthetic stereo-photos; do
    if [ "$ds" = synthetic ]; then args=("${synth[@]}"); else args=("${real[@]}"); fi
    [ -f "$runs/eval/baselines-$ds/results.json" ] || "$B/mvic-eval" --weights "$2" "${args[@]}" \
      --baselines x265-intra-444 jpeg webp -o "$runs/eval/baselines-$ds"
    [ -f "$runs/eval/$1-$ds/results.json" ] || "$B/mvic-eval" --weights "$2" "${args[@]}" --baselines -o "$runs/eval/$1-$ds"
  done
}

# export run folder $2 as $1, mvic-eval on both sets, a row of the learning curve at campaign step $3 and
# campaign hours $4 (the lineage before the campaign is added here)
publish() {
  local base_steps base_hours
  read -r base_steps base_hours < <(lineage)
  mkdir -p "$runs/exports" "$runs/eval"
  "$B/mvic-train" --run "$2" --export "$runs/exports/$1.safetensors" --fp16-kernels
  rm -rf "$runs/eval/$1-synthetic" "$runs/eval/$1-stereo-photos"  # a re-export at the same step
  evaluate "$1" "$runs/exports/$1.safetensors"
  "$B/python" -m mvic.tools.evaluation.curve --csv "$runs/learning-curve.csv" --plot "$runs/learning-curve.png" \
    --add "$1" --steps $((base_steps + $3)) --hours "$("$B/python" -c "print(round($base_hours + $4, 3))")" \
    --results "synthetic=$runs/eval/$1-synthetic" "stereo-photos=$runs/eval/$1-stereo-photos" \
    --baselines-from "synthetic=$runs/eval/baselines-synthetic" "stereo-photos=$runs/eval/baselines-stereo-photos"
}

case "${1:-status}" in
  status)
    if running; then echo "campaign: running (pid $(cat "$runs/campaign.pid"))"; else echo "campaign: not running"; fi
    if [ -f "$run/log.csv" ]; then
      tail -n 3 "$run/log.csv"
      awk -F, 'NR > 1 { steps = $1 } END { print "steps logged: " steps }' "$run/log.csv"
      printf "hours trained: %.2f\n" "$(hours_trained)"
      read -r base_steps base_hours < <(lineage)
      echo "lineage before this run: $base_steps steps, $base_hours h"
    fi
    exit 0 ;;
  rebase)
    usage="usage: campaign.sh rebase INIT STEPS HOURS (weights to start from, and their lineage's steps and hours)"
    [ $# -eq 4 ] || { echo "campaign: $usage" >&2; exit 2; }
    [[ $3 =~ ^[0-9]+$ && $4 =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "campaign: $usage" >&2; exit 2; }
    [ -e "$2" ] || { echo "campaign: rebase: $2 does not exist (a weights file, pieces folder or run folder)" >&2; exit 1; }
    init=$(realpath "$2")
    if running; then stop_and_wait; fi
    if [ -f "$run/checkpoint.json" ]; then
      old=$run-until-step$(checkpoint_step "$run")
      [ ! -e "$old" ] || { echo "campaign: rebase: $old exists already; move it away first" >&2; exit 1; }
      mv "$run" "$old"
      [ ! -f "$run.lineage" ] || mv "$run.lineage" "$old.lineage"
      echo "campaign: the old run is now $old"
    fi
    echo "$3 $4" > "$run.lineage"
    exec bash "$repo/scripts/campaign.sh" start "$init" ;;
  stop)
    if running; then kill "$(cat "$runs/campaign.pid")"; echo "campaign: stopped"; else echo "campaign: not running"; fi
    exit 0 ;;
  export)
    [ -f "$run/checkpoint.json" ] || { echo "campaign: no checkpoint in $run yet" >&2; exit 1; }
    step=$(checkpoint_step "$run")
    publish "campaign-step$step" "$run" "$step" "$(hours_trained)"
    exit 0 ;;
  anneal)
    steps=${2:?usage: campaign.sh anneal STEPS}
    [[ $steps =~ ^[1-9][0-9]*$ ]] || { echo "campaign: anneal STEPS must be a positive whole number" >&2; exit 2; }
    [ -f "$run/checkpoint.json" ] || { echo "campaign: no checkpoint in $run yet" >&2; exit 1; }
    # The campaign trains at a constant lr, so that it can go on for ever; the weights it exports come from a
    # branch that starts from its average and trains STEPS more at $MVIC_ANNEAL_LR (1e-5) with a fresh optimiser
    # (the warmup-stable-decay schedule). The campaign pauses meanwhile (both want both cores) and resumes after;
    # the branch folder anneal-step<S>/ resumes too if this is stopped.
    if running; then
      stop_and_wait
      # the campaign resumes however the branch ends (done, failed or interrupted)
      trap 'trap - EXIT; bash "$repo/scripts/campaign.sh" start' EXIT
    fi
    step=$(checkpoint_step "$run")
    branch=$runs/anneal-step$step
    (cd "$runs" && nice -n "${MVIC_ANNEAL_NICE:-19}" "$B/mvic-train" --config "$cfg" --run "$branch" --init-from "$run" \
      --lr "${MVIC_ANNEAL_LR:-1e-5}" --max-steps "$steps" --quiet)
    done_steps=$(checkpoint_step "$branch")
    hours=$("$B/python" -c "print(round($(hours_trained) + $(hours_trained "$branch"), 3))")  # before it resumes
    if [ -n "$(trap -p EXIT)" ]; then trap - EXIT; bash "$repo/scripts/campaign.sh" start; fi
    publish "campaign-step$step-anneal$done_steps" "$branch" $((step + done_steps)) "$hours"
    exit 0 ;;
  refresh-ar)
    minutes=${2:?usage: campaign.sh refresh-ar MINUTES [FAST_WEIGHTS [AR_WEIGHTS]]}
    need_data
    fast=${3:-$(shipped_fast)}
    fast=$(realpath "$fast")
    stem=$(basename "$fast" .safetensors)
    name=lite-ar-from-$stem
    mkdir -p "$runs/exports" "$runs/eval"
    start=$fast
    if [ -n "${4:-}" ] && [ ! -f "$runs/$name/checkpoint.json" ]; then  # a new run: FAST with AR's entropy model
      start=$runs/exports/$stem-with-$(basename "$4" .safetensors)-entropy.safetensors
      "$B/python" -m mvic.tools.training.graft --base "$fast" --take "$4" -o "$start"
    fi
    (cd "$runs" && nice -n "${MVIC_REFRESH_NICE:-19}" "$B/mvic-train" --config "$repo/configs/refresh-lite-ar.yaml" \
      --run "$runs/$name" --init-from "$start" --max-minutes "$minutes" --quiet)
    "$B/mvic-train" --run "$runs/$name" --export "$runs/exports/$name.safetensors" --fp16-kernels
    if has_head "$fast"; then  # FAST decodes with a refinement head: the refreshed AR weights get the same one
      "$B/python" -m mvic.tools.training.graft --base "$runs/exports/$name.safetensors" --take "$fast" \
        --prefixes refine_head. --model ldmic-lite-r --record -o "$runs/exports/$name-r.safetensors"
      name=$name-r
    fi
    measure_against "$stem" "$fast" "$name"
    exit 0 ;;
  head)
    minutes=${2:?usage: campaign.sh head MINUTES [FAST_WEIGHTS [AR_WEIGHTS]]}
    need_data
    fast=$(realpath "${3:-$(shipped_fast)}")
    stem=$(basename "$fast" .safetensors)
    name=head-on-$stem
    mkdir -p "$runs/exports" "$runs/eval"
    (cd "$runs" && nice -n "${MVIC_HEAD_NICE:-19}" "$B/mvic-train" --config "$repo/configs/refine-head-fast-lite.yaml" \
      --run "$runs/$name" --init-from "$fast" --max-minutes "$minutes" --quiet)
    "$B/mvic-train" --run "$runs/$name" --export "$runs/exports/$name.safetensors" --fp16-kernels
    tested=("$name")
    if [ -n "${4:-}" ]; then  # the AR weights with this head: same transforms, their own entropy model
      ar_name=$(basename "$4" .safetensors)-with-$name
      "$B/python" -m mvic.tools.training.graft --base "$4" --take "$runs/exports/$name.safetensors" \
        --prefixes refine_head. --model ldmic-lite-r --record -o "$runs/exports/$ar_name.safetensors"
      tested+=("$ar_name")
    fi
    for t in "${tested[@]}"; do measure_against "$stem" "$fast" "$t"; done
    exit 0 ;;
  start) ;;
  *) echo "usage: campaign.sh start [INIT] | status | stop | export | anneal STEPS | rebase INIT STEPS HOURS" \
          "| refresh-ar MINUTES [FAST [AR]] | head MINUTES [FAST [AR]]" >&2
     exit 2 ;;
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
    source=${newest:-$(shipped_fast)}
  fi
  init=(--init-from "$source")
  echo "campaign: new run from $source"
fi
cd "$runs"
nohup nice -n 19 "$B/mvic-train" --config "$cfg" --run "$run" --quiet "${init[@]}" \
  >> "$runs/campaign.log" 2>&1 < /dev/null &
echo $! > "$runs/campaign.pid"
echo "campaign: started (pid $!), log $runs/campaign.log, run $run"
