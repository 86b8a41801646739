"""Which lesions a folder of predicted masks finds, by size and (for phantoms) by host organ.

    python -m benchmark.training.lesions --pred DIR --gt DIR [--dataset-json FILE] \
        [--min-overlap 0.3]
                                [--csv FILE]

The FLARE score is per case, so a case is decided by its largest lesions and a network
that misses every kidney lesion can hide behind one found liver lesion. This report
counts lesions instead: each 26-connected component of a ground truth is one lesion,
found when the prediction covers at least ``--min-overlap`` of its voxels. Predicted
components touching no lesion are counted as false positives per case. When the
dataset's ``dataset.json`` describes each case's lesions (``python -m training.phantoms``
writes host organ, contrast and centre), lesions are also grouped by host and contrast.

Exit codes as ``evaluation``: 0 when every ground truth was read, 1 when one
could not be, 2 when a folder is missing or holds no ground truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from evaluation.evaluate import SUFFIX, _read, add_folder_arguments, cases_to_score, grid_difference
from training.reporting import write_csv

log = logging.getLogger("benchmark.training.lesions")

SIZE_BINS_ML = (0.2, 1.0, 5.0, 20.0)
CONTRAST_BINS_HU = (30.0, 50.0, 80.0)


def _bin(value: float, edges, unit: str) -> tuple[int, str]:
    """(index, name) of the bin ``value`` falls in: '<a', 'a-b' or '>=b'."""
    index = int(np.searchsorted(edges, value, side="right"))
    if index == 0:
        return 0, f"<{edges[0]:g} {unit}"
    if index == len(edges):
        return index, f">={edges[-1]:g} {unit}"
    return index, f"{edges[index - 1]:g}-{edges[index]:g} {unit}"


def _components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    import cc3d

    return cc3d.connected_components(np.ascontiguousarray(mask, np.uint8), connectivity=26,
                                     return_N=True)


def _describe(labels: np.ndarray, lesions: list[dict]) -> dict[int, dict]:
    """Component id -> a phantom lesion record, matched by the lesion's centre voxel."""
    described = {}
    for lesion in lesions:
        if not lesion.get("labelled", True) or "centre_index" not in lesion:
            continue
        x, y, z = (int(round(v)) for v in lesion["centre_index"])
        inside = all(0 <= i < n for i, n in zip((z, y, x), labels.shape))
        component = int(labels[z, y, x]) if inside else 0
        if component == 0:  # a centre jittered off the painted voxels: the nearest one
            zz, yy, xx = np.nonzero(labels)
            if zz.size == 0:
                continue
            k = int(np.argmin((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2))
            component = int(labels[zz[k], yy[k], xx[k]])
        described.setdefault(component, lesion)
    return described


def match_lesions(pred: np.ndarray, gt: np.ndarray, spacing_zyx, min_overlap: float = 0.3,
                  lesions: list[dict] | None = None) -> tuple[list[dict], int]:
    """One row per ground-truth lesion (volume, covered fraction, found) and the number of
    predicted components that touch no lesion."""
    gt_labels, n_gt = _components(gt > 0)
    pred_labels, n_pred = _components(pred > 0)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    sizes = np.bincount(gt_labels.ravel(), minlength=n_gt + 1)
    covered = np.bincount(gt_labels.ravel(), weights=(pred > 0).ravel(), minlength=n_gt + 1)
    described = _describe(gt_labels, lesions or [])
    rows = []
    for component in range(1, n_gt + 1):
        fraction = float(covered[component] / sizes[component])
        row = {"volume_ml": float(sizes[component] * voxel_ml), "covered": fraction,
               "found": fraction >= min_overlap}
        lesion = described.get(component)
        if lesion is not None:
            row["host"] = lesion.get("host")
            if lesion.get("contrast_hu") is not None:
                row["contrast_hu"] = abs(float(lesion["contrast_hu"]))
        rows.append(row)
    touching = np.unique(pred_labels[gt_labels > 0])
    false_positives = n_pred - int(np.count_nonzero(touching))
    return rows, false_positives


def summarise(rows: list[dict]) -> list[tuple[str, str, int, int]]:
    """(grouping, group, lesions, found) for size, and host and contrast where known."""
    groupings = {"size": lambda r: _bin(r["volume_ml"], SIZE_BINS_ML, "ml"),
                 "host": lambda r: (0, r["host"]) if r.get("host") else None,
                 "contrast": lambda r: _bin(r["contrast_hu"], CONTRAST_BINS_HU, "HU")
                 if "contrast_hu" in r else None}
    table = []
    for name, key in groupings.items():
        groups: dict[tuple, list[bool]] = defaultdict(list)
        for row in rows:
            group = key(row)
            if group is not None:
                groups[group].append(row["found"])
        table += [(name, g[1], len(groups[g]), sum(groups[g])) for g in sorted(groups)]
    return table


def report(pred_dir: Path, gt_dir: Path, dataset_json: Path | None = None,
           min_overlap: float = 0.3, csv_path: Path | None = None) -> int:
    """Match every case's lesions, print the grouped detection rates; return the exit code."""
    cases = cases_to_score(pred_dir, gt_dir)
    if cases is None:
        return 2
    metadata = _load_metadata(dataset_json)
    rows, false_positives, unreadable = [], {}, 0
    for case in cases:
        try:
            gt = _read(gt_dir / f"{case}{SUFFIX}")
        except OSError as err:
            log.error("%s: cannot read ground truth %s (%s); case left out",
                      case, gt_dir / f"{case}{SUFFIX}", err)
            unreadable += 1
            continue
        gt_array = sitk.GetArrayViewFromImage(gt)
        pred_array = np.zeros_like(gt_array)
        pred_path = pred_dir / f"{case}{SUFFIX}"
        try:
            pred = _read(pred_path)
            difference = grid_difference(pred, gt)
            if difference is None:
                pred_array = sitk.GetArrayViewFromImage(pred)
            else:
                log.error("%s: prediction %s is not on the ground truth's grid: %s; "
                          "counted as empty", case, pred_path, difference)
        except OSError as err:
            log.warning("%s: no readable prediction %s (%s); counted as empty",
                        case, pred_path, err)
        case_rows, false_positives[case] = match_lesions(
            pred_array, gt_array, gt.GetSpacing()[::-1], min_overlap, metadata.get(case))
        rows += [{"case": case, **row} for row in case_rows]
    _print(rows, false_positives, cases, metadata, min_overlap)
    if csv_path is not None:
        _write_csv(csv_path, rows)
    return 1 if unreadable else 0


def _load_metadata(path: Path | None) -> dict[str, list[dict]]:
    if path is None or not path.is_file():
        return {}
    try:
        entries = json.loads(path.read_text()).get("training", [])
    except (OSError, ValueError, AttributeError) as err:
        log.warning("%s: not a readable dataset.json (%s); lesions grouped by size only",
                    path, err)
        return {}
    return {e["id"]: e.get("lesions", []) for e in entries if isinstance(e, dict) and "id" in e}


def _print(rows, false_positives, cases, metadata, min_overlap) -> None:
    found = sum(r["found"] for r in rows)
    print(f"{found} of {len(rows)} lesions found (covered >= {min_overlap:g}) in "
          f"{len(false_positives)} cases")
    for grouping, group, n, k in summarise(rows):
        print(f"{grouping:8s} {group:12s} {k:4d} of {n:4d}  {k / n:.2f}")
    lesion_cases = {r["case"] for r in rows}
    for label, subset in (("lesion", lesion_cases), ("lesion-free", set(false_positives) -
                                                      lesion_cases)):
        counts = [false_positives[c] for c in subset]
        if counts:
            print(f"false-positive components per {label} case: mean {np.mean(counts):.2f}, "
                  f"cases with any {sum(c > 0 for c in counts)} of {len(counts)}")


def _write_csv(path: Path, rows: list[dict]) -> None:
    write_csv([{**row, "volume_ml": f"{row['volume_ml']:.4f}", "covered": f"{row['covered']:.4f}",
                "found": int(row["found"])} for row in rows], path,
              ["case", "volume_ml", "covered", "found", "host", "contrast_hu"])
    log.info("wrote %s", path)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"--min-overlap must be in (0, 1], got {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.training.lesions",
        description="Per-lesion detection rates of predicted masks, by size and host organ.")
    add_folder_arguments(parser)
    parser.add_argument("--dataset-json", type=Path,
                        help="lesion descriptions (default: dataset.json beside the "
                             "ground-truth folder, when there is one)")
    parser.add_argument("--min-overlap", type=_fraction, default=0.3,
                        help="fraction of a lesion's voxels a prediction must cover for it "
                             "to count as found (default: 0.3)")
    parser.add_argument("--csv", type=Path, help="also write one row per lesion to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    dataset_json = args.dataset_json or args.gt.parent / "dataset.json"
    return report(args.pred, args.gt, dataset_json, args.min_overlap, args.csv)


if __name__ == "__main__":
    sys.exit(main())
