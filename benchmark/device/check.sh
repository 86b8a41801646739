#!/bin/sh
# The container's GPU measurements in one call of at most 8 minutes, for a lent GPU machine.
#
#   sh benchmark/device/check.sh RESULTS [WHEELS_DIR]
#
# RESULTS is a folder, or a FILE.tar.gz: the results are then gathered in a work folder and
# packed into that one file at the end (a device call brings back a few files, not a tree):
#   sh benchmark/device/check.sh "$OUT/device_check.tar.gz" .whl 2>&1 | tee "$OUT/device_check.log"
# WHEELS_DIR holds wheels for what the machine lacks (SimpleITK, cc3d, isal,
# segment-anything); they are installed into a private folder first (no build). Every step
# has its own time limit and goes on after a failure, so one broken step costs only itself;
# the limits add up to under 8 minutes. The results hold:
#   - the floor and the goal: the fresh-process Table 4 (benchmark.profile: one
#     `sh predict.sh` per case, a warm-up, then 3 runs each, NVML polled every 0.1 s) at the
#     smallest and largest SIZES with the shipped weights; its CSV has idle_mb (NVML before
#     each run) and floor_s (median of 3 fresh `import torch` and one CUDA operation), its
#     Markdown the median above the floor and the maximum above the idle memory; the same at
#     the largest size for an untrained `fast` (heads at p(lesion) 0.01: sparse masks);
#   - the stage split of the largest case with the shipped weights (benchmark.container.stages),
#     with how long the model build waited for the first read;
#   - every torch mode's masks against fp32 (benchmark.network.mode_masks, the untrained
#     `fast` without the prior: it marks much, a strict test) on every size:
#     agreement_<mode>.txt, container/verify.py's voxels that differ out of those either
#     mask marks, per case, and whether that is within 0.1 %;
#   - no case lost to GPU memory: the three sizes in one run under `--torch-mode
#     grouped/autocast/graph` and `branches/half/graph/nhwc` (the untrained `fast`, the
#     default budget): resilience_<mode>.log and every mask checked (resilience_<mode>.txt).
# DEVICE (default cuda) and SIZES shrink it for a dry run on the CPU; SCALE (default 1)
# multiplies every time limit there.
set -u
DEVICE="${DEVICE:-cuda}"
SCALE="${SCALE:-1}"
SIZES="${SIZES:-55 215 554}"
PRESET="${PRESET:-fast}"
WORK="${TMPDIR:-/tmp}/flare-device"
case "${1:?results folder or .tar.gz}" in
    *.tar.gz) TAR="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; RES="$WORK/results"
        rm -rf "$RES" ;;  # a dry run's earlier results stay out of the file
    *) TAR=""; RES="$1" ;;
esac
WHEELS="${2:-}"
# shellcheck source=benchmark/device/env.sh
. "$(dirname "$0")/env.sh"

step() {  # step SECONDS NAME COMMAND...
    limit=$1 name=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S))"
    start=$(date +%s)
    timeout $((limit * SCALE)) "$@"
    echo "=== $name: exit $? after $(( $(date +%s) - start )) s"
}

T4="$WORK/table4"
SHIPPED="$PWD/weights"
W="$WORK/weights_$PRESET"          # untrained: marks much (the agreement test)
WP="$WORK/weights_${PRESET}_prior" # untrained, heads at p(lesion) 0.01: sparse masks
SMALLEST=$(echo "$SIZES" | tr ' ' '\n' | sort -n | head -1)
LARGEST_Z=$(echo "$SIZES" | tr ' ' '\n' | sort -n | tail -1)
LARGEST="$T4/table4_z$(printf %03d "$LARGEST_Z")_0000.nii.gz"
step 10 machine sh -c 'nvidia-smi; python3 -c "import sys, torch, onnxruntime as o; \
print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available()); \
print(\"onnxruntime\", o.__version__, o.get_available_providers())"; python3 -c "import pynvml as n; \
n.nvmlInit(); m = n.nvmlDeviceGetMemoryInfo(n.nvmlDeviceGetHandleByIndex(0)); \
print(\"idle NVML used MiB\", m.used / 2**20, \"total\", m.total / 2**20)"' >"$RES/machine.txt" 2>&1
cat "$RES/machine.txt"
for z in $SIZES; do  # the Table 4 phantoms, one process per size, beside the weights
    timeout $((60 * SCALE)) python3 -m benchmark.container.suite -o "$T4" --sizes "$z" >"$WORK/suite_$z.log" 2>&1 &
done
step 45 untrained sh -c "python3 -m benchmark.network.untrained -o '$W' --preset '$PRESET' && \
    python3 -m benchmark.network.untrained -o '$WP' --preset '$PRESET' --lesion-prior 0.01"
wait
ls -la "$T4"

# The floor, and the shipped weights' whole run and memory above it.
step 95 "profile shipped" python3 -m benchmark.profile -i "$T4" --sizes "$SMALLEST" "$LARGEST_Z" \
    --weights "$SHIPPED" --device "$DEVICE" --backend torch --repeats 3 --tag shipped-torch -o "$RES"
step 20 "stages shipped" python3 -m benchmark.container.stages -i "$LARGEST" --weights "$SHIPPED" \
    --device "$DEVICE" --backend torch --tag shipped-torch -o "$RES" --no-warmup

# Every torch mode's masks against fp32, with the voxels either marks.
mkdir -p "$WORK/agree"
for z in $SIZES; do
    ln -f "$T4/table4_z$(printf %03d "$z")_0000.nii.gz" "$WORK/agree/"
done
echo "=== mode masks, three processes sharing the GPU ($(date -u +%H:%M:%S))"
for k in 0 1 2; do
    step 100 "mode masks $k" python3 -m benchmark.network.mode_masks -i "$WORK/agree" \
        -o "$WORK/modes" --weights "$W" --device "$DEVICE" --part "$k" --parts 3 \
        >"$RES/mode_masks_$k.log" 2>&1 &
done
wait
cat "$RES"/mode_masks_*.log
cp "$WORK"/modes/*.json "$RES/" 2>/dev/null
agreement() {  # agreement MODE_FOLDER: verify.py against fp32, within 0.1 % of the marked voxels
    timeout $((40 * SCALE)) python3 container/verify.py --inputs "$WORK/agree" --outputs "$WORK/modes/$1" \
        --same-as "$WORK/modes/grouped_fp32" --tolerance 0.1 >"$RES/agreement_$1.txt" 2>&1 \
        && echo "within 0.1 % of fp32 on every case" >>"$RES/agreement_$1.txt" \
        || echo "NOT within 0.1 % of fp32 (or a mask is missing)" >>"$RES/agreement_$1.txt"
}
echo "=== agreement with fp32, every mode at once ($(date -u +%H:%M:%S))"
for tag in $(python3 -c "from benchmark.network.mode_masks import every_mode, folder_name; \
print(' '.join(folder_name(m) for m in every_mode()[1:]))"); do
    agreement "$tag" &
done
wait
for f in "$RES"/agreement_*.txt; do  # per mode: the largest share of any case, the verdict
    worst=$(sed -n 's/.*(\([0-9.]*\) %)$/\1/p' "$f" | sort -g | tail -n 1)
    echo "$(basename "$f" .txt | sed 's/^agreement_//'): largest ${worst:-no} % differ; $(tail -n 1 "$f")"
done | tee "$RES/agreement_summary.txt"

# No case lost to GPU memory, the three sizes in one run.
for mode in grouped/autocast/graph branches/half/graph/nhwc; do
    tag=$(echo "$mode" | tr '/' '_')
    step 30 "resilience $mode" python3 -m inference -i "$WORK/agree" -o "$WORK/resilience_$tag" \
        --weights "$W" --device "$DEVICE" --torch-mode "$mode" --disable-progress-bar \
        --timings-json "$RES/resilience_$tag.json" >"$RES/resilience_$tag.log" 2>&1
    tail -n 4 "$RES/resilience_$tag.log"
    echo "cases run again on the CPU: $(grep -c "out of GPU memory" "$RES/resilience_$tag.log")"
    if python3 container/verify.py --inputs "$WORK/agree" --outputs "$WORK/resilience_$tag" \
            >"$RES/resilience_$tag.txt" 2>&1; then
        echo "every mask written and valid" | tee -a "$RES/resilience_$tag.txt"
    else
        cat "$RES/resilience_$tag.txt"
    fi
done

# One lever: the GPU preset (`fast` on 192-px tiles) against the shipped `tiny`.
step 60 "profile $PRESET" python3 -m benchmark.profile -i "$T4" --sizes "$LARGEST_Z" \
    --weights "$WP" --device "$DEVICE" --backend torch --repeats 3 --tag "$PRESET-torch-prior" -o "$RES"

if [ -n "$TAR" ]; then
    tar -czf "$TAR" -C "$RES" . && echo "results packed into $TAR ($(du -h "$TAR" | cut -f1))"
fi
