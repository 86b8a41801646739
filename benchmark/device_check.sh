#!/bin/sh
# The GPU measurements of issue 6 in one script, for a lent GPU machine (one short run).
#
#   sh benchmark/device_check.sh RESULTS_DIR [WHEELS_DIR]
#
# WHEELS_DIR holds wheels for what the machine lacks (SimpleITK, cc3d, isal, MONAI,
# segment-anything); they are installed into a private folder first. Every step has
# its own time limit and goes on after a failure, so one broken step costs only itself.
# RESULTS_DIR ends up with the benchmark files. DEVICE (default cuda), SIZES and
# BATCHES shrink it for a dry run on the CPU.
set -u
DEVICE="${DEVICE:-cuda}"
SIZES="${SIZES:-55 100 150 215 334 448 499 554}"
BATCHES="${BATCHES:-16 32 64}"
PRESET="${PRESET:-fast}"
RES="${1:?results folder}"
WHEELS="${2:-}"
WORK="${TMPDIR:-/tmp}/flare-device"
# shellcheck source=benchmark/device_env.sh
. "$(dirname "$0")/device_env.sh"

step() {  # step SECONDS NAME COMMAND...
    limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $(( $(date +%s) - start )) s"
}

T4="$WORK/table4"
W="$WORK/weights_$PRESET"          # untrained: marks a third of the body (restore inflated)
WP="$WORK/weights_${PRESET}_prior" # untrained, heads at p(lesion) 0.01: near-empty masks
step 30 machine sh -c 'nvidia-smi; python3 -c "import sys, torch, onnxruntime as o; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available()); \
print(\"onnxruntime\", o.__version__, o.get_available_providers())"'
step 20 idle-nvml python3 -c "import pynvml as n; n.nvmlInit(); h = n.nvmlDeviceGetHandleByIndex(0); \
m = n.nvmlDeviceGetMemoryInfo(h); print('idle NVML used MiB', m.used / 2**20, 'total', m.total / 2**20)"
for z in $SIZES; do  # the Table 4 phantoms, one process per size
    python3 -m benchmark.suite -o "$T4" --sizes "$z" >"$WORK/suite_$z.log" 2>&1 &
done
step 120 untrained python3 -m benchmark.untrained -o "$W" --preset "$PRESET"
step 120 untrained-prior python3 -m benchmark.untrained -o "$WP" --preset "$PRESET" \
    --lesion-prior 0.01
wait
ls -la "$T4"
LARGEST="$T4/table4_z$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -1 | xargs printf %03d)_0000.nii.gz"
# shellcheck disable=SC2086 # ${4:-}: an optional flag, absent when empty
stages() {  # stages TAG WEIGHTS PREDICT_ARGS [--no-warmup]
    step 90 "stages $1 $3" python3 -m benchmark.stages -i "$LARGEST" --weights "$2" \
        --device "$DEVICE" --backend torch --tag "$1" -o "$RES" --predict-args "$3" ${4:-}
}
stages "$PRESET-torch" "$W" ""
stages "$PRESET-torch-prior" "$WP" "" --no-warmup
stages "$PRESET-torch-prior-1200" "$WP" "--gpu-memory-mb 1200" --no-warmup
stages "$PRESET-torch-prior-1200-branches-half-graph" "$WP" \
    "--gpu-memory-mb 1200 --torch-mode branches/half/graph" --no-warmup
stages "$PRESET-torch-prior-1200-grouped-autocast-graph" "$WP" \
    "--gpu-memory-mb 1200 --torch-mode grouped/autocast/graph" --no-warmup
# shellcheck disable=SC2086 # BATCHES and SIZES are word lists
step 120 network-modes python3 -m benchmark.network_modes --preset "$PRESET" --device "$DEVICE" \
    --batches $BATCHES -o "$RES"
profile() {  # profile TAG PREDICT_ARGS
    # shellcheck disable=SC2086
    step 150 "profile $1" python3 -m benchmark.profile -i "$T4" --sizes $SIZES --weights "$WP" \
        --device "$DEVICE" --backend torch --tag "$1" -o "$RES" --predict-args "$2"
}
profile "$PRESET-torch-prior-1200" "--gpu-memory-mb 1200"
step 90 engines python3 -m benchmark.engines --preset "$PRESET" --device "$DEVICE" -o "$RES"
# fp16 against fp32 on the same cases: the same masks? (the untrained network marks much,
# so its masks are a strict test of numerical agreement)
mkdir -p "$WORK/agree"
for z in $(echo "$SIZES" | tr ' ' '\n' | sort -n | head -3); do
    ln -f "$T4/table4_z$(printf %03d "$z")_0000.nii.gz" "$WORK/agree/"
done
for mode in grouped/fp32 grouped/autocast branches/half/graph; do
    step 60 "masks $mode" python3 -m inference -i "$WORK/agree" -o "$WORK/masks_$(echo "$mode" | tr '/' '_')" \
        --weights "$W" --device "$DEVICE" --torch-mode "$mode" --quiet --disable-progress-bar
done
for mode in grouped_autocast branches_half_graph; do
    step 60 "agreement $mode vs fp32" python3 -m benchmark.evaluate --pred "$WORK/masks_$mode" \
        --gt "$WORK/masks_grouped_fp32" --csv "$RES/agreement_${mode}_vs_fp32.csv"
done
profile "$PRESET-torch-prior" ""
