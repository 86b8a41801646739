#!/bin/sh
# The challenge entry point: the organisers run `sh predict.sh` from /workspace.
# INPUT_DIR and OUTPUT_DIR default to the challenge folders, so it also runs outside the image.
set -eu
INPUT_DIR="${INPUT_DIR:-/workspace/inputs}"
OUTPUT_DIR="${OUTPUT_DIR:-/workspace/outputs}"
cd "$(dirname "$0")"
exec python3 -m inference -i "$INPUT_DIR" -o "$OUTPUT_DIR" --disable-progress-bar "$@"
