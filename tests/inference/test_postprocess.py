"""Connected-component filtering: what survives decides a healthy scan's score."""

from __future__ import annotations

import numpy as np
import pytest

from inference.postprocess import remove_components

SPACING_ZYX = (3.0, 0.8, 0.8)  # one voxel = 1.92 mm3


def blob(mask: np.ndarray, z: int, y: int, x: int, voxels: int) -> None:
    """A run of `voxels` face-connected voxels along x."""
    mask[z, y, x : x + voxels] = 1


def test_components_below_the_volume_in_mm3_are_removed():
    mask = np.zeros((8, 20, 20), np.uint8)
    blob(mask, 1, 2, 2, 5)  # 9.60 mm3: below 10
    blob(mask, 5, 10, 2, 6)  # 11.52 mm3: above, though 6 voxels < 10
    out = remove_components(mask, SPACING_ZYX, min_volume_mm3=10.0)
    assert out.dtype == np.uint8
    assert out[1].sum() == 0
    np.testing.assert_array_equal(out[5], mask[5])


def test_a_component_exactly_at_the_threshold_is_kept():
    mask = np.zeros((4, 8, 8), bool)
    blob(mask, 1, 1, 1, 4)  # 4 voxels of 2 mm3
    assert remove_components(mask, (2.0, 1.0, 1.0), min_volume_mm3=8.0).sum() == 4


def test_low_confidence_component_is_removed():
    mask = np.zeros((6, 16, 16), np.uint8)
    probability = np.zeros(mask.shape, np.float32)
    mask[1, 2:6, 2:6] = 1
    probability[1, 2:6, 2:6] = 0.55
    probability[1, 2, 2] = 0.99  # one hot voxel does not rescue a faint blob
    mask[4, 8:12, 8:12] = 1
    probability[4, 8:12, 8:12] = 0.9
    out = remove_components(mask, SPACING_ZYX, 0.0, min_confidence=0.7, probability=probability)
    assert out[1].sum() == 0
    np.testing.assert_array_equal(out[4], mask[4])
    kept_all = remove_components(mask, SPACING_ZYX, 0.0, min_confidence=0.5,
                                 probability=probability.astype(np.float16))
    np.testing.assert_array_equal(kept_all, mask)


def test_mask_with_nothing_surviving_is_exactly_empty():
    mask = np.zeros((5, 9, 9), np.int32)
    mask[2, 4, 4] = 1
    mask[0, 0, 0] = 3  # any nonzero value is foreground
    out = remove_components(mask, SPACING_ZYX, min_volume_mm3=100.0)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    assert not out.any()
    assert not remove_components(np.zeros((3, 4, 5), bool), SPACING_ZYX, 1.0).any()


def test_diagonal_neighbours_are_one_component_at_26_and_two_at_6():
    mask = np.zeros((4, 6, 6), np.uint8)
    mask[1, 1, 1] = mask[2, 2, 2] = 1  # touching only at a corner
    threshold = 1.5 * np.prod(SPACING_ZYX)  # more than one voxel, less than two
    joined = remove_components(mask, SPACING_ZYX, threshold, connectivity=26)
    split = remove_components(mask, SPACING_ZYX, threshold, connectivity=6)
    np.testing.assert_array_equal(joined, mask)
    assert not split.any()


def test_components_away_from_the_origin_keep_their_place():
    mask = np.zeros((30, 40, 50), np.uint8)
    mask[20:23, 30:34, 40:45] = 1
    mask[5, 5, 5] = 1
    out = remove_components(mask, (1.0, 1.0, 1.0), min_volume_mm3=2.0)
    expected = mask.copy()
    expected[5, 5, 5] = 0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kwargs", [
    dict(spacing_zyx=(1.0, 1.0)),
    dict(spacing_zyx=(1.0, 0.0, 1.0)),
    dict(connectivity=8),
    dict(min_confidence=0.5),  # no probability map
    dict(min_confidence=1.5, probability=np.zeros((3, 4, 5), np.float32)),
    dict(probability=np.zeros((3, 4, 4), np.float32)),
])
def test_bad_arguments_are_refused(kwargs):
    arguments = dict(mask_zyx=np.zeros((3, 4, 5), np.uint8), spacing_zyx=(1.0, 1.0, 1.0),
                     min_volume_mm3=1.0)
    arguments.update(kwargs)
    with pytest.raises(ValueError):
        remove_components(**arguments)


def test_two_voxels_one_apart_in_a_tiny_box():
    """cc3d's binary-image mode crashed on this ("maximum length exception")."""
    mask = np.array([[[1, 0, 1]]], np.uint8)
    assert remove_components(mask, (1.0, 1.0, 1.0), 0.0).tolist() == [[[1, 0, 1]]]
    assert remove_components(mask, (1.0, 1.0, 1.0), 2.0).sum() == 0


def test_random_small_masks_never_crash():
    rng = np.random.default_rng(0)
    for _ in range(300):
        mask = (rng.random(tuple(rng.integers(1, 6, 3))) < 0.5).astype(np.uint8)
        kept = remove_components(mask, (1.0, 1.0, 1.0), 0.0)
        assert np.array_equal(kept, mask)
