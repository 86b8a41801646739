#!/bin/sh
# Build the challenge image: sh container/build.sh [--local-base] [TAG]
#
# 1. The base: BASE_IMAGE (environment), else the Dockerfile's default, pulled if missing;
#    with --local-base, a Debian bookworm base with Debian's Python made here by debootstrap
#    (for machines that reach no image registry; it runs onnxruntime on the CPU).
# 2. The wheelhouse: container/requirements.txt downloaded for the base's own Python
#    version, ABI and platform (asked of the base itself), plus a pip wheel to install with.
# 3. `docker build --network none`: nothing is fetched while the image builds.
set -eu

usage="usage: sh container/build.sh [--local-base] [TAG]   (default tag flare-nnsam:latest)"
local_base=0
tag=flare-nnsam:latest
for arg in "$@"; do
    case "$arg" in
        --local-base) local_base=1 ;;
        -h | --help) echo "$usage"; exit 0 ;;
        -*) echo "$usage" >&2; exit 2 ;;
        *) tag=$arg ;;
    esac
done

cd "$(dirname "$0")/.."
say() { printf '%s\n' "build: $*" >&2; }
fail() { printf '%s\n' "build: error: $*" >&2; exit 2; }

command -v docker >/dev/null 2>&1 || fail "the docker command is not installed"
docker info >/dev/null 2>&1 || fail "the Docker daemon is not running or not reachable (start dockerd)"
python3 -m pip --version >/dev/null 2>&1 || fail "python3 with pip is needed to download the wheelhouse"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
trap 'exit 130' INT TERM

make_local_base() {
    # Debian's minimal system plus python3; docs, locales and package lists removed.
    [ "$(id -u)" = 0 ] || fail "--local-base runs debootstrap, which needs root"
    command -v debootstrap >/dev/null 2>&1 || fail "--local-base needs debootstrap (apt-get install debootstrap)"
    say "making the local base $1 with debootstrap (bookworm, python3)"
    # DEBIAN_MIRROR (optional) is passed on as debootstrap's mirror argument.
    # shellcheck disable=SC2086
    if ! debootstrap --variant=minbase --include=python3,ca-certificates bookworm \
            "$work/root" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1; then
        tail -n 5 "$work/debootstrap.log" >&2
        fail "debootstrap failed (log above)"
    fi
    rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"* \
        "$work/root/usr/share/doc" "$work/root/usr/share/man" "$work/root/usr/share/info" \
        "$work/root/usr/share/locale"
    tar -C "$work/root" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$1" >/dev/null
    rm -rf "$work/root"
}

if [ "$local_base" = 1 ]; then
    base=flare-nnsam-base:bookworm
    make_local_base "$base"
else
    base=${BASE_IMAGE:-$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile)}
    [ -n "$base" ] || fail "no BASE_IMAGE given and none found in the Dockerfile"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        say "pulling $base"
        docker pull "$base" >&2 || fail "base image $base cannot be pulled; without a registry, use --local-base"
    fi
fi

# The wheels must match the Python that will run them, not the host's.
target=$(docker run --rm --network none --entrypoint python3 "$base" -c '
import platform, sys, sysconfig
glibc = platform.libc_ver()[1] or "2.17"
print(f"{sys.version_info[0]}.{sys.version_info[1]}", sysconfig.get_platform().split("-", 1)[1], glibc)
') || fail "the base image $base has no working python3"
# shellcheck disable=SC2086  # three words: version, machine, glibc
set -- $target
python_version=$1 arch=$2 glibc_minor=${3#*.}
pyver=$(echo "$python_version" | tr -d .)
say "base $base: CPython $python_version, $arch, glibc 2.$glibc_minor"
platforms="--platform manylinux2014_$arch"
minor=17
while [ "$minor" -le "$glibc_minor" ]; do
    platforms="$platforms --platform manylinux_2_${minor}_$arch"
    minor=$((minor + 1))
done

rm -rf container/wheelhouse
mkdir -p container/wheelhouse
say "downloading the wheelhouse for cp$pyver"
# shellcheck disable=SC2086
python3 -m pip download --quiet --quiet --disable-pip-version-check --dest container/wheelhouse \
    --only-binary=:all: --implementation cp --python-version "$pyver" \
    --abi "cp$pyver" --abi abi3 --abi none $platforms \
    -r container/requirements.txt "pip==25.3" >&2 \
    || fail "pip download failed for cp$pyver/$arch (see above)"
cp container/requirements.txt container/wheelhouse/requirements.txt

say "building $tag on $base (no network)"
docker build --network none --build-arg BASE_IMAGE="$base" -t "$tag" . >"$work/build.log" 2>&1 || {
    tail -n 20 "$work/build.log" >&2
    fail "docker build failed (last lines above)"
}
# Untagged leftovers of earlier builds (stage 1, images the tag moved away from): hundreds
# of MB each on a machine that builds often. Both stages carry the label.
docker image prune -f --filter label=org.opencontainers.image.title=flare-nnsam >/dev/null
size=$(docker image inspect -f '{{.Size}}' "$tag")
base_size=$(docker image inspect -f '{{.Size}}' "$base")
say "built $tag: $((size / 1000000)) MB ($((base_size / 1000000)) MB of it the base $base)"
echo "$tag"
