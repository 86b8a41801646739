"""The container's steps after preprocessing, written once for every caller.

network probability (sliding window with the plan's tiling, over the body) -> decide
(threshold and component filter at network resolution) -> restore onto the input grid.
The container (``Predictor``), the threshold search, validation during training, the
resolution ceiling and export's parity check all run these functions, so what they
score is what the container writes and a fix lands everywhere at once. torch is
imported only by the two functions that run a torch network.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from inference.arrays import array_ops
from inference.plans import Plan, PostProcessing
from inference.postprocess import remove_components
from inference.preprocess import Prepared, body_mask, pad_value
from inference.restore import restore
from inference.sliding_window import sliding_window


def network_forward(model, tiles, autocast: bool = False):
    """Float32 probabilities of a torch ``model`` on tiles; no autograd, fp16 autocast if asked."""
    import torch

    with torch.inference_mode(), torch.autocast(tiles.device.type, torch.float16,
                                                enabled=autocast):
        return model(tiles).float()


def module_predictor(network, device) -> Callable:
    """``predict(tiles)`` of an in-memory network (training's): eval mode, fp16 autocast on CUDA.

    ``network`` is put in eval mode; the caller restores its training mode.
    """
    import torch

    from inference.model import LesionProbability

    model = LesionProbability(network).eval()
    return partial(network_forward, model, autocast=torch.device(device).type == "cuda")


def network_probability(volume, predict: Callable, plan: Plan, batch_size: int = 8,
                        tile_step: float | None = None, body: np.ndarray | None = None,
                        **window) -> np.ndarray:
    """Lesion probability (numpy float32, z, y, x) of a normalised volume at network resolution.

    The plan's tiling (its ``tile_step`` unless one is given) and padding; tiles missing
    ``body`` (``body_mask`` of the volume when not given) are skipped. ``window`` goes to
    ``sliding_window`` (slab_slices, to_host, oom_errors, progress).
    """
    body = body_mask(volume, plan) if body is None else body
    probability = sliding_window(
        volume, predict, plan.patch_size, plan.tile_step if tile_step is None else tile_step,
        plan.context_slices, batch_size, body, pad_value=pad_value(plan), **window)
    return array_ops(probability).to_host(probability)


def decide(probability: np.ndarray, spacing_zyx, post: PostProcessing) -> np.ndarray:
    """Kept lesions (uint8) at network resolution: the threshold, then the component filter."""
    return remove_components(probability > post.threshold, spacing_zyx, post.min_volume_mm3,
                             post.min_confidence, probability)


def mask_on_input(probability: np.ndarray, prepared: Prepared, post: PostProcessing,
                  to_device: Callable = np.asarray) -> np.ndarray:
    """The container's uint8 mask on the input grid from a network-resolution probability."""
    kept = decide(probability, prepared.spacing_zyx, post)
    return restore(probability, kept, prepared, post.threshold, to_device)
