#!/bin/sh
# shellcheck disable=SC2086 # $q, $SHAPE and the option lists are lists of words
# Training on a lent GPU in one call of at most about 9 minutes.
#
#   sh benchmark/device/training.sh OUT_DIR [WHEELS_DIR]
#
# WHEELS_DIR: cp312 wheels of what the machine lacks (SimpleITK, connected-components-3d,
# isal, segment-anything), installed into a private folder first (env.sh).
#
# 1. steps: benchmark.training.train_steps for paper (batch 4, 3x192x192), fast (its plan's
#    batch 4, 3x192x192) and tiny (the demo's batch 16, 64 px): the trainer's step before the
#    levers (fp16, torch's Adam, the loss level by level, augmentation that asks the device)
#    and with them (fused Adam, batched loss, bf16, the whole step as one CUDA graph, and for
#    fast torch.compile under the graph), paper's and fast's each with its loss over the
#    first CURVE steps against eager fp32; fast's compiled mode twice, with an empty and then
#    a filled compilation cache (does a second process start faster?). steps_<preset>.json.
# 2. data (at the lowest priority, while 1 runs: the step uses one core of 16): the demo's
#    phantoms (512x512x48): 80 training cases from 8 seeds in parallel (of
#    the demo's kind, not its cases), the demo's 64 held-out (seed 1000), 48 more held-out
#    (seed 2000) and 32 tuning (seed 3000) phantoms; the plan (fast, 3x192x192, batch 4,
#    2x2x3 mm, smoothing) and its cache.
# 3. train: fast for TRAIN_MIN minutes (a time budget the learning rate anneals over) with
#    the demo's recipe (per-sample Dice, half the samples on a lesion, light augmentation,
#    the coarsest output at weight 0, lr 2e-3) and the step mode of 1 with the most steps/s
#    whose loss curve stayed within noise of eager fp32 (the trainer's GPU defaults if none;
#    again with those if the chosen mode fails at once).
#    Why fast: it is the container's default network (on this GPU the tiny one is
#    launch-bound at inference, fast is not), it has the capacity the underfit tiny lacks,
#    and a fifth of paper's parameters (13.5M against 74M), so a budget of minutes gives it
#    more steps.
# 4. score: export (last checkpoint), post-processing chosen on the tuning phantoms (both
#    tile steps, a 27-triple grid), both held-out sets predicted through the container's CLI
#    with the new and the shipped weights, evaluation, lesion counts (benchmark.training.
#    lesions) and the paired comparison (benchmark.training.paired).
# OUT_DIR gets training.tar.gz (steps_*.json and their logs, summary.jsonl: one line per
# held-out set; the run's metrics and logs, thresholds, scores, lesion tables, paired
# comparisons, the new weights folder without its model files) and the new model.pt in
# parts under 16 MiB (model.pt.part-*: cat them in order); the log goes to stdout.
# Each stage has a time limit and the script goes on after a failure. SMALL=1 shrinks every
# stage for a dry run on the CPU (with DEVICE=cpu).
# Each stage runs as `sh training.sh --stage NAME` under `timeout`, which ends the stage's
# processes with it; the settings reach it through the environment.
set -u
DEVICE="${DEVICE:-cuda}"
WORK="${WORK:-${TMPDIR:-/tmp}/flare-training}"
RES="$WORK/results"
if [ "${SMALL:-0}" = 1 ]; then  # a dry run: every stage, tiny sizes
    CHUNKS=2 PER_CHUNK=2 TEST_N=3 TEST2_N=2 TUNE_N=2 SHAPE="96 96 16" TRAIN_MIN=0.3
    ITERATIONS=5 CURVE=20 STEPS=2 PATCH=64 TINY_BATCH=2 BATCH=2 GRID="0.4 / 0 / 0"
    LIMIT_TINY=300 LIMIT_PAPER=300 LIMIT_FAST=300 LIMIT_WARM=300 LIMIT_DATA=900
    LIMIT_TRAIN=200 LIMIT_SCORE=300 DATA_NICE=0
fi
CHUNKS="${CHUNKS:-8}"             # training phantoms: CHUNKS seeds x PER_CHUNK cases
PER_CHUNK="${PER_CHUNK:-10}"
TEST_N="${TEST_N:-64}"            # the demo's held-out set (seed 1000)
TEST2_N="${TEST2_N:-48}"          # the second held-out set (seed 2000)
TUNE_N="${TUNE_N:-32}"
SHAPE="${SHAPE:-512 512 48}"
TRAIN_MIN="${TRAIN_MIN:-2.25}"    # time budget of the training run
ITERATIONS="${ITERATIONS:-500}"   # per epoch: a checkpoint per epoch costs seconds at this size
CURVE="${CURVE:-200}"             # loss-curve steps per mode
STEPS="${STEPS:-20}"              # timed steps per mode
PATCH="${PATCH:-192}"
BATCH="${BATCH:-4}"               # paper's and fast's (the plan's) batch
TINY_BATCH="${TINY_BATCH:-16}"
GRID="${GRID:-0.3 0.4 0.5 / 200 400 800 / 0.7 0.8 0.9}"  # thresholds / volumes / confidences
# each stage's limit in seconds: with machine's 20 they add up to under 10 minutes
LIMIT_TINY="${LIMIT_TINY:-30}"
LIMIT_PAPER="${LIMIT_PAPER:-100}"
LIMIT_FAST="${LIMIT_FAST:-140}"
LIMIT_WARM="${LIMIT_WARM:-25}"
LIMIT_DATA="${LIMIT_DATA:-300}"   # beside the steps
DATA_NICE="${DATA_NICE:-19}"      # the data stage's niceness: the step measured beside it first
LIMIT_TRAIN="${LIMIT_TRAIN:-165}"
LIMIT_SCORE="${LIMIT_SCORE:-110}"
q="--quiet --disable-progress-bar"
if [ "${1:-}" != --stage ]; then
    OUT="${1:?output folder}"
    WHEELS="${2:-}"
    SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
    rm -rf "$WORK"
    # shellcheck source=benchmark/device/env.sh
    . "$(dirname "$0")/env.sh"
    mkdir -p "$OUT" "$RES"
    SHIPPED="$PWD/weights"
    export DEVICE WORK CHUNKS PER_CHUNK TEST_N TEST2_N TUNE_N SHAPE TRAIN_MIN ITERATIONS CURVE \
        STEPS PATCH BATCH TINY_BATCH GRID SHIPPED DATA_NICE
fi
BEFORE="grouped/auto/adam=default/loss=per-level/sync=off"  # the trainer before the levers
COMPILED="grouped/bf16/compile=default/graph"

# --- the stages (each `sh training.sh --stage NAME ARGS...`) ---
machine() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, \
torch.cuda.is_available() and torch.cuda.get_device_name(0))"
}

train_steps() {  # train_steps PRESET BATCH PATCH TAG CURVE_STEPS MODES...
    preset=$1 batch=$2 patch=$3 tag=$4 curve=$5
    shift 5
    python3 -m benchmark.training.train_steps --device "$DEVICE" --preset "$preset" \
        --batch "$batch" --patch "$patch" "$patch" --steps "$STEPS" --curve-steps "$curve" \
        --tag "$tag" -o "$WORK/steps_$tag" --modes "$@" >"$RES/steps_$tag.log" 2>&1
}

data() {  # phantoms, plan and cache
    low="nice -n $DATA_NICE"
    $low python3 -m training.phantoms -o "$WORK/test" -n "$TEST_N" --shape $SHAPE --seed 1000 \
        $q &
    $low python3 -m training.phantoms -o "$WORK/test2" -n "$TEST2_N" --shape $SHAPE \
        --seed 2000 $q &
    $low python3 -m training.phantoms -o "$WORK/tune" -n "$TUNE_N" --shape $SHAPE --seed 3000 \
        $q &
    i=0
    while [ "$i" -lt "$CHUNKS" ]; do
        $low python3 -m training.phantoms -o "$WORK/data$i" -n "$PER_CHUNK" --shape $SHAPE \
            --seed "$i" --prefix "c$i" $q &
        i=$((i + 1))
    done
    wait
    $low python3 -m training plan -d "$WORK/data0" -o "$WORK/plans.json" --preset fast \
        --patch "$PATCH" "$PATCH" --batch-size "$BATCH" --target-spacing 2 2 3 --smoothing $q \
        || return 1
    i=0
    while [ "$i" -lt "$CHUNKS" ]; do
        $low python3 -m training preprocess -d "$WORK/data$i" -p "$WORK/plans.json" \
            -o "$WORK/cache" --workers 1 $q &
        i=$((i + 1))
    done
    wait
}

train() {  # train MINUTES OPTIONS...: fast with the demo's recipe for a time budget
    minutes=$1
    shift
    rm -rf "$WORK/run_fast"
    python3 -m training train -p "$WORK/plans.json" -c "$WORK/cache" -o "$WORK/run_fast" \
        --epochs 1000 --iterations-per-epoch "$ITERATIONS" --anneal-epochs 2 --lr 2e-3 \
        --augmentation light --oversample 0.5 --dice sample --deep-supervision nnunet \
        --val-fraction 0.1 --val-every 1000 --device "$DEVICE" --time-limit-min "$minutes" \
        "$@" $q >"$WORK/train_fast.log" 2>&1
}

predict() {  # predict WEIGHTS SET NAME: masks, scores and lesion counts of a held-out set
    python3 -m inference -i "$WORK/$2/imagesTr" -o "$WORK/pred_$3_$2" --weights "$1" \
        --device "$DEVICE" $q &&
        python3 -m evaluation --pred "$WORK/pred_$3_$2" --gt "$WORK/$2/labelsTr" \
            --csv "$WORK/scores_$3_$2.csv" >/dev/null &&
        python3 -m benchmark.training.lesions --pred "$WORK/pred_$3_$2" \
            --gt "$WORK/$2/labelsTr" --csv "$WORK/lesions_$3_$2.csv" >"$WORK/lesions_$3_$2.txt"
}

score() {  # export, thresholds on the tuning phantoms; both weights on both held-out sets
    predict "$SHIPPED" test shipped >"$WORK/score_shipped_test.log" 2>&1 &
    predict "$SHIPPED" test2 shipped >"$WORK/score_shipped_test2.log" 2>&1 &
    thresholds=${GRID%% / *} rest=${GRID#* / }
    tune=$(python3 -c "import sys; from pathlib import Path; from training.demo import \
case_ids; print(' '.join(case_ids(Path(sys.argv[1]))))" "$WORK/tune")
    python3 -m training export -r "$WORK/run_fast" -o "$WORK/weights_fast" --checkpoint last \
        $q &&
        python3 -m training thresholds -w "$WORK/weights_fast" -d "$WORK/tune" --cases $tune \
            --device "$DEVICE" --decision-thresholds $thresholds --volumes ${rest%% / *} \
            --confidences ${rest#* / } $q >"$WORK/thresholds_fast.txt" &&
        { predict "$WORK/weights_fast" test fast >"$WORK/score_fast_test.log" 2>&1 &
          predict "$WORK/weights_fast" test2 fast >"$WORK/score_fast_test2.log" 2>&1; }
    status=$?
    wait
    return $status
}

if [ "${1:-}" = --stage ]; then
    shift
    "$@"
    exit
fi

# --- the run ---
step() {  # step SECONDS NAME STAGE [ARGS...]: a stage with its own limit; goes on after failure
    limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    timeout "$limit" sh "$SCRIPT" --stage "$@"
    status=$?
    echo "=== $name: exit $status after $(($(date +%s) - start)) s"
    return $status
}
steps() {  # steps SECONDS PRESET BATCH PATCH TAG CURVE_STEPS MODES...
    limit=$1
    shift
    step "$limit" "steps $4" train_steps "$@"
    cp "$WORK/steps_$4"/*.json "$RES/steps_$4.json" 2>/dev/null
    grep -v '^ *[|-]' "$RES/steps_$4.log" | cut -c 1-400
}

step 20 machine machine
step "$LIMIT_DATA" data data >"$WORK/data.log" 2>&1 &  # 2, beside 1
data_stage=$!
# 1. the step before and with the levers; compiled modes start from an empty cache
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor"
after="grouped/auto grouped/bf16 grouped/bf16/graph"
# shellcheck disable=SC2086 # $after is a list of modes
steps "$LIMIT_TINY" tiny "$TINY_BATCH" 64 tiny 0 "$BEFORE" $after
# shellcheck disable=SC2086
steps "$LIMIT_PAPER" paper "$BATCH" "$PATCH" paper "$CURVE" "$BEFORE" $after
# shellcheck disable=SC2086
steps "$LIMIT_FAST" fast "$BATCH" "$PATCH" fast "$CURVE" "$BEFORE" $after "$COMPILED"
# the same compiled step in a new process, the cache now filled: its compile_s
steps "$LIMIT_WARM" fast "$BATCH" "$PATCH" fast_warm 0 "$COMPILED"

wait "$data_stage"
cat "$WORK/data.log"

# 3. train with the fastest step whose loss curve stayed within noise of eager fp32
FLAGS=$(python3 - "$RES/steps_fast.json" <<'EOF'
import json, sys
from benchmark.training.modes import best_mode, parse_mode, trainer_flags
try:
    records = json.load(open(sys.argv[1]))["records"]
except (OSError, ValueError):
    records = []
mode = best_mode(records)
print(" ".join(trainer_flags(parse_mode(mode))) if mode else "")
EOF
)
echo "training step: ${FLAGS:-the trainer defaults}"
if command -v nvidia-smi >/dev/null; then  # GPU load while training
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader \
        -l 10 >"$WORK/gpu_load.csv" 2>/dev/null &
    monitor=$!
fi
started=$(date +%s)
if ! step "$LIMIT_TRAIN" "train fast ($TRAIN_MIN min)" train "$TRAIN_MIN" $FLAGS &&
    [ -n "$FLAGS" ] && [ $(($(date +%s) - started)) -lt 60 ]; then
    tail -n 5 "$WORK/train_fast.log"
    step "$LIMIT_TRAIN" "train fast, the trainer defaults" train "$TRAIN_MIN"
fi
[ -n "${monitor:-}" ] && kill "$monitor"
tail -n 4 "$WORK/train_fast.log"

# 4. score the new weights and the shipped ones on both held-out sets
step "$LIMIT_SCORE" score score
tail -n 3 "$WORK/thresholds_fast.txt"
for set in test test2; do
    python3 -m benchmark.training.paired --dataset "$WORK/$set" \
        --scores "$WORK/scores_fast_$set.csv" "$WORK/scores_shipped_$set.csv" \
        --lesions "$WORK/lesions_fast_$set.csv" "$WORK/lesions_shipped_$set.csv" \
        --names fast shipped --json "$WORK/paired_$set.json" &&
        python3 - "$set" "$WORK" <<'EOF' | tee -a "$RES/summary.jsonl"
import csv, json, sys
from pathlib import Path
name, work = sys.argv[1], Path(sys.argv[2])
with open(work / "run_fast" / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
s = json.loads((work / f"paired_{name}.json").read_text())
s.update(held_out=name, epochs=len(rows), train_seconds=sum(float(r["seconds"]) for r in rows),
         last_metrics=rows[-1])
print(json.dumps(s))
EOF
done
echo "=== pack ($(date -u +%H:%M:%S))"
# shellcheck disable=SC2046 # the names are this script's own, without spaces
tar -czf "$OUT/training.tar.gz" -C "$WORK" --exclude='*.pt' --exclude='*.onnx' \
    $(cd "$WORK" && ls -d results run_* train_*.log score_*.log thresholds_*.txt scores_*.csv \
      lesions_*.csv lesions_*.txt paired_*.json gpu_load.csv plans.json weights_fast \
      2>/dev/null)
[ -f "$WORK/weights_fast/model.pt" ] && split -b 15m "$WORK/weights_fast/model.pt" \
    "$OUT/model.pt.part-"
ls -la "$OUT"
echo "=== finished ($(date -u +%H:%M:%S))"
