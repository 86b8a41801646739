#!/bin/sh
# Shared set-up of the lent-GPU scripts, sourced by them: the results and work folders,
# the project root as the working directory and on PYTHONPATH, and the wheels in WHEELS
# (if set) installed into a private folder for what the machine lacks.
# Expects RES, WORK and WHEELS to be set, and $0 to be a script in benchmark/.
mkdir -p "$RES" "$WORK"
cd "$(dirname "$0")/../.." || exit 1
export PYTHONUNBUFFERED=1
if [ -n "$WHEELS" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$WORK/site" "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$WORK/site:$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
