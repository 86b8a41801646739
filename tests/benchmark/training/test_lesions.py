"""Per-lesion detection: which lesions a prediction finds, and the report CLI."""

import csv
import json
import subprocess
import sys

import numpy as np

from benchmark.training.lesions import match_lesions, summarise
from tests.evaluation.test_evaluate import REPO_ROOT, write

SPACING_ZYX = (2.0, 1.0, 1.0)  # 2 mm3 per voxel


def two_lesions():
    """A big lesion (4x8x8 voxels, 0.512 ml) and a small one (1x2x2, 0.008 ml)."""
    gt = np.zeros((10, 30, 30), np.uint8)
    gt[1:5, 2:10, 2:10] = 1
    gt[8, 20:22, 20:22] = 1
    return gt


def test_found_missed_and_false_positives():
    gt = two_lesions()
    pred = np.zeros_like(gt)
    pred[1:5, 2:10, 2:10] = 1  # all of the big lesion
    pred[8, 20, 20] = 1  # a quarter of the small one
    pred[5, 25:28, 25:28] = 1  # away from both: a false positive
    pred[0, 0, 29] = 1  # another
    rows, false_positives = match_lesions(pred, gt, SPACING_ZYX, min_overlap=0.3)
    assert [round(r["volume_ml"], 3) for r in rows] == [0.512, 0.008]
    assert [r["covered"] for r in rows] == [1.0, 0.25]
    assert [r["found"] for r in rows] == [True, False]
    assert false_positives == 2
    rows, _ = match_lesions(pred, gt, SPACING_ZYX, min_overlap=0.25)
    assert rows[1]["found"]


def test_phantom_descriptions_follow_the_lesion_centre():
    gt = two_lesions()
    lesions = [  # centre_index is x, y, z; the second centre is just off its voxels
        {"host": "kidney", "contrast_hu": 40.0, "centre_index": [20.5, 20.5, 7.4]},
        {"host": "liver", "contrast_hu": -25.0, "centre_index": [5.0, 5.0, 2.0]},
        {"host": "spleen", "contrast_hu": 30.0, "centre_index": [5.0, 5.0, 2.0],
         "labelled": False},  # not in the ground truth of a partly labelled case
    ]
    rows, _ = match_lesions(np.zeros_like(gt), gt, SPACING_ZYX, lesions=lesions)
    assert [(r["host"], r["contrast_hu"]) for r in rows] == [("liver", 25.0), ("kidney", 40.0)]
    table = summarise(rows)
    assert ("host", "kidney", 1, 0) in table and ("host", "liver", 1, 0) in table
    assert [g for name, g, _, _ in table if name == "size"] == ["<0.2 ml", "0.2-1 ml"]


def test_cli_reports_groups_and_writes_csv(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    spacing_xyz = SPACING_ZYX[::-1]
    write(gt_dir / "a.nii.gz", two_lesions(), spacing=spacing_xyz)
    found_big = np.zeros_like(two_lesions())
    found_big[1:5, 2:10, 2:10] = 1
    write(pred_dir / "a.nii.gz", found_big, spacing=spacing_xyz)
    write(gt_dir / "b.nii.gz", np.zeros_like(found_big), spacing=spacing_xyz)
    false_positive = np.zeros_like(found_big)
    false_positive[3, 3, 3] = 1
    write(pred_dir / "b.nii.gz", false_positive, spacing=spacing_xyz)
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [
        {"id": "a", "lesions": [{"host": "liver", "contrast_hu": 20,
                                 "centre_index": [5, 5, 2]}]}]}))
    out = tmp_path / "lesions.csv"
    done = subprocess.run([sys.executable, "-m", "benchmark.training.lesions",
                           "--pred", str(pred_dir),
                           "--gt", str(gt_dir), "--csv", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1 of 2 lesions found (covered >= 0.3) in 2 cases"
    assert "host     liver           1 of    1  1.00" in lines
    assert lines[-1] == ("false-positive components per lesion-free case: mean 1.00, "
                         "cases with any 1 of 1")
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [(r["case"], r["found"], r["host"]) for r in rows] == [("a", "1", "liver"),
                                                                  ("a", "0", "")]


def test_cli_missing_folder_exits_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmark.training.lesions", "--pred",
                           str(tmp_path / "nope"), "--gt", str(tmp_path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "prediction folder" in done.stderr and "does not exist" in done.stderr
