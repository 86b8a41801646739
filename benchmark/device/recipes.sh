#!/bin/sh
# shellcheck disable=SC2086 # $q is a list of options
# Training recipes for the CPU demo, compared on a lent GPU in a few minutes.
#
#   sh benchmark/device/recipes.sh RESULTS_DIR MINUTES
#
# The demo's data (40 training phantoms 512x512x48, 16 held-out) and plan (tiny preset,
# patch 96, 2x2x3 mm), then four recipes trained side by side on the one GPU for the
# same wall-clock MINUTES, each exported (last checkpoint) and scored on the held-out
# phantoms through the container's own CLI. The phantoms come from four seeds in
# parallel (the demo's come from one), so the cases differ from the demo's, not their kind.
# Expects PYTHONPATH to hold the project and its packages (benchmark/device/check.sh).
set -u
RES="${1:?results folder}"
MINUTES="${2:-3}"
WORK="${TMPDIR:-/tmp}/flare-recipes"
DEVICE="${DEVICE:-cuda}"
EPOCHS="${EPOCHS:-24}"          # the cosine schedule's length, if MINUTES allow it
ITERATIONS="${ITERATIONS:-250}"
mkdir -p "$RES" "$WORK"
cd "$(dirname "$0")/../.." || exit 1
export PYTHONUNBUFFERED=1
q="--quiet --disable-progress-bar"
echo "=== phantoms ($(date -u +%H:%M:%S))"
for i in 0 1 2 3; do
    python3 -m training.phantoms -o "$WORK/data$i" -n 10 --shape 512 512 48 --seed "$i" \
        --prefix "c$i" $q &
done
python3 -m training.phantoms -o "$WORK/test" -n 16 --shape 512 512 48 --seed 1000 $q &
wait
echo "=== plans and caches ($(date -u +%H:%M:%S))"
python3 -m training plan -d "$WORK/data0" -o "$WORK/plans_raw.json" --preset tiny --patch 96 96 \
    --batch-size 8 --target-spacing 2 2 3 $q
python3 -m training plan -d "$WORK/data0" -o "$WORK/plans_smooth.json" --preset tiny \
    --patch 96 96 --batch-size 8 --target-spacing 2 2 3 --smoothing $q
for kind in raw smooth; do
    for i in 0 1 2 3; do
        python3 -m training preprocess -d "$WORK/data$i" -p "$WORK/plans_$kind.json" \
            -o "$WORK/cache_$kind" --workers 1 $q &
    done
    wait
done
echo "=== train ($(date -u +%H:%M:%S))"
train() {  # train NAME PLAN_KIND ARGS...
    name=$1 kind=$2
    shift 2
    python3 -m training train -p "$WORK/plans_$kind.json" -c "$WORK/cache_$kind" \
        -o "$WORK/run_$name" --epochs "$EPOCHS" --iterations-per-epoch "$ITERATIONS" --val-every 1000 \
        --val-cases c0_000 c1_000 --device "$DEVICE" --time-limit-min "$MINUTES" \
        --lr 2e-3 --anneal-epochs 1 --num-workers 2 "$@" $q \
        >"$WORK/train_$name.log" 2>&1
}
train nnunet raw --augmentation nnunet &
train light-os50 raw --augmentation light --oversample 0.5 &
train light-os50-smooth smooth --augmentation light --oversample 0.5 &
train none-os50-smooth smooth --augmentation none --oversample 0.5 &
wait
echo "=== score ($(date -u +%H:%M:%S))"
for name in nnunet light-os50 light-os50-smooth none-os50-smooth; do
    (
        python3 -m training export -r "$WORK/run_$name" -o "$WORK/weights_$name" \
            --checkpoint last $q &&
        python3 -m inference -i "$WORK/test/imagesTr" -o "$WORK/pred_$name" \
            --weights "$WORK/weights_$name" --device "$DEVICE" $q &&
        python3 -m evaluation --pred "$WORK/pred_$name" --gt "$WORK/test/labelsTr" \
            --csv "$WORK/scores_$name.csv" >/dev/null
    ) >"$WORK/score_$name.log" 2>&1 &
done
wait
for name in nnunet light-os50 light-os50-smooth none-os50-smooth; do
    tail -n 3 "$WORK/train_$name.log"
    tail -n 2 "$WORK/score_$name.log"
    python3 -c "
import json, sys
from pathlib import Path
from training.demo import summarise_scores
name, work = sys.argv[1], Path(sys.argv[2])
rows = [l for l in (work / f'run_{name}' / 'metrics.csv').read_text().splitlines()]
s = summarise_scores(work / f'scores_{name}.csv', work / 'test')
s.update(recipe=name, epochs=len(rows) - 1, last_metrics=rows[-1])
print(json.dumps(s))
" "$name" "$WORK" | tee -a "$RES/recipes.jsonl"
done
