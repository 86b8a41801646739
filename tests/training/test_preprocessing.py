"""python -m training preprocess: identical inputs to inference, aligned labels, resume."""

import json
import os

import numpy as np
import SimpleITK as sitk

from inference.plans import Plan
from training.preprocessing import cached_cases, load_case, run_preprocess


def test_cache_holds_every_case_with_metadata(cache, dataset):
    cases = cached_cases(cache)
    assert len(cases) == 5
    image, label, meta = load_case(cache, cases[0])
    assert image.dtype == np.float16 and label.dtype == np.uint8
    assert image.shape == label.shape == tuple(meta["shape"])
    assert isinstance(image, np.memmap)
    coords = np.asarray(meta["lesion_coords"])
    if len(coords):
        assert label[tuple(coords.T)].all()


def test_resume_skips_finished_cases(cache, dataset, planned):
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    (cache / "phantom_002.json").unlink()  # as if killed before this case finished
    run_preprocess(dataset, planned, cache, workers=1, progress=False)
    after = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    redone = sorted(name for name in after if after[name] != stamps[name])
    assert redone == ["phantom_002.npy", "phantom_002_seg.npy"]
    assert not list(cache.glob(".*.tmp"))


def test_label_lies_on_the_lesion_after_reorientation_and_resampling(tmp_path, planned):
    """An image whose bright voxels are exactly the label, in RAS with odd spacing."""
    data = tmp_path / "data"
    (data / "imagesTr").mkdir(parents=True)
    (data / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    label = np.zeros((14, 70, 60), np.uint8)
    label[4:9, 10:30, 35:50] = 1
    label[8:12, 45:60, 8:20] = 1
    hu = np.where(label, 250, 40).astype(np.int16) + rng.integers(-3, 4, label.shape).astype(
        np.int16)
    for array, name in ((hu, "imagesTr/case_0000.nii.gz"), (label, "labelsTr/case.nii.gz")):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.7, 2.1, 3.3))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        image.SetOrigin((100.0, 80.0, -40.0))
        sitk.WriteImage(image, str(data / name))
    cache = tmp_path / "cache"
    run_preprocess(data, planned, cache, progress=False)
    image, seg, meta = load_case(cache, "case")
    plan = Plan.load(planned)
    bright = image.astype(np.float32) > ((145 - plan.normalization.mean) /
                                         plan.normalization.std)
    dice = 2 * (bright & (seg > 0)).sum() / (bright.sum() + seg.sum())
    assert seg.sum() > 50 and dice > 0.95
    assert json.loads((cache / "case.json").read_text())["healthy"] is False
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]
