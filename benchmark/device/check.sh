#!/bin/sh
# The container's GPU measurements in one call of at most 8 minutes, for a lent GPU machine.
#
#   sh benchmark/device/check.sh RESULTS_DIR [WHEELS_DIR]
#
# WHEELS_DIR holds wheels for what the machine lacks (SimpleITK, cc3d, isal,
# segment-anything); they are installed into a private folder first (no build). Every step
# has its own time limit and goes on after a failure, so one broken step costs only itself;
# the limits add up to under 8 minutes. RESULTS_DIR ends up with:
#   - the fresh-process Table 4 (benchmark.profile: one `sh predict.sh` per case, NVML
#     polled every 0.1 s) at 55, 215 and 554 slices, with the shipped weights and with an
#     untrained `fast` (heads at p(lesion) 0.01, so its masks are as sparse as a trained
#     model's);
#   - the stage split of the 554-slice case (benchmark.container.stages), both weights, and
#     channels-last (`--torch-mode grouped/autocast/nhwc`);
#   - fp16 (autocast, with and without CUDA-graph replay; half with graphs) against fp32
#     masks of the untrained `fast` without the prior (it marks much, a strict test):
#     container/verify.py --same-as lists the voxels that differ;
#   - ms per tile of each torch mode (benchmark.network.network_modes) and the operations one
#     tile batch dispatches (benchmark.network.launches).
# DEVICE (default cuda) and SIZES shrink it for a dry run on the CPU.
set -u
DEVICE="${DEVICE:-cuda}"
SIZES="${SIZES:-55 215 554}"
PRESET="${PRESET:-fast}"
RES="${1:?results folder}"
WHEELS="${2:-}"
WORK="${TMPDIR:-/tmp}/flare-device"
# shellcheck source=benchmark/device/env.sh
. "$(dirname "$0")/env.sh"

step() {  # step SECONDS NAME COMMAND...
    limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    timeout "$limit" "$@"
    echo "=== $name: exit $? after $(( $(date +%s) - start )) s"
}

T4="$WORK/table4"
SHIPPED="$PWD/weights"
W="$WORK/weights_$PRESET"          # untrained: marks much (the agreement test)
WP="$WORK/weights_${PRESET}_prior" # untrained, heads at p(lesion) 0.01: sparse masks
step 15 machine sh -c 'nvidia-smi; python3 -c "import sys, torch, onnxruntime as o; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available()); \
print(\"onnxruntime\", o.__version__, o.get_available_providers())"; python3 -c "import pynvml as n; \
n.nvmlInit(); m = n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(0)); \
print(\"idle NVML used MiB\", m.used / 2**20, \"total\", m.total / 2**20)"'
for z in $SIZES; do  # the Table 4 phantoms, one process per size, beside the weights
    python3 -m benchmark.container.suite -o "$T4" --sizes "$z" >"$WORK/suite_$z.log" 2>&1 &
done
step 40 untrained sh -c "python3 -m benchmark.network.untrained -o '$W' --preset '$PRESET' && \
    python3 -m benchmark.network.untrained -o '$WP' --preset '$PRESET' --lesion-prior 0.01"
wait
ls -la "$T4"
LARGEST="$T4/table4_z$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -1 | xargs printf %03d)_0000.nii.gz"
step 15 launches python3 -m benchmark.network.launches --presets tiny "$PRESET" -o "$RES"

# shellcheck disable=SC2086 # SIZES is a word list
profile() {  # profile TAG WEIGHTS
    step 70 "profile $1" python3 -m benchmark.profile -i "$T4" --sizes $SIZES --weights "$2" \
        --device "$DEVICE" --backend torch --tag "$1" -o "$RES"
}
profile shipped-torch "$SHIPPED"
profile "$PRESET-torch-prior" "$WP"
stages() {  # stages TAG WEIGHTS [TORCH_MODE_OPTION]
    # shellcheck disable=SC2086 # ${3:-}: "--torch-mode MODE" or nothing
    step 40 "stages $1" python3 -m benchmark.container.stages -i "$LARGEST" --weights "$2" \
        --device "$DEVICE" --backend torch --tag "$1" -o "$RES" --no-warmup ${3:+--predict-args "$3"}
}
stages shipped-torch "$SHIPPED"
stages "$PRESET-torch-prior" "$WP"
step 30 network-modes python3 -m benchmark.network.network_modes --preset "$PRESET" --device "$DEVICE" \
    --batches 16 64 -o "$RES"
stages "$PRESET-torch-prior-nhwc" "$WP" "--torch-mode grouped/autocast/nhwc"

# fp16 against fp32 on the same cases: the same voxels?
mkdir -p "$WORK/agree"
for z in $SIZES; do
    ln -f "$T4/table4_z$(printf %03d "$z")_0000.nii.gz" "$WORK/agree/"
done
for mode in grouped/fp32 grouped/autocast grouped/autocast/graph branches/half/graph/nhwc; do
    tag=$(echo "$mode" | tr '/' '_')
    step 22 "masks $mode" python3 -m inference -i "$WORK/agree" -o "$WORK/masks_$tag" \
        --weights "$W" --device "$DEVICE" --torch-mode "$mode" --quiet --disable-progress-bar
done
for tag in grouped_autocast grouped_autocast_graph branches_half_graph_nhwc; do
    step 10 "agreement $tag vs fp32" sh -c "python3 container/verify.py --inputs '$WORK/agree' \
        --outputs '$WORK/masks_$tag' --same-as '$WORK/masks_grouped_fp32' \
        >'$RES/agreement_${tag}_vs_fp32.txt' 2>&1 && echo 'every mask identical to fp32' \
        >>'$RES/agreement_${tag}_vs_fp32.txt'; cat '$RES/agreement_${tag}_vs_fp32.txt'"
done
