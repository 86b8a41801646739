"""Check a container run's output folder as the organisers' evaluation would read it.

    python3 container/verify.py --inputs DIR --outputs DIR [--same-as DIR [--tolerance PCT]]
        [--empty] [--missing CASE ... | --some]

For every ``<case>_0000.nii.gz`` in the inputs there must be exactly one ``<case>.nii.gz``
in the outputs and nothing else (no hidden temporaries, no folders): uint8 voxels with values
in {0, 1}, on exactly the input's grid (size, spacing, origin and direction compared as
SimpleITK reads them, without tolerance, because the evaluation compares arrays directly).
``--same-as`` also requires the masks to equal those of another run voxel for voxel (or,
with ``--tolerance``, to differ in at most that percentage of the voxels either marks) and
prints, per case, the voxels that differ out of those marked by either mask;
``--empty`` requires an empty output folder (a run that was meant to fail); ``--missing``
names the cases that must have no mask (a case meant to fail), ``--some`` accepts any
missing masks as long as one is there (a run that was stopped).

It reads files with SimpleITK and numpy only, never with the project's own code, so it
checks the container rather than agreeing with it. One line per case; exit code 1 if any
check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SUFFIX = "_0000.nii.gz"


def expected_masks(inputs: Path) -> dict[str, Path]:
    """``<case>.nii.gz`` -> its input, for the input files the container is meant to read."""
    return {p.name[: -len(SUFFIX)] + ".nii.gz": p for p in sorted(inputs.iterdir())
            if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file()}


def grid(image) -> dict:
    """Size, spacing, origin and direction of an image or of a header read without voxels."""
    return {"size": image.GetSize(), "spacing": image.GetSpacing(),
            "origin": image.GetOrigin(), "direction": image.GetDirection()}


def differing(mask, other_path: Path) -> tuple[int, int] | None:
    """(voxels that differ, voxels marked by either) of a mask array against another mask
    file; None when their sizes differ."""
    a = sitk.GetArrayViewFromImage(mask) != 0
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(other_path))) != 0  # a copy: no image kept
    if a.shape != b.shape:
        return None
    return int(np.count_nonzero(a != b)), int(np.count_nonzero(a | b))


def agreement_line(differ: int, marked: int) -> str:
    """``N of M voxels marked by either differ (P %)``: the share the 0.1 % rule reads."""
    share = 100.0 * differ / marked if marked else 0.0
    return f"{differ} of {marked} voxels marked by either differ ({share:.3f} %)"


def check_mask(mask_path: Path, input_path: Path, same_as: Path | None,
               tolerance: float = 0.0, report=None) -> list[str]:
    """What is wrong with one mask (an empty list when nothing is). With ``same_as``,
    ``report(line)`` hears how it agrees with the other run's mask."""
    try:
        mask = sitk.ReadImage(str(mask_path))
    except RuntimeError as error:
        return [f"unreadable ({str(error).strip().splitlines()[-1]})"]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(input_path))
    reader.ReadImageInformation()
    reference = grid(reader)
    problems = [f"{key} {value} differs from the input's {reference[key]}"
                for key, value in grid(mask).items() if value != reference[key]]
    if mask.GetPixelID() != sitk.sitkUInt8:
        problems.append(f"voxel type {mask.GetPixelIDTypeAsString()}, not 8-bit unsigned")
    values = np.unique(sitk.GetArrayViewFromImage(mask))
    if not set(values.tolist()) <= {0, 1}:
        problems.append(f"values {values[:10].tolist()} outside {{0, 1}}")
    if same_as is not None:
        problems += _compare(mask, same_as / mask_path.name, tolerance, report)
    return problems


def _compare(mask, other: Path, tolerance: float, report) -> list[str]:
    """The problem with a mask against another run's, as a list (empty when none)."""
    if not other.is_file():
        return [f"{other} is missing, nothing to compare with"]
    counts = differing(mask, other)
    if counts is None:
        return [f"differs from {other} in all voxels (another size)"]
    if report is not None:
        report(agreement_line(*counts))
    differ, marked = counts
    if differ and 100.0 * differ > tolerance * marked:
        return [f"differs from {other}: {agreement_line(*counts)}"]
    return []


def verify(inputs: Path, outputs: Path, same_as: Path | None = None, empty: bool = False,
           missing: list[str] | None = None, some: bool = False, tolerance: float = 0.0,
           report=None) -> list[str]:
    """Every problem found, one line each, prefixed by the file it is about.

    With ``same_as``, ``report(line)`` hears each case's agreement with that run (prefixed
    by the mask's path), and masks may differ in up to ``tolerance`` % of the voxels
    either marks."""
    if not outputs.is_dir():
        return [f"{outputs}: no output folder"]
    found = sorted(p.name for p in outputs.iterdir())
    if empty:
        return [f"{outputs}: should be empty, holds {', '.join(found)}"] if found else []
    expected = expected_masks(inputs)
    if not expected:
        return [f"{inputs}: no <case>{SUFFIX} to check against"]
    problems = [f"{outputs / name}: not a mask of any input (stray file)"
                for name in found if name not in expected]
    absent = {f"{case}.nii.gz" for case in missing or []}
    problems += [f"{outputs / name}: missing" for name in expected
                 if name not in found and name not in absent and not some]
    problems += [f"{outputs / name}: written, but this case was meant to fail"
                 for name in sorted(absent) if name in found]
    if some and not set(found) & set(expected):
        problems.append(f"{outputs}: no mask at all")
    for name in sorted(set(expected) & set(found)):
        path = outputs / name
        said = None if report is None else (lambda line, path=path: report(f"{path}: {line}"))
        problems += [f"{path}: {problem}"
                     for problem in check_mask(path, expected[name], same_as, tolerance, said)]
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 container/verify.py", description=__doc__.split(
        "\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", required=True, type=Path)
    p.add_argument("--outputs", required=True, type=Path)
    p.add_argument("--same-as", type=Path, default=None,
                   help="another run's output folder whose masks these must equal")
    p.add_argument("--tolerance", type=float, default=0.0, metavar="PCT",
                   help="with --same-as: the masks may differ in up to PCT %% of the voxels "
                        "marked by either (default 0: identical)")
    p.add_argument("--empty", action="store_true", help="the output folder must be empty")
    p.add_argument("--missing", nargs="+", default=[], metavar="CASE",
                   help="cases that must have no mask")
    p.add_argument("--some", action="store_true",
                   help="masks may be missing (a stopped run), but not all")
    args = p.parse_args(argv)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    problems = verify(args.inputs, args.outputs, args.same_as, args.empty, args.missing,
                      args.some, args.tolerance, report=print)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
