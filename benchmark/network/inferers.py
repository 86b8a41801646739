"""The two sliding-window inferers that ``benchmark.network.engines`` compares, on equal terms.

Ours is ``inference.sliding_window.sliding_window``; MONAI's is
``monai.inferers.sliding_window_inference`` run 2D over each slice's 3-slice stack with
the slices as its batch. Both call the same network through the same ``predict``
function (the container's ``inference.pipeline.network_forward``, fp16 autocast on
CUDA). ``benchmark.network.engines`` says why this is fair.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np


def make_input(shape_zyx, preset: str = "fast", seed: int = 0):
    """A normalised phantom volume at the plan's target spacing and its body mask."""
    from inference.plans import Plan
    from inference.preprocess import body_mask
    from training.phantoms import make_phantom

    plan = Plan(preset=preset)
    z, y, x = shape_zyx
    phantom = make_phantom((x, y, z), plan.target_spacing, seed=seed, dtype="float32")
    hu = phantom.image.astype(np.float32)
    n = plan.normalization  # the same clip and z-score as inference.preprocess
    volume = np.ascontiguousarray((np.clip(hu, n.clip_low, n.clip_high) - n.mean) / n.std,
                                  np.float32)
    return volume, body_mask(volume, plan)


def make_network(preset: str, seed: int = 0, device: str = "cpu"):
    """The lesion-probability network, identical for a given (preset, seed)."""
    import torch

    from inference.model import LesionProbability, build_model

    torch.manual_seed(seed)
    return LesionProbability(build_model(preset)).eval().to(device)


def _predict_fn(model, device):
    import torch

    from inference.pipeline import network_forward

    return partial(network_forward, model, autocast=torch.device(device).type == "cuda")


def ours_engine(volume, model, patch, overlap: float, batch_size: int, body=None,
                pad_value: float = 0.0, device: str = "cpu"):
    """Our ``sliding_window`` on a torch volume; (Z, Y, X) probabilities."""
    from inference.sliding_window import sliding_window

    return sliding_window(volume, _predict_fn(model, device), tuple(patch), 1 - overlap,
                          context=3, batch_size=batch_size, body=body, pad_value=pad_value)


def context_stack(volume, context: int = 3):
    """(Z, context, Y, X): each slice with its neighbours as channels, edges replicated."""
    import torch

    half = context // 2
    z = volume.shape[0]
    index = torch.arange(z, device=volume.device)
    index = torch.stack([(index + o).clamp(0, z - 1) for o in range(-half, half + 1)], 1)
    return volume[index]


def monai_engine(volume, model, patch, overlap: float, batch_size: int,
                 pad_value: float = 0.0, device: str = "cpu", weight_map=None):
    """MONAI's inferer, 2D over the 3-slice stack with slices as the batch; (Z, Y, X)."""
    from monai.inferers import sliding_window_inference

    predict = _predict_fn(model, device)
    stack = context_stack(volume)
    out = sliding_window_inference(
        stack, roi_size=tuple(patch), sw_batch_size=batch_size,
        predictor=lambda x: predict(x)[:, None], overlap=overlap, mode="gaussian",
        sigma_scale=0.125, padding_mode="constant", cval=pad_value,
        roi_weight_map=weight_map)
    return out[:, 0]


def tile_placements(shape_zyx, patch, overlap: float) -> dict:
    """In-plane tile starts of both engines (MONAI's from its own ``dense_patch_slices``)."""
    from monai.data.utils import dense_patch_slices

    from inference.sliding_window import tile_starts

    size = [max(n, p) for n, p in zip(shape_zyx[1:], patch)]  # MONAI pads up to the patch
    # MONAI's scan interval: int(patch * (1 - overlap)), at least 1; the patch on a full axis.
    interval = [p if n == p else max(int(p * (1 - overlap)), 1) for n, p in zip(size, patch)]
    windows = dense_patch_slices(size, tuple(patch), interval)
    result = {"same": True}
    for i, axis in enumerate("yx"):
        ours = tile_starts(shape_zyx[1 + i], patch[i], 1 - overlap)
        monai = sorted({int(w[i].start) for w in windows})
        result[axis] = {"ours": ours, "monai": monai}
        result["same"] &= ours == monai
    # A small axis is padded at the end by ours and on both sides by MONAI.
    result["padded"] = any(n < p for n, p in zip(shape_zyx[1:], patch))
    result["same"] &= not result["padded"]
    return result


def channel_mean_network(tiles):
    """A stand-in network that costs next to nothing: sigmoid of the channel mean."""
    import torch

    return torch.sigmoid(tiles.mean(1))


def engine_overhead(volume: np.ndarray, body: np.ndarray, patch, overlap: float,
                    batch_size: int, pad_value: float, repeats: int) -> dict:
    """Best time of each engine with the network replaced by :func:`channel_mean_network`.

    What is left is the engines' own work (gathering tiles, blending, normalising), which
    the real network's time hides. Rounds interleave the engines, in this process.
    """
    import torch

    v = torch.from_numpy(volume)
    runs = {
        "ours": lambda: ours_engine(v, channel_mean_network, patch, overlap, batch_size,
                                    pad_value=pad_value),
        "ours_body": lambda: ours_engine(v, channel_mean_network, patch, overlap, batch_size,
                                         body=body, pad_value=pad_value),
        "monai": lambda: monai_engine(v, channel_mean_network, patch, overlap, batch_size,
                                      pad_value=pad_value),
    }
    best = {k: float("inf") for k in runs}
    with torch.inference_mode():
        for round_ in range(1 + repeats):
            for k, fn in runs.items():
                start = time.perf_counter()
                fn()
                if round_:
                    best[k] = min(best[k], time.perf_counter() - start)
    return best
