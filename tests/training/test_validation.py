"""Validation during training runs the container's pipeline on the cached volumes."""

import numpy as np
import torch
from torch import nn

from inference.nifti import CtVolume, Grid
from inference.plans import Plan
from inference.preprocess import pad_value, preprocess
from inference.sliding_window import sliding_window
from training.preprocessing import IMAGE_DTYPE, prepare_case
from training.validation import predict_cached


class SureEverywhere(nn.Module):
    """Lesion logits far above background for every voxel of every tile it is given."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
        logits[:, 1] = 10.0
        return logits


def test_validation_predicts_the_tiles_the_container_predicts():
    """Tissue at -300 HU (under the -200 HU clip floor, over the -500 HU body threshold)
    beside soft tissue: the cache and the container must agree on whether it is body."""
    plan = Plan(preset="tiny", patch_size=(32, 32), target_spacing=(2.0, 2.0, 4.0))
    array = np.full((6, 48, 160), -1000.0, np.float32)
    array[:, 4:44, 4:40] = 40.0
    array[:, 4:44, 40:156] = -300.0
    grid = Grid(array.shape[::-1], plan.target_spacing, (0.0, 0.0, 0.0),
                tuple(np.eye(3).ravel()))
    image, _, _ = prepare_case(CtVolume(array, grid), None, plan)
    cached = image.astype(IMAGE_DTYPE)  # as training's cache stores it
    predicted = predict_cached(SureEverywhere(), cached, plan, "cpu")
    prepared = preprocess(array, plan.target_spacing, grid.direction, plan)
    covered = sliding_window(torch.from_numpy(np.asarray(prepared.volume, np.float32)),
                             lambda tiles: torch.ones(tiles.shape[0], *tiles.shape[2:]),
                             plan.patch_size, plan.tile_step, plan.context_slices, 8,
                             prepared.body, pad_value=pad_value(plan)).numpy()
    assert predicted.shape == covered.shape
    assert np.array_equal(predicted > 0.5, covered > 0.5)
    assert (covered > 0.5).any() and not (covered > 0.5).all()  # some tiles are skipped
