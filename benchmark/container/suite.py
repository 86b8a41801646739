"""Phantom CT cases sized like the paper's Table 4: 512x512xZ at 0.8x0.8 mm in plane.

    python -m benchmark.container.suite -o DIR [--sizes 55 100 ...] [--slice-spacing 2.5] [--seed 0]

Files are named like challenge inputs, ``table4_z055_0000.nii.gz``. A file already
there with the right size and spacing is kept (a large phantom is slow to generate), so
the suite is made once and reused.

Slice spacing: the paper gives sizes, not spacings. 2.5 mm puts the cases between a
14 cm abdominal scan (55 slices) and a 1.4 m trunk-and-legs scan (554 slices), which is
the range such slice counts have in FLARE's data; the network's work scales with
slices x spacing / the plan's target spacing, so state it with any result.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from benchmark import paper
from benchmark.container.runner import CASE_SUFFIX, case_info

log = logging.getLogger("benchmark.container.suite")

IN_PLANE = paper.IN_PLANE
IN_PLANE_SPACING_MM = 0.8
SLICE_SPACING_MM = 2.5


def case_name(slices: int) -> str:
    return f"table4_z{slices:03d}"


def case_path(folder: str | Path, slices: int) -> Path:
    return Path(folder) / f"{case_name(slices)}{CASE_SUFFIX}"


def _matches(path: Path, size, spacing) -> bool:
    try:
        got_size, got_spacing = case_info(path)
    except RuntimeError:
        return False
    return tuple(got_size) == tuple(size) and all(
        abs(a - b) < 1e-4 for a, b in zip(got_spacing, spacing))


def write_suite(folder: str | Path, sizes=paper.SLICES, slice_spacing: float = SLICE_SPACING_MM,
                seed: int = 0) -> list[Path]:
    """Write the missing cases of ``sizes`` into ``folder``; return every case's path."""
    from training.phantoms import make_phantom, write_nifti

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in sizes:
        if z < 1:
            raise ValueError(f"slice counts must be positive, got {z}")
        path = case_path(folder, z)
        size = (*IN_PLANE, z)
        spacing = (IN_PLANE_SPACING_MM, IN_PLANE_SPACING_MM, slice_spacing)
        paths.append(path)
        if path.exists():
            if _matches(path, size, spacing):
                log.info("%s: present, kept", path.name)
                continue
            log.info("%s: different size or spacing, made again", path.name)
        t = time.perf_counter()
        # One seed per size: a case does not change when other sizes are added.
        phantom = make_phantom(size, spacing, seed=(seed, z), orientation="LPS", dtype="int16")
        write_nifti(phantom.to_sitk(), str(path))
        log.info("%s: %dx%dx%d, %d lesions, written in %.1f s", path.name, *size,
                 len(phantom.lesions), time.perf_counter() - t)
    return paths


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", metavar="Z", default=None,
                   help="slice counts (default: the paper's " +
                        " ".join(map(str, paper.SLICES)) + ")")
    p.add_argument("--slice-spacing", type=float, default=SLICE_SPACING_MM, metavar="MM",
                   help=f"slice spacing of new cases (default {SLICE_SPACING_MM})")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.container.suite",
        description="Write phantom CT cases sized like the paper's Table 4 "
                    "(512x512xZ, 0.8x0.8 mm in plane), reusing those already there.")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                   help="folder for <case>_0000.nii.gz files")
    add_suite_arguments(p)
    args = p.parse_args(argv)
    if args.slice_spacing <= 0:
        p.error("--slice-spacing must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        paths = write_suite(args.output, args.sizes or paper.SLICES, args.slice_spacing,
                            args.seed)
    except (OSError, ValueError) as error:
        log.error("error: %s", error)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
