"""The evaluation CLI, run as a user would: NIfTI folders in, rows, a mean line and exit codes
out."""

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.evaluation.test_metrics import NSD_ONE_Z_STEP, box

REPO_ROOT = Path(__file__).resolve().parents[2]
# SimpleITK order x, y, z: the same grid as test_metrics' SPACING (z, y, x) = (3, 1, 0.5).
SPACING_XYZ = (0.5, 1.0, 3.0)


def write(path: Path, array: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluation", *map(str, args)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for case in ("a_same", "b_z_step", "c_missing", "d_moved_origin", "e_label_two"):
        write(gt_dir / f"{case}.nii.gz", box())
    write(pred_dir / "a_same.nii.gz", box())
    write(pred_dir / "b_z_step.nii.gz", box(shift=(1, 0, 0)))
    write(pred_dir / "d_moved_origin.nii.gz", box(), origin=(0.0, 0.0, 5.0))
    write(pred_dir / "e_label_two.nii.gz", box(value=2))
    (gt_dir / "._a_same.nii.gz").write_bytes(b"macOS resource fork, not an image")
    csv_path = root / "out" / "scores.csv"
    result = run_cli("--pred", pred_dir, "--gt", gt_dir, "--csv", csv_path)
    return result, csv_path


def test_rows_and_mean_line(scored):
    result, _ = scored
    assert result.returncode == 0, result.stderr
    # b_z_step: one 3 mm slice off, scored with the z,y,x spacing read from the header
    # (read as x,y,z by mistake the step would look like 0.5 mm and NSD would be 1.0000).
    assert result.stdout.splitlines() == [
        "a_same DSC 1.0000 NSD 1.0000",
        f"b_z_step DSC 0.6667 NSD {NSD_ONE_Z_STEP:.4f}",
        "c_missing DSC 0.0000 NSD 0.0000",
        "d_moved_origin DSC 0.0000 NSD 0.0000",
        "e_label_two DSC 0.0000 NSD 0.0000",
        f"mean DSC {(1 + 2 / 3) / 5:.4f} NSD {(1 + NSD_ONE_Z_STEP) / 5:.4f}",
    ]
    assert f"NSD {NSD_ONE_Z_STEP:.4f}" == "NSD 0.8099"


def test_missing_prediction_is_a_warning_naming_it(scored):
    result, _ = scored
    warnings = [ln for ln in result.stderr.splitlines() if ln.startswith("WARNING")]
    assert len(warnings) == 1
    assert "c_missing" in warnings[0] and "0/0" in warnings[0]


def test_grid_mismatch_is_an_error_naming_the_file(scored):
    result, _ = scored
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("ERROR")]
    assert len(errors) == 1
    assert "d_moved_origin.nii.gz" in errors[0] and "origin" in errors[0]


def test_csv_rows(scored):
    _, csv_path = scored
    with open(csv_path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["case", "dsc", "nsd"]
    assert rows[1:] == [
        ["a_same", "1.0000", "1.0000"],
        ["b_z_step", "0.6667", f"{NSD_ONE_Z_STEP:.4f}"],
        ["c_missing", "0.0000", "0.0000"],
        ["d_moved_origin", "0.0000", "0.0000"],
        ["e_label_two", "0.0000", "0.0000"],
    ]


def test_missing_gt_folder_exits_2(tmp_path):
    (tmp_path / "pred").mkdir()
    result = run_cli("--pred", tmp_path / "pred", "--gt", tmp_path / "nowhere")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nowhere" in lines[0]


def test_gt_folder_without_labels_exits_2(tmp_path):
    for name in ("pred", "gt"):
        (tmp_path / name).mkdir()
    (tmp_path / "gt" / "notes.txt").write_text("no labels here")
    result = run_cli("--pred", tmp_path / "pred", "--gt", tmp_path / "gt")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no ground-truth files" in lines[0]


def test_unreadable_gt_is_left_out_and_exits_1(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write(gt_dir / "good.nii.gz", box())
    write(pred_dir / "good.nii.gz", box())
    (gt_dir / "broken.nii.gz").write_bytes(b"")
    result = run_cli("--pred", pred_dir, "--gt", gt_dir)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["good DSC 1.0000 NSD 1.0000",
                                          "mean DSC 1.0000 NSD 1.0000"]
    assert "broken.nii.gz" in result.stderr

