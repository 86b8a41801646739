"""The network's decision back onto the input grid: the last stage before writing.

The lesion decision at network resolution -> linear upsampling of the probability with
removed components zeroed, only around kept lesions -> threshold -> paste into the
uncropped grid -> undo the reorientation. The result lies exactly on the input grid.
``Prepared`` (``inference.preprocess``) says what to undo.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from inference.arrays import array_ops
from inference.preprocess import Prepared
from inference.resample import resize_linear

RESTORE_SLAB = 16  # output slices upsampled at a time


def restore(probability: np.ndarray, kept: np.ndarray, prepared: Prepared, threshold: float,
            to_device: Callable = np.asarray, margin: int = 1) -> np.ndarray:
    """uint8 {0,1} mask on the input grid from the kept lesions at network resolution.

    Only the voxels of removed components are zeroed before the linear upsampling: a
    kept lesion's edge is interpolated towards its neighbours' real probability, not
    towards 0, which would shrink every lesion by up to a network voxel. Values under the
    threshold interpolate to values under it, so the mask can only grow next to kept
    lesions: only the box around them is upsampled, and a case with few lesions (or
    none) costs almost nothing here whatever its size.
    """
    full = np.zeros(prepared.oriented_shape, np.uint8)
    if prepared.box is not None and kept.any():
        crop_shape = prepared.crop_shape
        removed = (probability > threshold) & ~kept.astype(bool)
        lesion = np.where(removed, 0, probability).astype(np.float32)
        region = []
        for axis in range(3):
            idx = np.flatnonzero(kept.any(axis=tuple(a for a in range(3) if a != axis)))
            n_in, n_out = kept.shape[axis], crop_shape[axis]
            lo = max(int(np.floor((idx[0] - margin) * n_out / n_in)), 0)
            hi = min(int(np.ceil((idx[-1] + 1 + margin) * n_out / n_in)), n_out)
            region.append((lo, hi))
        lesion = to_device(lesion)
        ops = array_ops(lesion)
        crop = full[prepared.box]
        (z_lo, z_hi), rows, columns = region
        inplane = (slice(*rows), slice(*columns))
        # slab by slab: the float32 upsampling of a box that spans the body would take
        # several times the input's memory at once
        for z0 in range(z_lo, z_hi, RESTORE_SLAB):
            z1 = min(z0 + RESTORE_SLAB, z_hi)
            up = resize_linear(lesion, crop_shape, ((z0, z1), rows, columns)) > threshold
            crop[(slice(z0, z1), *inplane)] = ops.to_host(up)
    return np.ascontiguousarray(prepared.reorientation.invert(full))


def restore_probability(probability: np.ndarray, prepared: Prepared) -> np.ndarray:
    """float32 lesion probability on the input grid (for --save-probabilities)."""
    full = np.zeros(prepared.oriented_shape, np.float32)
    if prepared.box is not None:
        full[prepared.box] = resize_linear(probability.astype(np.float32), prepared.crop_shape)
    return np.ascontiguousarray(prepared.reorientation.invert(full))
