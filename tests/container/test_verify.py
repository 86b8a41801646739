"""container/verify.py, the image check's judge of masks: it must catch what the evaluation
would."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("container_verify", ROOT / "container" / "verify.py")
verify_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_module)
verify = verify_module.verify


def image(array, spacing=(0.8, 0.8, 2.5), origin=(-100.0, 20.0, 5.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    return img


@pytest.fixture
def run(tmp_path):
    inputs, outputs = tmp_path / "inputs", tmp_path / "outputs"
    inputs.mkdir()
    outputs.mkdir()
    ct = np.full((6, 10, 12), -1000, np.int16)
    sitk.WriteImage(image(ct), str(inputs / "case_0000.nii.gz"))
    mask = np.zeros(ct.shape, np.uint8)
    mask[2:4, 3:6, 4:8] = 1
    sitk.WriteImage(image(mask), str(outputs / "case.nii.gz"))
    return inputs, outputs, mask


def test_a_correct_mask_passes(run):
    inputs, outputs, _ = run
    assert verify(inputs, outputs) == []


@pytest.mark.parametrize("change, expected", [
    (lambda m: image(m, spacing=(0.8, 0.8, 2.5001)), "spacing"),
    (lambda m: image(m, origin=(-100.0, 20.0, 5.5)), "origin"),
    (lambda m: image(m[:, :, :-1]), "size"),
    (lambda m: image(m.astype(np.int16)), "voxel type"),
    (lambda m: image(m * 2), "outside {0, 1}"),
])
def test_wrong_grid_type_or_values_are_caught(run, change, expected):
    inputs, outputs, mask = run
    sitk.WriteImage(change(mask), str(outputs / "case.nii.gz"))
    problems = verify(inputs, outputs)
    assert len(problems) == 1 and expected in problems[0], problems


def test_stray_missing_and_hidden_files_are_caught(run):
    inputs, outputs, _ = run
    (outputs / ".case.3f2a.nii.gz").write_bytes(b"")
    sitk.WriteImage(image(np.zeros((6, 10, 12), np.int16)), str(inputs / "other_0000.nii.gz"))
    problems = verify(inputs, outputs)
    assert any("stray" in p and ".case.3f2a" in p for p in problems)
    assert any("other.nii.gz: missing" in p for p in problems)


def test_masks_must_equal_the_reference_run(run, tmp_path):
    inputs, outputs, mask = run
    reference = tmp_path / "reference"
    reference.mkdir()
    changed = mask.copy()
    changed[0, 0, 0] = 1
    sitk.WriteImage(image(changed), str(reference / "case.nii.gz"))
    problems = verify(inputs, outputs, same_as=reference)
    assert len(problems) == 1 and "differs" in problems[0]
    assert problems[0].endswith("1 of 25 voxels marked by either differ (4.000 %)")
    assert verify(inputs, outputs, same_as=outputs) == []


def test_the_agreement_is_counted_over_the_voxels_either_mask_marks(run, tmp_path, capsys):
    inputs, outputs, mask = run  # 24 voxels marked
    reference = tmp_path / "reference"
    reference.mkdir()
    changed = mask.copy()
    changed[2, 3, 4] = 0  # one voxel unmarked
    changed[5, 9, 11] = 1  # one voxel marked elsewhere
    sitk.WriteImage(image(changed), str(reference / "case.nii.gz"))
    said = []
    problems = verify(inputs, outputs, same_as=reference, tolerance=10.0, report=said.append)
    assert problems == [] and said == [
        f"{outputs / 'case.nii.gz'}: 2 of 25 voxels marked by either differ (8.000 %)"]
    assert len(verify(inputs, outputs, same_as=reference, tolerance=7.9)) == 1
    # the command line prints the line for every case, and fails beyond the tolerance
    args = ["--inputs", str(inputs), "--outputs", str(outputs), "--same-as", str(reference)]
    assert verify_module.main(args + ["--tolerance", "8"]) == 0
    assert "2 of 25 voxels marked by either differ (8.000 %)" in capsys.readouterr().out
    assert verify_module.main(args + ["--tolerance", "0.1"]) == 1


def test_two_empty_masks_agree_with_nothing_marked(run, tmp_path):
    inputs, outputs, mask = run
    for folder in (outputs, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        sitk.WriteImage(image(np.zeros_like(mask)), str(folder / "case.nii.gz"))
    said = []
    assert verify(inputs, outputs, same_as=tmp_path / "empty", report=said.append) == []
    assert said[0].endswith("0 of 0 voxels marked by either differ (0.000 %)")


def test_a_run_meant_to_fail_must_leave_the_folder_empty(run, tmp_path):
    inputs, outputs, _ = run
    assert "should be empty" in verify(inputs, outputs, empty=True)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert verify(inputs, empty, empty=True) == []


def test_a_case_meant_to_fail_must_have_no_mask_and_the_others_theirs(run):
    inputs, outputs, mask = run
    sitk.WriteImage(image(np.zeros((6, 10, 12), np.int16)), str(inputs / "big_0000.nii.gz"))
    assert verify(inputs, outputs, missing=["big"]) == []
    problems = verify(inputs, outputs, missing=["case"])
    assert sorted(p.rsplit(": ", 1)[1] for p in problems) == ["missing", "written, but this "
                                                               "case was meant to fail"]
    sitk.WriteImage(image(mask), str(outputs / "big.nii.gz"))
    assert "meant to fail" in verify(inputs, outputs, missing=["big"])[0]


def test_a_stopped_run_may_miss_masks_but_not_all(run, tmp_path):
    inputs, outputs, _ = run
    sitk.WriteImage(image(np.zeros((6, 10, 12), np.int16)), str(inputs / "later_0000.nii.gz"))
    assert verify(inputs, outputs, some=True) == []
    (outputs / ".later.0123456789ab.partial").write_bytes(b"")
    assert "stray" in verify(inputs, outputs, some=True)[0]
    empty = tmp_path / "none"
    empty.mkdir()
    assert "no mask at all" in verify(inputs, empty, some=True)[0]
