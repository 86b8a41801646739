"""Score a folder of predicted lesion masks the way the FLARE 2024 Task 1 organisers do.

    python -m evaluation --pred DIR --gt DIR [--csv FILE] [--tolerance 2.0]

Cases are the ground-truth files ``<case>.nii.gz``; each is scored against
``<pred>/<case>.nii.gz`` with DSC and NSD (see ``evaluation.metrics``) using the ground
truth's spacing. A missing or unreadable prediction, or one on a different voxel grid
(the organisers compare arrays and never resample), scores 0/0. One row per case goes
to stdout as ``<case> DSC 0.xxxx NSD 0.xxxx``, then ``mean DSC 0.xxxx NSD 0.xxxx``.

Exit codes: 0 when every ground truth was scored; 1 when a ground-truth file could not
be read (that case is left out of the mean); 2 when a folder is missing or holds no
ground truth.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from evaluation.metrics import score_case

log = logging.getLogger("evaluation")

SUFFIX = ".nii.gz"
# Headers store spacing/origin as float32; anything past this is a different grid.
GRID_ATOL_MM = 1e-3
DIRECTION_ATOL = 1e-4


def list_cases(gt_dir: Path) -> list[str]:
    """Case ids of the ground-truth files ``<case>.nii.gz`` (hidden files such as ``._x``
    skipped)."""
    return sorted(p.name[: -len(SUFFIX)] for p in gt_dir.iterdir()
                  if p.name.endswith(SUFFIX) and not p.name.startswith(".") and p.is_file())


def add_folder_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--pred`` and ``--gt`` folders every scoring CLI takes."""
    parser.add_argument("-p", "--pred", required=True, type=Path,
                        help="folder of predictions <case>.nii.gz")
    parser.add_argument("-g", "--gt", required=True, type=Path,
                        help="folder of ground-truth labels <case>.nii.gz")


def cases_to_score(pred_dir: Path, gt_dir: Path) -> list[str] | None:
    """The ground truth's case ids, or None (with a log line) when a folder is missing or
    holds no ground truth."""
    for name, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            log.error("%s folder %s does not exist", name, folder)
            return None
    cases = list_cases(gt_dir)
    if not cases:
        log.error("no ground-truth files <case>%s in %s", SUFFIX, gt_dir)
        return None
    return cases


def grid_difference(pred: sitk.Image, gt: sitk.Image) -> str | None:
    """How the prediction's voxel grid differs from the ground truth's, or None if it does not."""
    if pred.GetDimension() != gt.GetDimension():
        return f"{pred.GetDimension()}-D image, ground truth is {gt.GetDimension()}-D"
    if pred.GetNumberOfComponentsPerPixel() != 1:
        return f"{pred.GetNumberOfComponentsPerPixel()} components per voxel, expected 1"
    if pred.GetSize() != gt.GetSize():
        return f"size {pred.GetSize()}, ground truth {gt.GetSize()}"
    checks = (("spacing", pred.GetSpacing(), gt.GetSpacing(), GRID_ATOL_MM),
              ("origin", pred.GetOrigin(), gt.GetOrigin(), GRID_ATOL_MM),
              ("direction", pred.GetDirection(), gt.GetDirection(), DIRECTION_ATOL))
    for name, mine, theirs, atol in checks:
        if not np.allclose(mine, theirs, rtol=0.0, atol=atol):
            mine_s = ", ".join(f"{v:g}" for v in mine)
            theirs_s = ", ".join(f"{v:g}" for v in theirs)
            return f"{name} ({mine_s}), ground truth ({theirs_s})"
    return None


def _read(path: Path) -> sitk.Image:
    # SimpleITK's RuntimeError starts with a C++ source location; its last line is the reason.
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].removeprefix("sitk::ERROR:").strip()
        raise OSError(reason or "unreadable image") from None


def score_file(pred_path: Path, gt: sitk.Image, case: str,
               tolerance_mm: float) -> tuple[float, float]:
    """(DSC, NSD) of one prediction file against a loaded ground truth; 0/0 with a log line
    on failure."""
    if not pred_path.is_file():
        log.warning("%s: no prediction %s; scored 0/0", case, pred_path)
        return 0.0, 0.0
    try:
        pred = _read(pred_path)
    except OSError as err:
        log.error("%s: cannot read prediction %s (%s); scored 0/0", case, pred_path, err)
        return 0.0, 0.0
    difference = grid_difference(pred, gt)
    if difference is not None:
        log.error("%s: prediction %s is not on the ground truth's voxel grid: %s; scored 0/0 "
                  "(write the mask with the input image's size, spacing, origin and direction)",
                  case, pred_path, difference)
        return 0.0, 0.0
    spacing_zyx = gt.GetSpacing()[::-1]  # SimpleITK arrays are z,y,x; its spacing is x,y,z
    return score_case(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(gt),
                      spacing_zyx, tolerance_mm)


def evaluate(pred_dir: Path, gt_dir: Path, tolerance_mm: float = 2.0,
             csv_path: Path | None = None) -> int:
    """Score every ground-truth case, print the rows and the mean; return the exit code."""
    cases = cases_to_score(pred_dir, gt_dir)
    if cases is None:
        return 2
    extra = sorted(set(list_cases(pred_dir)) - set(cases))
    if extra:
        log.warning("ignoring %d prediction(s) without ground truth, e.g. %s%s",
                    len(extra), extra[0], SUFFIX)

    start = time.perf_counter()
    rows: list[tuple[str, float, float]] = []
    unreadable_gt = 0
    for case in cases:
        gt_path = gt_dir / f"{case}{SUFFIX}"
        try:
            gt = _read(gt_path)
        except OSError as err:
            log.error("%s: cannot read ground truth %s (%s); case left out", case, gt_path, err)
            unreadable_gt += 1
            continue
        if gt.GetDimension() != 3:
            log.error("%s: ground truth %s is %d-D, expected 3-D; case left out",
                      case, gt_path, gt.GetDimension())
            unreadable_gt += 1
            continue
        dsc, nsd = score_file(pred_dir / f"{case}{SUFFIX}", gt, case, tolerance_mm)
        rows.append((case, dsc, nsd))
        print(f"{case} DSC {dsc:.4f} NSD {nsd:.4f}", flush=True)

    if rows:
        mean_dsc = float(np.mean([r[1] for r in rows]))
        mean_nsd = float(np.mean([r[2] for r in rows]))
        print(f"mean DSC {mean_dsc:.4f} NSD {mean_nsd:.4f}")
    log.info("scored %d case(s) in %.1f s (NSD tolerance %g mm)",
             len(rows), time.perf_counter() - start, tolerance_mm)

    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["case", "dsc", "nsd"])
            writer.writerows((case, f"{dsc:.4f}", f"{nsd:.4f}") for case, dsc, nsd in rows)
        log.info("wrote %s", csv_path)
    return 1 if unreadable_gt else 0


def _non_negative_mm(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"tolerance must be >= 0 mm, got {text}")
    return value


def main(argv: list[str] | None = None, prog: str = "python -m evaluation") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="DSC and NSD of predicted lesion masks, FLARE 2024 Task 1 rules.")
    add_folder_arguments(parser)
    parser.add_argument("--csv", type=Path, help="also write case,dsc,nsd rows to this file")
    parser.add_argument("--tolerance", type=_non_negative_mm, default=2.0,
                        help="NSD tolerance in mm (default: 2.0, the challenge's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    return evaluate(args.pred, args.gt, args.tolerance, args.csv)


if __name__ == "__main__":
    sys.exit(main())
