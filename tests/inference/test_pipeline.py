"""The pipeline every caller shares: body mask, probability, decision, restore."""

import dataclasses

import numpy as np
import pytest
import torch

from inference.nifti import CtVolume, Grid
from inference.plans import Normalization, Plan
from inference.predictor import Predictor
from inference.preprocess import body_mask

SPACING_XYZ = (0.8, 0.8, 2.5)


class BrightIsLesion:
    """A stand-in backend: the lesion probability rises smoothly with the centre slice's HU."""

    name = "stub"
    oom_errors = ()

    def __init__(self, plan: Plan):
        self.plan = plan

    def prepare(self, volume):
        return np.ascontiguousarray(volume, np.float32)

    def __call__(self, tiles):
        n = self.plan.normalization
        hu = tiles[:, tiles.shape[1] // 2] * n.std + n.mean
        return 1 / (1 + np.exp(-(hu - 120) / 20))

    def release(self):
        pass


def two_spheres(shape_zyx=(32, 110, 110)):
    """Soft tissue with a large bright sphere (r 9 mm) and a small one (r 3 mm); distances in mm."""
    array = np.full(shape_zyx, -1000.0, np.float32)
    array[2:-2, 5:-5, 5:-5] = 40.0
    idx = np.indices(shape_zyx).astype(float)
    spacing_zyx = SPACING_XYZ[::-1]
    centres = {"large": (40.0, 40.0, 40.0), "small": (40.0, 60.0, 68.0)}

    def distance(centre):
        return np.sqrt(sum(((i + 0.5) * s - c) ** 2 for i, s, c in zip(idx, spacing_zyx, centre)))

    array[distance(centres["large"]) <= 9] = 200.0
    array[distance(centres["small"]) <= 3] = 200.0
    return array, {k: distance(c) for k, c in centres.items()}


def test_saved_probability_thresholded_is_the_mask_except_at_removed_lesions(tiny_weights):
    """--save-probabilities and the mask tell one story: restoring no longer pulls the kept
    lesion's edge towards 0, so the two differ only next to the component filter's removals."""
    array, distance = two_spheres()
    direction = tuple(np.diag([-1.0, -1.0, 1.0]).ravel())  # RAS: restore undoes the flips
    volume = CtVolume(array, Grid(array.shape[::-1], SPACING_XYZ, (0.0, 0.0, 0.0), direction))
    plan = Plan(preset="tiny", patch_size=(64, 64), target_spacing=(2.0, 2.0, 4.0))
    plan.postprocessing = dataclasses.replace(plan.postprocessing, min_volume_mm3=400.0)
    predictor = Predictor(tiny_weights, device="cpu", backend="onnx", plan=plan)
    predictor.backend = BrightIsLesion(plan)
    result = predictor.predict(volume, probabilities=True)
    above = result.probability > plan.postprocessing.threshold
    mask = result.mask.astype(bool)
    assert mask[distance["large"] <= 7].all()  # kept
    assert above[distance["small"] <= 1.5].all() and not mask[distance["small"] <= 6].any()
    near_removed = distance["small"] <= 3 + 2 * max(plan.target_spacing)
    assert np.array_equal(mask[~near_removed], above[~near_removed])


@pytest.mark.parametrize("norm, threshold_hu", [
    (Normalization(), -500.0),  # the clip floor (-200 HU) lies above the body threshold
    (Normalization(-1000.0, 1000.0, 0.0, 300.0), -500.0),
    (Normalization(-50.0, 200.0, 70.0, 45.0), -500.0),
    (Normalization(), -100.0),
])
def test_body_mask_is_the_same_on_the_float16_cache_and_in_the_container(norm, threshold_hu):
    """Training's cache stores the container's float32 volume as float16: same body, voxel for
    voxel, so validation skips exactly the container's tiles."""
    plan = Plan(normalization=norm, body_threshold_hu=threshold_hu)
    level = (max(threshold_hu, norm.clip_low + 1) - norm.mean) / norm.std
    rng = np.random.default_rng(0)
    grid = np.float16(level) + np.arange(-4, 5) * np.spacing(np.float16(level))
    midpoints = ((grid[:-1].astype(np.float32) + grid[1:]) / 2).astype(np.float32)
    values = np.concatenate([
        level + rng.normal(0, 0.01, 100_000), grid, midpoints,
        np.nextafter(midpoints, np.float32(np.inf)), np.nextafter(midpoints, np.float32(-np.inf)),
        [(norm.clip_low - norm.mean) / norm.std]]).astype(np.float32).reshape(1, 1, -1)
    container = body_mask(values, plan)
    assert np.array_equal(body_mask(values.astype(np.float16), plan), container)
    assert np.array_equal(body_mask(torch.from_numpy(values), plan), container)
    assert 0.3 < container.mean() < 0.7 and not container[0, 0, -1]  # the clip floor is air
