"""Restoring the network's decision onto the input grid (``inference.restore``)."""

import numpy as np
import pytest
import torch

from inference.plans import Plan
from inference.preprocess import preprocess
from inference.restore import restore
from tests.inference.test_preprocess import PLAN, make_case, rotation


@pytest.mark.parametrize("direction", [
    tuple(np.eye(3).ravel()),
    tuple(np.diag([-1.0, -1.0, 1.0]).ravel()),
    (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),
    tuple((rotation(15) @ np.diag([-1, 1, 1])).ravel()),
], ids=["LPS", "RAS", "permuted", "oblique"])
@pytest.mark.parametrize("device", ["numpy", "torch"])
def test_restore_puts_the_decision_back_on_the_input_grid(direction, device):
    array, lesion, spacing, direction = make_case(direction)
    to_device = np.ascontiguousarray if device == "numpy" else (
        lambda a: torch.from_numpy(np.ascontiguousarray(a)))
    prepared = preprocess(array, spacing, direction, PLAN, to_device)
    volume = prepared.volume if device == "numpy" else prepared.volume.numpy()
    # The network is replaced by "bright means lesion" at network resolution.
    hu = volume * PLAN.normalization.std + PLAN.normalization.mean
    probability = (hu > 120).astype(np.float32)
    mask = restore(probability, probability > 0.5, prepared, 0.5)
    assert mask.shape == array.shape and mask.dtype == np.uint8
    dice = 2 * (mask.astype(bool) & lesion).sum() / (mask.sum() + lesion.sum())
    assert dice > 0.85


def sphere_fraction(prepared, centre_mm, radius_mm, samples=4):
    """Each network voxel's fraction inside a sphere (crop coordinates, mm), by supersampling."""
    axes = []
    for n, s, c in zip(prepared.body.shape, prepared.spacing_zyx, centre_mm):
        offsets = (np.arange(samples) + 0.5) / samples
        axes.append(((np.arange(n)[:, None] + offsets) * s).ravel() - c)
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    inside = (z ** 2 + y ** 2 + x ** 2 <= radius_mm ** 2).astype(np.float32)
    nz, ny, nx = prepared.body.shape
    return inside.reshape(nz, samples, ny, samples, nx, samples).mean(axis=(1, 3, 5))


@pytest.mark.parametrize("radius_mm, min_dice", [(3.0, 0.62), (5.0, 0.9)])
def test_restoring_soft_lesions_keeps_their_edges(radius_mm, min_dice):
    """A network outputting each coarse voxel's exact lesion fraction, restored at p > 0.5.

    Zeroing everything but the kept voxels before upsampling pulled every edge inward, and
    scored under these bounds; interpolating towards the neighbours' real probability keeps
    the edges where they are.
    """
    plan = Plan(target_spacing=(2.0, 2.0, 3.0), patch_size=(64, 64), preset="tiny")
    shape, spacing_xyz = (40, 120, 120), (0.8, 0.8, 2.5)
    prepared = preprocess(np.full(shape, 40.0, np.float32), spacing_xyz,
                          tuple(np.eye(3).ravel()), plan)
    assert prepared.box == tuple(slice(0, n) for n in shape)  # crop = input grid
    spacing_zyx = spacing_xyz[::-1]
    centre = tuple(n * s / 2 + 0.37 for n, s in zip(shape, spacing_zyx))  # off the grid
    idx = np.indices(shape)
    truth = sum(((i + 0.5) * s - c) ** 2 for i, s, c in zip(idx, spacing_zyx, centre)) \
        <= radius_mm ** 2
    probability = sphere_fraction(prepared, centre, radius_mm)
    mask = restore(probability, probability > 0.5, prepared, 0.5).astype(bool)
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > min_dice


def test_nothing_kept_gives_an_exactly_empty_mask():
    array, _, spacing, direction = make_case(tuple(np.eye(3).ravel()))
    prepared = preprocess(array, spacing, direction, PLAN)
    probability = np.full(prepared.body.shape, 0.9, np.float32)
    mask = restore(probability, np.zeros(probability.shape, bool), prepared, 0.5)
    assert mask.shape == array.shape and not mask.any()
