#!/bin/sh
# Check an image as the organisers run it: sh container/check.sh IMAGE
#
# Cases: 2 phantoms made here and the real scans of ../shared/data/real (REAL_DATA
# overrides the folder; missing is fine). Each variant runs the organisers' command line,
#   docker container run --shm-size=28gb -m 28G --gpus="device=0" --rm
#     -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/
#     IMAGE /bin/bash -c "sh predict.sh"
# with one change each (--gpus only where a GPU is; Docker refuses it elsewhere), and
# container/verify.py checks every mask: uint8 {0,1}, the input's exact grid, nothing else in
# the folder, the same voxels as the first variant. Two runs end early on purpose:
# `docker stop` during the run (exit 143 within seconds, whole masks only), and a 300 MB
# memory limit that one large case exceeds (that case lost alone). Then the image goes through
# `docker save | gzip`, is removed and `docker load`ed back from that archive, and runs once
# more. Needs root (to own the output folders the way a harness would), docker, and python3
# with the project's training extras (phantoms) and SimpleITK.
set -u

[ $# -eq 1 ] || { echo "usage: sh container/check.sh IMAGE" >&2; exit 2; }
image=$1
cd "$(dirname "$0")/.." || exit 2
repo=$(pwd)
real=${REAL_DATA:-$repo/../shared/data/real}
say() { printf '%s\n' "check: $*" >&2; }

docker image inspect "$image" >/dev/null 2>&1 || { say "error: no image $image here"; exit 2; }
[ "$(id -u)" = 0 ] || { say "error: run as root (output folders are made root-owned, as a harness makes them)"; exit 2; }
work=$(mktemp -d)
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/cases"
python3 -m training.phantoms -o "$work/phantoms" -n 2 --shape 160 160 40 --seed 2415 \
    --quiet --disable-progress-bar || { say "error: could not make phantoms (pip install -e '.[train]')"; exit 2; }
cp "$work/phantoms/imagesTr/"*_0000.nii.gz "$work/cases/"
n_real=0
for scan in "$real"/*_0000.nii.gz; do
    [ -f "$scan" ] || continue
    cp "$scan" "$work/cases/"
    n_real=$((n_real + 1))
done
[ "$n_real" -gt 0 ] || say "no real scans in $real: phantoms only"
n_cases=$(find "$work/cases" -name '*_0000.nii.gz' | wc -l)
# one case too large for a 300 MB container: 512x512x400 int16 is 200 MB of voxels
python3 -m training.phantoms -o "$work/big" -n 1 --shape 512 512 400 --seed 2416 --dtype int16 \
    --quiet --disable-progress-bar || { say "error: could not make the large phantom"; exit 2; }

gpus=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpus="--gpus=device=0"
else
    say "no GPU here: --gpus left out (Docker refuses it without one)"
fi

passed=0 failed=0 failures=""
reference=""

# run_variant NAME OUTPUTS EXPECTED_RC [docker options...]
#   OUTPUTS: root755 (mkdir as root), absent, owner=UID:GID (mode 755), world (1777)
#   An option "ro" mounts the inputs read-only; "keep" runs without --rm for docker diff.
run_variant() {
    name=$1 outputs=$2 expected=$3
    shift 3
    ws=$work/$name
    mkdir -p "$ws/inputs"
    cp "$work/cases/"* "$ws/inputs/"
    case $outputs in
        root755) mkdir -m 755 "$ws/outputs" ;;
        absent) ;;
        owner=*) mkdir -m 755 "$ws/outputs" && chown "${outputs#owner=}" "$ws/outputs" ;;
        world) mkdir -m 1777 "$ws/outputs" ;;
    esac
    ro="" rm="--rm" container=""
    opts=""
    for opt in "$@"; do
        case $opt in
            ro) ro=":ro" ;;
            keep) rm="" container="flare-nnsam-check-$$-$name" ;;
            *) opts="$opts $opt" ;;
        esac
    done
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # $gpus, $rm and $opts are lists of options
    docker container run --shm-size=28gb -m 28G $gpus $rm ${container:+--name "$container"} \
        $opts -v "$ws/inputs/:/workspace/inputs/$ro" -v "$ws/outputs/:/workspace/outputs/" \
        "$image" /bin/bash -c "sh predict.sh" >"$ws/log" 2>&1
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    problems=""
    [ "$rc" = "$expected" ] || problems="exit code $rc, expected $expected"
    if [ "$expected" = 0 ]; then
        python3 container/verify.py --inputs "$ws/inputs" --outputs "$ws/outputs" \
            ${reference:+--same-as "$reference"} 2>"$ws/verify" || problems="$problems; masks"
    else
        python3 container/verify.py --inputs "$ws/inputs" --outputs "$ws/outputs" --empty \
            2>"$ws/verify" || problems="$problems; output folder not empty"
        grep -q "^error: output folder /workspace/outputs is not writable" "$ws/log" \
            || problems="$problems; no one-line error naming the output folder"
    fi
    if [ -n "$container" ]; then
        changed=$(docker diff "$container" 2>&1)
        docker rm "$container" >/dev/null 2>&1
        [ -z "$changed" ] || problems="$problems; wrote outside /workspace/outputs: $(echo "$changed" | tr '\n' ' ')"
    fi
    report_variant "$name" "$rc" "$seconds s"
}

# stop_variant: `docker stop` while the run is under way (SIGTERM to PID 1, SIGKILL after
# 10 s). It must stop within seconds with exit code 143, the masks it wrote whole and no
# temporary left. Three copies of each case, so the run outlasts the first mask.
stop_variant() {
    ws=$work/docker-stop name=flare-nnsam-check-$$-stop problems=""
    mkdir -p "$ws/inputs" && mkdir -m 755 "$ws/outputs"
    for copy in a b c; do
        for case in "$work/cases/"*_0000.nii.gz; do
            base=$(basename "$case" _0000.nii.gz)
            cp "$case" "$ws/inputs/${base}${copy}_0000.nii.gz"
        done
    done
    # shellcheck disable=SC2086  # $gpus is a list of options
    docker container run -d --name "$name" --shm-size=28gb -m 28G $gpus \
        -v "$ws/inputs/:/workspace/inputs/" -v "$ws/outputs/:/workspace/outputs/" \
        "$image" /bin/bash -c "sh predict.sh" >/dev/null
    waited=0
    until ls "$ws/outputs/"*.nii.gz >/dev/null 2>&1 || [ "$waited" -ge 600 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    start=$(date +%s.%N)
    docker stop "$name" >/dev/null
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    rc=$(docker inspect -f '{{.State.ExitCode}}' "$name")
    docker logs "$name" >"$ws/log" 2>&1
    docker rm "$name" >/dev/null 2>&1
    [ "$rc" = 143 ] || problems="exit code $rc, expected 143"
    awk -v s="$seconds" 'BEGIN { exit !(s < 8) }' || problems="$problems; docker stop took $seconds s"
    grep -q "^stopped by SIGTERM" "$ws/log" || problems="$problems; no line saying it stopped"
    python3 container/verify.py --inputs "$ws/inputs" --outputs "$ws/outputs" --some \
        2>"$ws/verify" || problems="$problems; masks"
    written=$(find "$ws/outputs" -name '*.nii.gz' | wc -l)
    report_variant docker-stop "$rc" "$seconds s to stop, $written of $((n_cases * 3)) masks"
}

# memory_variant: under `docker run -m 300m`, a case too large for the limit gets its
# process killed by the kernel; it must fail alone, in one line, and every other case
# must still get its mask (a new worker process takes them over).
memory_variant() {
    ws=$work/memory-limit problems=""
    mkdir -p "$ws/inputs" && mkdir -m 755 "$ws/outputs"
    cp "$work/cases/"* "$ws/inputs/"
    cp "$work/big/imagesTr/phantom_000_0000.nii.gz" "$ws/inputs/big_0000.nii.gz"
    start=$(date +%s.%N)
    # shellcheck disable=SC2086  # $gpus is a list of options
    docker container run --shm-size=28gb -m 28G $gpus --rm -m 300m --memory-swap 300m \
        -v "$ws/inputs/:/workspace/inputs/" -v "$ws/outputs/:/workspace/outputs/" \
        "$image" /bin/bash -c "sh predict.sh" >"$ws/log" 2>&1
    rc=$?
    seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    [ "$rc" = 1 ] || problems="exit code $rc, expected 1"
    grep -q "^big: failed: the process was killed by SIGKILL" "$ws/log" \
        || problems="$problems; no line saying the big case's process was killed"
    python3 container/verify.py --inputs "$ws/inputs" --outputs "$ws/outputs" --missing big \
        2>"$ws/verify" || problems="$problems; masks"
    report_variant memory-limit "$rc" "$seconds s, the 512x512x400 case lost alone"
}

report_variant() {
    if [ -z "$problems" ]; then
        passed=$((passed + 1))
        printf 'ok    %-22s rc %s, %s\n' "$1" "$2" "$3" >&2
    else
        failed=$((failed + 1))
        failures="$failures $1"
        printf 'FAIL  %-22s %s\n' "$1" "${problems#; }" >&2
        sed 's/^/        verify: /' "$ws/verify" >&2
        tail -n 5 "$ws/log" | sed 's/^/        log: /' >&2
    fi
}

say "$image: $n_cases cases ($((n_cases - n_real)) phantoms, $n_real real scans)"
run_variant organisers root755 0
[ -d "$work/organisers/outputs" ] && reference=$work/organisers/outputs
run_variant outputs-absent absent 0
run_variant user-1000 owner=1000:1000 0 --user 1000
run_variant user-12345 world 0 --user 12345:12345
run_variant inputs-read-only root755 0 ro
run_variant read-only-root root755 0 --read-only
run_variant network-none root755 0 --network none
run_variant harness-strict owner=12345:12345 0 --user 12345:12345 --read-only --network none ro
run_variant nothing-outside root755 0 keep
run_variant not-writable root755 2 --user 1000
stop_variant
memory_variant

# The archive the organisers receive, and the image loaded back from it alone.
docker save "$image" | gzip -c >"$work/team.tar.gz"
image_mb=$(( $(docker image inspect -f '{{.Size}}' "$image") / 1000000 ))
archive_mb=$(( $(wc -c <"$work/team.tar.gz") / 1000000 ))
if docker image rm "$image" >/dev/null && docker load -i "$work/team.tar.gz" >/dev/null; then
    run_variant loaded-from-archive root755 0
else
    failed=$((failed + 1))
    failures="$failures save-load"
    kept=$(mktemp "${TMPDIR:-/tmp}/team-XXXXXX.tar.gz")
    cp "$work/team.tar.gz" "$kept"
    say "FAIL save-load: docker load did not restore $image (the archive is kept at $kept)"
fi

total=$((passed + failed))
if [ "$failed" = 0 ]; then
    echo "check: $image passed $passed of $total variants, $n_cases cases each; image $image_mb MB, docker save | gzip $archive_mb MB"
    exit 0
fi
echo "check: $image FAILED $failed of $total variants ($(echo "$failures" | sed 's/^ //')); image $image_mb MB, docker save | gzip $archive_mb MB"
exit 1
