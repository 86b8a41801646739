#!/bin/sh
# The challenge entry point: the organisers run `sh predict.sh` from /workspace.
# INPUT_DIR and OUTPUT_DIR default to the challenge folders, so it also runs outside the image.
set -eu
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
# The package is found beside this script without changing into its folder, so relative
# paths (the folders, any option's file) stay the caller's; PYTHONSAFEPATH keeps a folder
# of the caller's named like the package from being imported instead.
HERE="$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)"
PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
PYTHONSAFEPATH=1
export PYTHONPATH PYTHONSAFEPATH
exec python3 -m inference -i "$INPUT_DIR" -o "$OUTPUT_DIR" --disable-progress-bar "$@"
