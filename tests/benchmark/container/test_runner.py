"""One run of one case: another tool's command on the same workspace, and the mask's grid."""

import sys

import pytest
import SimpleITK as sitk

from benchmark.container.memory import rss_available
from benchmark.container.runner import grid_difference, run_case

# A stand-in tool: writes a mask of the input's size, its origin moved by SHIFT mm.
WRITER = """
import sys, pathlib, SimpleITK as sitk
inputs, outputs, shift = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3])
case = next(inputs.glob("*_0000.nii.gz"))
image = sitk.ReadImage(str(case))
mask = sitk.Cast(image > 0, sitk.sitkUInt8)
mask.CopyInformation(image)
mask.SetOrigin([o + shift for o in image.GetOrigin()])
sitk.WriteImage(mask, str(outputs / case.name.replace("_0000.nii.gz", ".nii.gz")))
"""


def writer(shift: float):
    def command(inputs, outputs):
        return [sys.executable, "-c", WRITER, str(inputs), str(outputs), str(shift)], None
    return command


def _write(path, origin=(0.0, 0.0, 0.0), size=(8, 6, 4)):
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def test_grid_difference_names_what_differs(tmp_path):
    case = _write(tmp_path / "a_0000.nii.gz")
    assert grid_difference(_write(tmp_path / "same.nii.gz"), case) is None
    assert grid_difference(_write(tmp_path / "moved.nii.gz", origin=(0, 0, 5.0)),
                           case).startswith("origin")
    assert grid_difference(_write(tmp_path / "small.nii.gz", size=(8, 6, 3)),
                           case).startswith("size")


@pytest.mark.skipif(not rss_available(), reason="psutil (the bench extra) measures RSS")
@pytest.mark.parametrize("shift, ok", [(0.0, True), (3.0, False)])
def test_another_tools_command_runs_on_the_workspace_and_its_mask_is_checked(tmp_path, shift,
                                                                             ok):
    case = _write(tmp_path / "c_0000.nii.gz")
    kept = tmp_path / "kept" / "c.nii.gz"
    run = run_case(case, command=writer(shift), keep_mask=kept)
    assert run.exit_code == 0 and run.timings == {}
    assert run.output_ok is ok  # on the input's grid, or not: the origin counts too
    assert (run.error is None) is ok and (ok or "origin" in run.error)
    assert sitk.ReadImage(str(kept)).GetSize() == (8, 6, 4)
