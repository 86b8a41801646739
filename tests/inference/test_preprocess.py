"""Preprocessing and restore: reorientation, body crop, resampling, exact input grid."""

import itertools

import numpy as np
import pytest
import torch

from inference.geometry import Reorientation, body_box
from inference.plans import Plan
from inference.preprocess import preprocess

PLAN = Plan(target_spacing=(2.0, 2.0, 4.0), patch_size=(64, 64), preset="tiny")


def directions():
    """All 48 axis-aligned directions (permutations x signs), as row-major 3x3."""
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for col, row in enumerate(perm):
                d[row, col] = signs[col]
            yield tuple(d.ravel())


def rotation(angle_deg, axis=2):
    a = np.radians(angle_deg)
    c, s = np.cos(a), np.sin(a)
    r = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@pytest.mark.parametrize("direction", list(directions()))
def test_reorientation_reaches_target_and_inverts(direction):
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    reo = Reorientation.to_target(direction, "LPS")
    out = reo.apply(array)
    assert np.array_equal(reo.invert(out), array)
    # The voxel at array index 0 moves to where world-LPS ordering puts it: check by
    # comparing world coordinates of two voxels along each target axis.
    d = np.array(direction).reshape(3, 3)
    idx_of = {v: np.argwhere(array == v)[0][::-1] for v in (out[0, 0, 0], out[0, 0, 1],
                                                             out[0, 1, 0], out[1, 0, 0])}
    origin = d @ idx_of[out[0, 0, 0]]
    for value, world_axis in ((out[0, 0, 1], 0), (out[0, 1, 0], 1), (out[1, 0, 0], 2)):
        step = d @ idx_of[value] - origin
        assert step[world_axis] > 0.5


def test_oblique_direction_maps_to_nearest_axes():
    d = rotation(20) @ np.diag([-1, -1, 1])
    reo = Reorientation.to_target(tuple(d.ravel()), "LPS")
    assert reo.perm == (0, 1, 2) and reo.flips == (False, True, True)


def test_body_box_ignores_padding_and_air():
    a = np.full((10, 20, 30), -1000.0, np.float32)
    a[:, :, :5] = -3024
    a[2:7, 4:15, 8:20] = 40
    box = body_box(a, -500, margin=1)
    assert box == (slice(1, 8), slice(3, 16), slice(7, 21))
    assert body_box(torch.from_numpy(a), -500, margin=1) == box
    assert body_box(np.full((3, 3, 3), -1000.0), -500) is None


def make_case(direction, shape_zyx=(30, 90, 110), spacing_xyz=(0.8, 0.9, 2.5)):
    """A body with a bright 'lesion' block; returns volume and the lesion mask."""
    a = np.full(shape_zyx, -1000.0, np.float32)
    a[3:27, 10:80, 12:100] = 40.0
    lesion = np.zeros(shape_zyx, bool)
    lesion[10:20, 30:50, 40:70] = True
    a[lesion] = 200.0
    return a, lesion, spacing_xyz, direction


@pytest.mark.parametrize("smoothing", [False, True])
@pytest.mark.parametrize("slices", [1, 3])
def test_numpy_and_torch_preprocessing_agree(smoothing, slices):
    """The torch path resizes slab by slab (in plane, then along z): same result as numpy."""
    array, _, spacing, direction = make_case(tuple(np.diag([-1.0, -1.0, 1.0]).ravel()))
    array = np.concatenate([array] * slices)  # 3x: several 32-slice slabs
    plan = Plan.from_dict({**PLAN.to_dict(), "smoothing": smoothing})
    a = preprocess(array, spacing, direction, plan)
    uploads = []

    def to_device(x):
        uploads.append(x.shape[0])
        return torch.from_numpy(np.ascontiguousarray(x))

    b = preprocess(array, spacing, direction, plan, to_device)
    np.testing.assert_allclose(a.volume, b.volume.numpy(), atol=1e-4)
    assert np.array_equal(a.body, b.body) and a.box == b.box
    assert a.spacing_zyx == pytest.approx((4.0, 2.0, 2.0), rel=0.05)
    assert max(uploads) <= 32  # the device never held the whole crop


def test_no_body_at_all():
    array = np.full((5, 20, 20), -1024.0, np.float32)
    prepared = preprocess(array, (1, 1, 1), tuple(np.eye(3).ravel()), PLAN)
    assert prepared.box is None


def test_box_smoothing_is_the_mean_over_the_box_inside_the_array():
    from inference.preprocess import box_smooth, smoothing_widths

    a = np.random.default_rng(0).normal(size=(7, 9, 11)).astype(np.float32)
    expected = np.zeros_like(a)
    for z in range(7):
        for y in range(9):
            expected[z, y] = a[max(z - 1, 0):z + 2, max(y - 2, 0):y + 3].mean(axis=(0, 1))
    np.testing.assert_allclose(box_smooth(a, (3, 5, 1)), expected, atol=1e-5)
    np.testing.assert_allclose(box_smooth(torch.from_numpy(a), (3, 5, 1)).numpy(), expected,
                               atol=1e-5)
    assert smoothing_widths((3.0, 0.8, 0.8), (3.0, 2.0, 2.0)) == (1, 3, 3)
    assert smoothing_widths((1.0, 0.5, 0.7), (3.0, 2.0, 2.0)) == (3, 5, 3)


def test_smoothing_lowers_noise_at_network_resolution():
    rng = np.random.default_rng(0)
    array = np.full((40, 120, 120), 40.0, np.float32) + rng.normal(0, 20, (40, 120, 120))
    array = array.astype(np.float32)
    smoothed = Plan(**{**PLAN.to_dict(), "normalization": PLAN.normalization,
                       "postprocessing": PLAN.postprocessing, "smoothing": True})
    eye = tuple(np.eye(3).ravel())
    noisy = preprocess(array, (0.8, 0.8, 1.0), eye, PLAN).volume[2:-2, 2:-2, 2:-2].std()
    smooth = preprocess(array, (0.8, 0.8, 1.0), eye, smoothed).volume[2:-2, 2:-2, 2:-2].std()
    assert smooth < noisy / 2.5
