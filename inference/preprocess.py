"""From a CT volume to what the network sees.

Reorient to the plan's orientation (nearest axes) -> body crop -> box smoothing over the
downsampling factor -> resample to the target spacing on the backend's device -> clip and
z-score. ``Prepared`` keeps what ``inference.restore`` needs to undo it after the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from inference.arrays import array_ops
from inference.budget import more_than_memory
from inference.folders import InputError
from inference.geometry import Reorientation, body_box
from inference.plans import Plan
from inference.resample import resize_linear, resize_plane


@dataclass
class Prepared:
    """A case ready for the sliding window, with what restore needs to undo it."""

    volume: object  # normalised (z, y, x) at network resolution: numpy or torch
    body: np.ndarray | None  # body_mask(volume): which tiles the sliding window runs
    reorientation: Reorientation
    oriented_shape: tuple[int, int, int]
    box: tuple[slice, slice, slice] | None  # body crop in the oriented array; None: no body
    spacing_zyx: tuple[float, float, float]  # network-resolution spacing

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.box)


def network_shape(shape_zyx, spacing_zyx, target_zyx) -> tuple[int, int, int]:
    return tuple(max(1, round(n * s / t)) for n, s, t in zip(shape_zyx, spacing_zyx, target_zyx))


def smoothing_widths(spacing_zyx, target_zyx) -> tuple[int, int, int]:
    """Odd box widths (voxels) matching the downsampling factor of each axis."""
    widths = []
    for s, t in zip(spacing_zyx, target_zyx):
        w = max(int(round(t / s)), 1)
        widths.append(w + 1 - w % 2)
    return tuple(widths)


def box_smooth(a, widths):
    """Mean over a centred box of ``widths`` voxels (odd), counting only voxels inside."""
    ops = array_ops(a)
    a = ops.float32(a)
    for axis, w in enumerate(widths):
        if w <= 1 or a.shape[axis] < 2:
            continue
        r = w // 2
        n = a.shape[axis]
        i = np.arange(n)
        count = (np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1).astype(np.float32)
        shape = [1, 1, 1]
        shape[axis] = n
        a = ops.divide_(ops.box_sum(a, axis, r), ops.from_host_like(count.reshape(shape), a))
    return a


PREPROCESS_SLAB = 32  # input slices sent to the device and resized in plane at a time


def _resize_in_slabs(crop: np.ndarray, shape, widths, to_device, slab: int = PREPROCESS_SLAB):
    """Smooth and resize without ever holding the full-resolution crop as float32.

    Slabs of slices are converted (and sent to the device) one at a time, smoothed and
    resized in plane; the smaller result is then smoothed and resized along z. Both
    operations are separable, so this equals doing them on the whole crop at once. A large
    case's crop in float32 is twice its int16 voxels; a slab is a small part of it, which
    also spares a fresh process most of its page faults.
    """
    parts, ops = [], None
    for z0 in range(0, crop.shape[0], slab):
        part = to_device(crop[z0:z0 + slab])
        ops = ops or array_ops(part)
        part = ops.float32(part)
        if widths:
            part = box_smooth(part, (1, widths[1], widths[2]))
        if tuple(part.shape[1:]) != tuple(shape[1:]):
            part = resize_plane(part, shape[1:])
        parts.append(part)
    a = ops.concat(parts)
    del parts
    if widths:
        a = box_smooth(a, (widths[0], 1, 1))
    return resize_linear(a, shape)


def preprocess(array_zyx: np.ndarray, spacing_xyz, direction, plan: Plan,
               to_device: Callable = np.ascontiguousarray,
               slab: int = PREPROCESS_SLAB) -> Prepared:
    """Reorient, crop to the body, resample on the device (``slab`` slices at a time in
    plane: the result is the same for any), normalise."""
    reorientation = Reorientation.to_target(direction, plan.orientation)
    oriented = reorientation.apply(array_zyx)
    spacing = reorientation.spacing_zyx(spacing_xyz)
    box = body_box(oriented, plan.body_threshold_hu)
    if box is None:
        return Prepared(None, None, reorientation, oriented.shape, None, spacing)
    crop = oriented[box]
    shape = network_shape(crop.shape, spacing, plan.target_spacing[::-1])
    _check_fits_in_memory(crop.shape, shape, spacing, plan)
    widths = smoothing_widths(spacing, plan.target_spacing[::-1]) if plan.smoothing else None
    resampled = _resize_in_slabs(crop, shape, widths, to_device, slab)
    del crop
    n = plan.normalization
    array_ops(resampled).clip_(resampled, n.clip_low, n.clip_high)
    resampled -= n.mean
    resampled /= n.std
    net_spacing = tuple(c * s / r for c, s, r in
                        zip((b.stop - b.start for b in box), spacing, shape))
    return Prepared(resampled, body_mask(resampled, plan), reorientation, oriented.shape, box,
                    net_spacing)


def _check_fits_in_memory(crop_shape, shape, spacing_zyx, plan: Plan) -> None:
    """InputError when the resampled volume (or its in-plane stage, all the crop's slices
    at the new plane size) alone takes more memory than there is: the sign of a voxel
    spacing in the wrong unit, found before anything is allocated."""
    need = 4 * max(int(np.prod(shape, dtype=np.int64)), crop_shape[0] * shape[1] * shape[2])
    too_much = more_than_memory(need)
    if too_much is not None:
        raise InputError(f"its {_xyz(spacing_zyx)} mm voxels make a {_xyz(shape)} grid at the "
                         f"plan's {_xyz(plan.target_spacing[::-1])} mm, as float32 {too_much}: "
                         "check the voxel spacing (pixdim) in the header")


def _xyz(values_zyx) -> str:
    """A z, y, x triple as the header writes it, x first: ``0.8x0.8x2.5``."""
    return "x".join(f"{v:g}" for v in values_zyx[::-1])


def pad_value(plan: Plan) -> float:
    """What air becomes after normalisation: the value for padding beyond the volume."""
    n = plan.normalization
    return (n.clip_low - n.mean) / n.std


# A voxel must stand this far above the clip floor to count as body: the floor itself (air,
# and all else the clip flattens) must stay out after rounding to float16.
BODY_MARGIN_HU = 1.0


def body_mask(volume, plan: Plan) -> np.ndarray:
    """Boolean body mask of a normalised volume (numpy or torch): what the network tells from air.

    It is computed from what the network sees, so the container's volume and training's
    cache (the same volume stored as float16) give the same mask: voxels above
    ``body_threshold_hu``, or above the clip floor when that is higher (below it every
    voxel looks like air to the network). The float32 comparison is the one float16
    rounding would give, without converting the volume.
    """
    n = plan.normalization
    hu = max(plan.body_threshold_hu, n.clip_low + BODY_MARGIN_HU)
    level = np.float16((hu - n.mean) / n.std)
    above = np.nextafter(level, np.float16(np.inf))
    # A float32 value rounds to ``above`` or higher from the midpoint on (from the midpoint
    # itself only when round-half-to-even goes up: ``above`` has an even last bit).
    mid = np.float32((float(level) + float(above)) / 2)
    inclusive = int(above.view(np.uint16)) % 2 == 0
    ops = array_ops(volume)
    volume, mid = ops.float32(volume), float(mid)  # mid is a float32 value: exact either way
    return ops.to_host(volume >= mid if inclusive else volume > mid)
