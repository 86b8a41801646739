"""The lesion table of a mask: each connected component's size, place, intensity,
confidence and RECIST diameters, and the case's totals (``--statistics``).

Lesions are the 26-connected components of the final mask on the input grid (as the
post-processing counts them), numbered 1, 2, ... from the largest. Coordinates follow ITK:
voxel indices (x, y, z) of the input grid, points in mm in the patient's LPS frame
(``TransformContinuousIndexToPhysicalPoint``). Axial slices are the planes perpendicular
to the patient's superior-inferior axis: the image is first turned, by whole axes, so its
slices lie nearest that plane (``inference.geometry.Reorientation``); a scan stored
sagittally or coronally is measured on its axial planes all the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cc3d
import numpy as np

from inference.geometry import Reorientation
from inference.nifti import Grid
from inference.postprocess import bounding_box
from inference.recist import recist_axes

CONNECTIVITY = 26


@dataclass
class Lesion:
    """One lesion of the table; points are (x, y, z) LPS mm, indices (x, y, z) voxels."""

    id: int
    voxels: int
    volume_ml: float
    centroid_mm: tuple[float, float, float]
    bbox_min_index: tuple[int, int, int]
    bbox_max_index: tuple[int, int, int]  # inclusive
    long_axis_mm: float  # RECIST: the longest in-plane diameter on any axial slice
    short_axis_mm: float  # the longest diameter perpendicular to it on that slice
    axial_slice: int  # index of that slice along the input's axis nearest superior-inferior
    long_axis_ends_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    short_axis_ends_mm: tuple[tuple[float, float, float], tuple[float, float, float]]
    hu_mean: float | None = None
    hu_max: float | None = None
    probability_mean: float | None = None
    probability_max: float | None = None


def label_lesions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(labels, count): the mask's components numbered from the largest (ties in raster
    order), in the smallest unsigned type that holds them; 0 is background."""
    mask = np.asarray(mask)
    foreground = mask if mask.dtype == bool else mask != 0
    box = bounding_box(foreground)
    labels = np.zeros(mask.shape, np.uint8)
    if box is None:
        return labels, 0
    crop, count = cc3d.connected_components(np.ascontiguousarray(foreground[box]).view(np.uint8),
                                            connectivity=CONNECTIVITY, return_N=True)
    sizes = np.bincount(crop.reshape(-1), minlength=count + 1)[1:]
    order = np.argsort(-sizes, kind="stable")  # cc3d numbers in raster order
    renumber = np.zeros(count + 1, np.min_scalar_type(count))
    renumber[order + 1] = np.arange(1, count + 1)
    labels = labels.astype(renumber.dtype, copy=False)
    labels[box] = renumber[crop]
    return labels, count


def lesion_table(mask: np.ndarray, grid: Grid, ct: np.ndarray | None = None,
                 probability: np.ndarray | None = None,
                 labels: tuple[np.ndarray, int] | None = None) -> list[Lesion]:
    """The lesions of a mask (z, y, x) on ``grid``, with the HU of ``ct`` and the
    probability of ``probability`` (both on the same grid) when given."""
    labels, count = labels if labels is not None else label_lesions(mask)
    if count == 0:
        return []
    if labels.shape != grid.shape_zyx:
        raise ValueError(f"mask has shape {labels.shape} (z, y, x) but the grid is "
                         f"{grid.shape_zyx}")
    box = bounding_box(labels != 0)
    crop = np.ascontiguousarray(labels[box])
    stats = cc3d.statistics(crop)
    voxels = stats["voxel_counts"][1:count + 1].astype(np.int64)
    where = np.nonzero(crop)
    ids = crop[where].astype(np.intp)
    centroids = np.stack([np.bincount(ids, weights=c + box[axis].start, minlength=count + 1)[1:]
                          for axis, c in enumerate(where)], axis=1) / voxels[:, None]
    voxel_ml = math.prod(grid.spacing) / 1000.0
    intensity = {name: _mean_and_max(values[box][where], ids, voxels, count)
                 for name, values in (("hu", ct), ("probability", probability))
                 if values is not None}
    reorientation = Reorientation.to_target(grid.direction, "LPS")
    oriented_spacing = reorientation.spacing_zyx(grid.spacing)
    table = []
    for n in range(1, count + 1):
        bounds = tuple(slice(s.start + b.start, s.stop + b.start)
                       for s, b in zip(stats["bounding_boxes"][n], box))
        lesion = reorientation.apply(labels[bounds] == n)
        k, axes = recist_axes(lesion, oriented_spacing)
        to_input = _OrientedCrop(reorientation, bounds, lesion.shape)
        row = Lesion(
            id=n, voxels=int(voxels[n - 1]), volume_ml=float(voxels[n - 1] * voxel_ml),
            centroid_mm=physical_points(grid, centroids[n - 1][None])[0],
            bbox_min_index=tuple(int(b.start) for b in bounds[::-1]),
            bbox_max_index=tuple(int(b.stop - 1) for b in bounds[::-1]),
            long_axis_mm=round(axes.long_mm, 3), short_axis_mm=round(axes.short_mm, 3),
            axial_slice=to_input.slice_index(k),
            long_axis_ends_mm=physical_points(grid, to_input.points(k, axes.long_ends)),
            short_axis_ends_mm=physical_points(grid, to_input.points(k, axes.short_ends)))
        for name, (mean, peak) in intensity.items():
            setattr(row, f"{name}_mean", float(mean[n - 1]))
            setattr(row, f"{name}_max", float(peak[n - 1]))
        table.append(row)
    return table


def case_statistics(case: str, lesions: list[Lesion], grid: Grid) -> dict:
    """The JSON-ready statistics of one case: its grid, totals and lesion table."""
    return {
        "case": case,
        "grid": {"size": list(grid.size), "spacing_mm": list(grid.spacing),
                 "origin_mm": list(grid.origin), "direction": list(grid.direction)},
        "totals": {
            "lesions": len(lesions),
            "voxels": sum(lesion.voxels for lesion in lesions),
            "volume_ml": sum(lesion.volume_ml for lesion in lesions),
            "largest_long_axis_mm": max((lesion.long_axis_mm for lesion in lesions),
                                        default=0.0),
        },
        "lesions": [asdict(lesion) for lesion in lesions],
    }


def summary(lesions: list[Lesion]) -> str:
    """One line on a case's lesions: count, volume, and the largest one's RECIST axes."""
    if not lesions:
        return "no lesion"
    total = sum(lesion.volume_ml for lesion in lesions)
    big = lesions[0]
    return (f"{len(lesions)} lesion(s), {total:.1f} ml; lesion 1 {big.volume_ml:.1f} ml, "
            f"RECIST {big.long_axis_mm:.1f} x {big.short_axis_mm:.1f} mm")


def physical_points(grid: Grid, index_zyx: np.ndarray) -> tuple:
    """LPS points (mm, x y z) of continuous voxel indices given in array order (z, y, x),
    as ITK's ``TransformContinuousIndexToPhysicalPoint`` places them."""
    index_xyz = np.asarray(index_zyx, np.float64)[:, ::-1]
    direction = np.asarray(grid.direction, np.float64).reshape(3, 3)
    points = np.asarray(grid.origin) + (index_xyz * np.asarray(grid.spacing)) @ direction.T
    return tuple(tuple(round(float(v), 4) for v in p) for p in points)


class _OrientedCrop:
    """Maps continuous indices of a lesion's crop, turned axial, back to the input array."""

    def __init__(self, reorientation: Reorientation, bounds: tuple[slice, ...], shape):
        self.perm, self.flips = reorientation.perm, reorientation.flips
        self.bounds, self.shape = bounds, shape

    def index(self, oriented) -> np.ndarray:
        """Input-array indices (z, y, x) of oriented crop indices (..., 3)."""
        oriented = np.asarray(oriented, np.float64)
        source = np.empty_like(oriented)
        for axis in range(3):
            c = oriented[..., axis]
            c = self.shape[axis] - 1 - c if self.flips[axis] else c
            source[..., self.perm[axis]] = c + self.bounds[self.perm[axis]].start
        return source

    def slice_index(self, k: int) -> int:
        """The input's index, along its axis nearest superior-inferior, of axial slice k."""
        return int(round(self.index([k, 0, 0])[self.perm[0]]))

    def points(self, k: int, rows_columns: np.ndarray) -> np.ndarray:
        plane = np.asarray(rows_columns, np.float64)
        return self.index(np.column_stack([np.full(len(plane), float(k)), plane]))


def _mean_and_max(values: np.ndarray, ids: np.ndarray, voxels: np.ndarray,
                  count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-lesion mean and maximum of ``values`` (one per foreground voxel, labels ``ids``)."""
    values = values.astype(np.float64)
    mean = np.bincount(ids, weights=values, minlength=count + 1)[1:] / voxels
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(voxels)[:-1]])
    peak = np.maximum.reduceat(values[order], starts)
    return mean, peak

