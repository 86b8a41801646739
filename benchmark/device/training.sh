#!/bin/sh
# shellcheck disable=SC2086 # $q and $SHAPE are lists of words
# What more training steps buy the demo recipe, on a lent GPU in one short run.
#
#   sh benchmark/device/training.sh RESULTS_DIR [WHEELS_DIR]
#
# Phantoms of the demo's kind: 80 training cases from 8 seeds in parallel (so they are
# not the demo's 80, only of their kind), and exactly the demo's 64 held-out (seed 1000)
# and 32 tuning (seed 3000) phantoms. The demo's plan. One calibration epoch measures
# the steps per second; then two runs of the demo recipe (`training/demo.py` FULL:
# per-sample Dice, half the samples on a lesion, light augmentation, lr 2e-3, cosine
# over 70 epochs, 8 validation cases) train side by side on the one GPU, with the
# GPU's own defaults (fp16 autocast, grouped dynamic convolution):
#   base: the CPU demo's 70 x 250 steps;
#   long: 70 epochs of as many steps as MINUTES allow beside the base run.
# Each is exported (last checkpoint), its post-processing chosen on the tuning phantoms
# (both tile steps, a 27-triple grid around what the CPU runs chose, not the demo's 144),
# and the held-out phantoms predicted by the container's CLI and scored (evaluation,
# benchmark.training.lesions). RESULTS_DIR gets training.jsonl (one line per run), log.txt and
# training.tar.gz (metrics, logs, threshold tables, scores).
# DEVICE (default cuda) and the sizes below shrink it for a dry run on the CPU.
set -u
DEVICE="${DEVICE:-cuda}"
CHUNKS="${CHUNKS:-8}"             # training phantoms: CHUNKS seeds x PER_CHUNK cases
PER_CHUNK="${PER_CHUNK:-10}"
TEST_N="${TEST_N:-64}"
TUNE_N="${TUNE_N:-32}"
SHAPE="${SHAPE:-512 512 48}"
EPOCHS="${EPOCHS:-70}"
ITERATIONS="${ITERATIONS:-250}"   # the base run's steps per epoch (the CPU demo's)
CAL_ITERATIONS="${CAL_ITERATIONS:-400}"
MINUTES="${MINUTES:-3.5}"         # training wall clock for the two runs together
WORKERS="${WORKERS:-7}"           # data-loading processes per run
RES="${1:?results folder}"
WHEELS="${2:-}"
WORK="${TMPDIR:-/tmp}/flare-training"
# shellcheck source=benchmark/device/env.sh
. "$(dirname "$0")/env.sh"
q="--quiet --disable-progress-bar"
stamp() { echo "=== $* ($(date -u +%H:%M:%S))"; }

stamp machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
python3 -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))"

stamp phantoms
python3 -m training.phantoms -o "$WORK/test" -n "$TEST_N" --shape $SHAPE --seed 1000 $q &
python3 -m training.phantoms -o "$WORK/tune" -n "$TUNE_N" --shape $SHAPE --seed 3000 $q &
i=0
while [ "$i" -lt "$CHUNKS" ]; do
    python3 -m training.phantoms -o "$WORK/data$i" -n "$PER_CHUNK" --shape $SHAPE --seed "$i" \
        --prefix "c$i" $q &
    pids="${pids:-} $!"
    i=$((i + 1))
done
wait $pids  # the held-out and tuning phantoms go on while the training ones are prepared
stamp plan and cache
python3 -m training plan -d "$WORK/data0" -o "$WORK/plans.json" --preset tiny --patch 64 64 \
    --batch-size 16 --target-spacing 2 2 3 --smoothing $q || exit 1
i=0
pids=""
while [ "$i" -lt "$CHUNKS" ]; do
    python3 -m training preprocess -d "$WORK/data$i" -p "$WORK/plans.json" \
        -o "$WORK/cache" --workers 1 $q &
    pids="$pids $!"
    i=$((i + 1))
done
wait $pids

train() {  # train NAME ITERATIONS MINUTES ARGS...
    name=$1 iterations=$2 minutes=$3
    shift 3
    python3 -m training train -p "$WORK/plans.json" -c "$WORK/cache" -o "$WORK/run_$name" \
        --iterations-per-epoch "$iterations" --anneal-epochs 5 --lr 2e-3 \
        --augmentation light --oversample 0.5 --dice sample --device "$DEVICE" \
        --time-limit-min "$minutes" "$@" $q >"$WORK/train_$name.log" 2>&1
}
stamp calibration
train calibration "$CAL_ITERATIONS" 0 --epochs 1 --val-fraction 0 --num-workers $((2 * WORKERS))
# steps/s of one run alone, worker start-up included; the two runs share the GPU
LONG=$(python3 - "$WORK" "$CAL_ITERATIONS" "$EPOCHS" "$ITERATIONS" "$MINUTES" <<'EOF'
import csv, sys
work, cal, epochs, iterations, minutes = sys.argv[1], *map(float, sys.argv[2:])
with open(f"{work}/run_calibration/metrics.csv") as f:
    rate = cal / float(next(csv.DictReader(f))["seconds"])
budget = 0.85 * minutes * 60                      # seconds; a margin for validation
base_alone = epochs * iterations / (rate / 2)     # seconds the base run needs beside the long
shared = min(base_alone, budget)
steps = rate / 2 * shared + rate * (budget - shared)
print(f"{rate:.1f} {max(int(iterations), int(steps / epochs))}")
EOF
)
RATE=${LONG% *}
LONG=${LONG#* }
echo "calibration: $RATE steps/s alone; long run: $EPOCHS x $LONG steps"
stamp train base and long
common="--epochs $EPOCHS --val-fraction 0.1 --val-every 1000 --num-workers $WORKERS"
if command -v nvidia-smi >/dev/null; then  # GPU load: is the GPU or the CPU the bound?
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader \
        -l 10 >"$WORK/gpu_load.csv" &
    monitor=$!
fi
train base "$ITERATIONS" "$MINUTES" $common &
base=$!
train long "$LONG" "$MINUTES" $common &
wait "$base" "$!"
[ -n "${monitor:-}" ] && kill "$monitor"
cat "$WORK/gpu_load.csv" 2>/dev/null
tail -n 3 "$WORK/train_base.log" "$WORK/train_long.log"

stamp score
cases=$(python3 -c "import json, sys; print(' '.join(e['id'] for e in \
json.load(open(sys.argv[1]))['training']))" "$WORK/tune/dataset.json")
for name in base long; do
    (
        python3 -m training export -r "$WORK/run_$name" -o "$WORK/weights_$name" \
            --checkpoint last $q &&
        python3 -m training thresholds -w "$WORK/weights_$name" -d "$WORK/tune" \
            --cases $cases --device "$DEVICE" --decision-thresholds 0.3 0.4 0.5 \
            --volumes 200 400 800 --confidences 0.7 0.8 0.9 $q >"$WORK/thresholds_$name.txt" &&
        python3 -m inference -i "$WORK/test/imagesTr" -o "$WORK/pred_$name" \
            --weights "$WORK/weights_$name" --device "$DEVICE" $q &&
        python3 -m evaluation --pred "$WORK/pred_$name" --gt "$WORK/test/labelsTr" \
            --csv "$WORK/scores_$name.csv" >/dev/null &&
        python3 -m benchmark.training.lesions --pred "$WORK/pred_$name" --gt "$WORK/test/labelsTr" \
            --dataset-json "$WORK/test/dataset.json" >"$WORK/lesions_$name.txt"
    ) >"$WORK/score_$name.log" 2>&1 &
done
wait
for name in base long; do
    tail -n 2 "$WORK/score_$name.log" "$WORK/thresholds_$name.txt"
    python3 - "$name" "$WORK" <<'EOF' | tee -a "$RES/training.jsonl"
import csv, json, sys
from pathlib import Path
from training.demo import summarise_scores
name, work = sys.argv[1], Path(sys.argv[2])
with open(work / f"run_{name}" / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
s = summarise_scores(work / f"scores_{name}.csv", work / "test")
s.update(run=name, epochs=len(rows), train_seconds=sum(float(r["seconds"]) for r in rows),
         last_metrics=rows[-1])
print(json.dumps(s))
EOF
done
stamp pack
# shellcheck disable=SC2046 # the names are this script's own, without spaces
tar -czf "$RES/training.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.onnx' \
    $(cd "$WORK" && ls -d run_* train_*.log score_*.log thresholds_*.txt scores_*.csv \
      lesions_*.txt gpu_load.csv plans.json weights_*/plans.json 2>/dev/null)
stamp finished
