"""python -m training plan: fingerprint, plan values, and one clear line per bad input."""

import json
import logging
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from inference.plans import Plan
from training.__main__ import main
from training.planning import fingerprint, make_plan


def test_plan_values_are_sane(dataset, planned):
    plan = Plan.load(planned)
    fp = json.loads((planned.parent / "fingerprint.json").read_text())
    n = plan.normalization
    assert plan.target_spacing == (2.5, 2.5, 4.0)
    assert plan.patch_size == (64, 64) and plan.context_slices == 3 and plan.preset == "tiny"
    # the clip range covers lesions and their host organs, not air or dense bone
    assert -400 < n.clip_low < 0 < n.clip_high < 1500
    assert n.clip_low < n.mean < n.clip_high and 10 < n.std < 500
    assert fp["n_cases"] == 5 and fp["lesion_volumes_mm3"]["n"] > 0
    assert fp["median_spacing"] == [2.5, 2.5, 4.0]
    # the whole network is in the plan: the preset's defaults, the plan's patch and slices
    from inference.network_config import config_to_dict, get_config

    stored = json.loads(planned.read_text())["network"]
    assert stored == config_to_dict(get_config("tiny", patch_size=(64, 64), in_channels=3))


def test_default_target_spacing_is_coarse(dataset):
    plan = make_plan(fingerprint(dataset, progress=False), preset="tiny", patch=(64, 64))
    assert plan.target_spacing == (5.0, 5.0, 4.0)  # in-plane 2x median, slices max(4, 3)


def _copy(dataset, tmp_path):
    target = tmp_path / "data"
    shutil.copytree(dataset, target)
    return target


def _errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_empty_dataset_stops_with_one_line(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["plan", "-d", str(tmp_path / "empty"), "-o", str(tmp_path / "p.json"),
                 "--quiet"]) == 2
    lines = _errors(caplog)
    assert len(lines) == 1 and "empty" in lines[0] and "imagesTr" in lines[0]


def _bad_label(data, case, array=None, spacing=None):
    path = data / "labelsTr" / f"{case}.nii.gz"
    image = sitk.ReadImage(str(path))
    if array is not None:
        new = sitk.GetImageFromArray(array)
        new.CopyInformation(image)
        image = new
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("problem", ["no_label", "grid", "values", "unreadable"])
def test_bad_case_is_skipped_with_one_line_naming_the_file(dataset, tmp_path, caplog, problem):
    data = _copy(dataset, tmp_path)
    case = "phantom_001"
    label = data / "labelsTr" / f"{case}.nii.gz"
    image = data / "imagesTr" / f"{case}_0000.nii.gz"
    if problem == "no_label":
        label.unlink()
        named = image
    elif problem == "grid":
        named = _bad_label(data, case, spacing=(3.0, 3.0, 4.0))
    elif problem == "values":
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(label)))
        array[0, 0, 0] = 2
        named = _bad_label(data, case, array=array)
    else:
        image.write_bytes(b"")
        named = image
    out = tmp_path / "plans.json"
    assert main(["plan", "-d", str(data), "-o", str(out), "--preset", "tiny", "--patch", "64",
                 "64", "--quiet"]) == 0
    lines = _errors(caplog)
    assert len(lines) == 1, lines
    assert str(named) in lines[0] and "skipped" in lines[0]
    fp = json.loads((tmp_path / "fingerprint.json").read_text())
    assert fp["n_cases"] == 4 and case not in [c["case"] for c in fp["cases"]]


def test_target_spacing_option(dataset, tmp_path):
    out = tmp_path / "plans.json"
    assert main(["plan", "-d", str(dataset), "-o", str(out), "--target-spacing", "2", "2", "3",
                 "--preset", "tiny", "--patch", "64", "64", "--quiet"]) == 0
    assert Plan.load(out).target_spacing == (2.0, 2.0, 3.0)
    assert np.isfinite(Plan.load(out).normalization.mean)


def test_the_initial_minimum_volume_never_drops_a_small_lesion_of_the_dataset():
    from inference.plans import PostProcessing
    from training.planning import initial_postprocessing

    default = PostProcessing().min_volume_mm3
    assert initial_postprocessing({}).min_volume_mm3 == default  # no lesion to go by
    small = {"lesion_volumes_mm3": {"p05": default / 5}}
    assert initial_postprocessing(small).min_volume_mm3 == pytest.approx(default / 10)
    large = {"lesion_volumes_mm3": {"p05": default * 10}}
    assert initial_postprocessing(large).min_volume_mm3 == default
