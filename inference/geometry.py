"""Voxel-grid geometry: reorientation by nearest axes and the body crop box.

Arrays are in SimpleITK order (z, y, x); spacing and direction are in ITK order (x, y, z),
world coordinates LPS. The reorientation only permutes and flips array axes, so it is
exactly invertible: the output goes back onto the input's grid whatever its direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.arrays import array_ops

# Sign each ITK axis (x, y, z) must point along its LPS world axis.
TARGET_SIGNS = {"LPS": (1, 1, 1), "RAS": (-1, -1, 1)}


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips (numpy axis order) taking an array to the plan's orientation."""

    perm: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @classmethod
    def to_target(cls, direction, target: str = "LPS") -> "Reorientation":
        """The nearest-axis reorientation of an image with ``direction`` (row-major 3x3)."""
        d = np.asarray(direction, dtype=float).reshape(3, 3)
        world_of = [int(np.argmax(np.abs(d[:, c]))) for c in range(3)]
        if sorted(world_of) != [0, 1, 2]:
            # Two array axes nearest the same world axis (a 45-degree oblique): fall back
            # to a unique assignment by the largest components first.
            world_of = _unique_assignment(np.abs(d))
        source_of = {w: c for c, w in enumerate(world_of)}
        signs = TARGET_SIGNS[target]
        perm, flips = [], []
        for numpy_axis in range(3):
            itk_axis = 2 - numpy_axis
            c = source_of[itk_axis]
            perm.append(2 - c)
            flips.append(bool(np.sign(d[itk_axis, c]) * signs[itk_axis] < 0))
        return cls(tuple(perm), tuple(flips))

    def apply(self, array):
        """The array in the target orientation (a view for numpy, a new tensor for torch)."""
        return array_ops(array).permute_flip(array, self.perm, self.flips)

    def invert(self, array: np.ndarray) -> np.ndarray:
        """Undo ``apply`` (numpy)."""
        for axis, flip in enumerate(self.flips):
            if flip:
                array = np.flip(array, axis)
        return np.transpose(array, np.argsort(self.perm))

    def spacing_zyx(self, spacing_xyz) -> tuple[float, float, float]:
        """The voxel spacing along the reoriented array's (z, y, x) axes."""
        zyx = tuple(float(s) for s in spacing_xyz[::-1])
        return tuple(zyx[p] for p in self.perm)

    def shape(self, shape_zyx) -> tuple[int, int, int]:
        return tuple(int(shape_zyx[p]) for p in self.perm)


def _unique_assignment(weights: np.ndarray) -> list[int]:
    world_of = [-1, -1, -1]
    taken = set()
    for flat in np.argsort(weights, axis=None)[::-1]:
        w, c = divmod(int(flat), 3)
        if world_of[c] < 0 and w not in taken:
            world_of[c] = w
            taken.add(w)
    return world_of


def body_box(array, threshold: float, margin: int = 2):
    """Bounding box (tuple of slices, numpy order) of voxels above ``threshold``, or None.

    Works on numpy arrays and torch tensors; -3024 padding outside the scanner's
    field of view and air both fall below any sensible threshold.
    """
    mask = array > threshold
    ops = array_ops(mask)
    box = []
    for axis in range(3):
        idx = ops.nonzero_along(mask, axis)  # a tensor is reduced on its device
        if idx.size == 0:
            return None
        lo, hi = int(idx[0]), int(idx[-1])
        box.append(slice(max(lo - margin, 0), min(hi + 1 + margin, array.shape[axis])))
    return tuple(box)
