"""The container's masks under each torch execution mode, for comparing them with fp32.

    python -m benchmark.network.mode_masks -i INPUTS -o OUT --weights DIR [--device cuda]
        [--modes MODE ... | --part K --parts N]

Each ``<case>_0000.nii.gz`` of INPUTS is read once; then, mode by mode (default: every
``FORM/PRECISION[/graph][/nhwc]``, ``grouped/fp32`` first; ``--part K --parts N`` takes
every Nth of them from the Kth, so that N processes share the modes), a ``Predictor``
with that ``--torch-mode`` predicts every case as the container does and writes the masks
into ``OUT/<mode with _ for />/<case>.nii.gz``, with seconds and marked voxels per case in
``OUT/<mode with _ for />.json`` as soon as the mode is done. One process for many modes:
torch is imported and each case read once. ``container/verify.py --inputs INPUTS
--outputs OUT/<mode> --same-as OUT/grouped_fp32`` then counts the voxels that differ out
of those either mask marks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from inference import nifti, nifti_writer
from inference.backends import TORCH_MODES
from inference.folders import write_text_atomically
from inference.predictor import Predictor

log = logging.getLogger("benchmark.network.mode_masks")
REFERENCE = "grouped/fp32"


def every_mode() -> list[str]:
    """``grouped/fp32`` first, then every mode with and without graphs and channels-last."""
    modes = [m + g + n for m, g, n in itertools.product(TORCH_MODES, ("", "/graph"),
                                                          ("", "/nhwc"))]
    return [REFERENCE] + [m for m in modes if m != REFERENCE]


def folder_name(mode: str) -> str:
    return mode.replace("/", "_")


def cases_in(folder: Path) -> list[tuple[str, Path]]:
    suffix = "_0000.nii.gz"
    return [(p.name[: -len(suffix)], p) for p in sorted(folder.glob(f"*{suffix}"))
            if not p.name.startswith(".")]


def masks_of_mode(mode: str, volumes: dict, weights: Path, device: str, out: Path) -> dict:
    """Predict and write every case under one mode; per case, seconds and marked voxels."""
    predictor = Predictor(weights, device, "torch", torch_mode=mode)
    folder = out / folder_name(mode)
    folder.mkdir(parents=True, exist_ok=True)
    record = {}
    for case, volume in volumes.items():
        start = time.perf_counter()
        try:
            mask = predictor.predict(volume).mask
        except Exception as error:  # noqa: BLE001 - one mode failing is a result
            record[case] = {"error": f"{type(error).__name__}: {str(error)[:200]}"}
            log.error("%s, %s: %s", mode, case, record[case]["error"])
            continue
        seconds = time.perf_counter() - start
        nifti_writer.write_mask(mask, volume, folder / f"{case}.nii.gz")
        record[case] = {"seconds": seconds, "marked": int(np.count_nonzero(mask))}
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.network.mode_masks",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, type=Path, metavar="INPUTS")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    p.add_argument("--weights", required=True, type=Path)
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", nargs="+", default=None, metavar="MODE",
                   help=f"torch modes (default: every one, {REFERENCE} first)")
    p.add_argument("--part", type=int, default=0, metavar="K")
    p.add_argument("--parts", type=int, default=1, metavar="N")
    args = p.parse_args(argv)
    if not 0 <= args.part < args.parts:
        p.error("--part must lie in 0..N-1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    volumes = {case: nifti.read_ct(path) for case, path in cases_in(args.input)}
    if not volumes:
        log.error("error: %s: no <case>_0000.nii.gz", args.input)
        return 2
    failed = []
    for mode in (args.modes or every_mode())[args.part::args.parts]:
        record = masks_of_mode(mode, volumes, args.weights, args.device, args.output)
        write_text_atomically(args.output / f"{folder_name(mode)}.json", json.dumps(
            {"mode": mode, "device": args.device, "cases": record}, indent=1) + "\n")
        print(mode, " ".join(f"{case} {r.get('seconds', float('nan')):.2f} s "
                              f"{r.get('marked', '-')} marked" for case, r in record.items()),
              flush=True)
        failed += [mode] if any("error" in r for r in record.values()) else []
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
