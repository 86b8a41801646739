"""RECIST diameters of a lesion mask: the longest in-plane diameter on any axial slice and
the longest diameter perpendicular to it on that slice.

A slice's lesion is measured by its outline at the voxel edges: the midpoints of the
voxel faces between the lesion and the background, which is the 0.5 iso-contour of the
mask (where pyradiomics' 2D diameters are measured too). A one-voxel lesion is one voxel
across, and a digitised disc measures its true diameter to within a voxel. Both diameters
are taken on the convex hull of that outline, in mm on the slice's own spacing: the long
axis is the hull's diameter; the short axis the longest chord of the hull perpendicular
to it, which crosses the long axis as a reader draws it.

Arrays are (rows, columns) per slice and (slices, rows, columns) per lesion, with the
spacing in the same order; ``inference.lesions`` turns an image into its axial slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axes:
    """A slice's long and short axis (mm) and their end points (voxel units, row/column)."""

    long_mm: float
    short_mm: float
    long_ends: np.ndarray  # (2, 2): two (row, column) points
    short_ends: np.ndarray  # (2, 2)


def outline_points(mask: np.ndarray) -> np.ndarray:
    """(row, column) face midpoints of a 2D mask's outline that can lie on its convex hull.

    In each row only the leftmost and rightmost faces can (the others lie between them on
    the same line), and in each column only the top and bottom ones.
    """
    mask = np.asarray(mask, bool)
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    width, height = mask.shape[1], mask.shape[0]
    left = np.argmax(mask[rows], axis=1)
    right = width - 1 - np.argmax(mask[rows, ::-1], axis=1)
    top = np.argmax(mask[:, columns], axis=0)
    bottom = height - 1 - np.argmax(mask[::-1, columns], axis=0)
    return np.concatenate([
        np.stack([rows, left - 0.5], axis=1), np.stack([rows, right + 0.5], axis=1),
        np.stack([top - 0.5, columns], axis=1), np.stack([bottom + 0.5, columns], axis=1),
    ]).astype(np.float64)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """The convex hull's vertices in counter-clockwise order (Andrew's monotone chain)."""
    points = np.unique(np.asarray(points, np.float64), axis=0)  # sorted by x, then y
    if len(points) < 3:
        return points

    def half(ordered):
        chain = []
        for p in ordered:
            while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return np.array(half(points) + half(points[::-1]))


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_diameter(hull: np.ndarray) -> tuple[float, int, int]:
    """(length, i, j): the longest distance between two hull vertices, and which two."""
    if len(hull) < 2:
        return 0.0, 0, 0
    squared = ((hull[:, None, :] - hull[None, :, :]) ** 2).sum(axis=-1)
    i, j = np.unravel_index(int(np.argmax(squared)), squared.shape)
    return float(np.sqrt(squared[i, j])), int(i), int(j)


def longest_perpendicular_chord(hull: np.ndarray, a: np.ndarray,
                                b: np.ndarray) -> tuple[float, np.ndarray]:
    """The longest chord of the convex polygon ``hull`` perpendicular to the segment a-b,
    and its two end points.

    A chord's length is concave along the axis in a convex polygon, so its maximum lies
    at a vertex: every vertex's chord is measured and the longest kept.
    """
    u = (b - a) / np.linalg.norm(b - a)
    v = np.array([-u[1], u[0]])
    along, across = hull @ u, hull @ v
    start, end = along, np.roll(along, -1)
    across_end = np.roll(across, -1)
    t = along[:, None]  # one chord through each vertex
    tolerance = 1e-9 * max(float(np.abs(along).max()), 1.0)
    crosses = (t >= np.minimum(start, end) - tolerance) & (t <= np.maximum(start, end) + tolerance)
    span = end - start
    fraction = np.divide(t - start, span, out=np.zeros((len(t), len(span))),
                         where=np.abs(span) > tolerance)
    where = across + np.clip(fraction, 0.0, 1.0) * (across_end - across)
    high = np.where(crosses, where, -np.inf).max(axis=1)
    low = np.where(crosses, where, np.inf).min(axis=1)
    k = int(np.argmax(high - low))
    ends = np.array([along[k] * u + low[k] * v, along[k] * u + high[k] * v])
    return float(high[k] - low[k]), ends


def slice_axes(mask: np.ndarray, spacing_rc) -> Axes:
    """Long and short axis of one slice's lesion (a 2D mask with at least one voxel)."""
    scale = np.asarray(spacing_rc, np.float64)
    hull = convex_hull(outline_points(mask) * scale)
    long_mm, i, j = hull_diameter(hull)
    short_mm, short_ends = longest_perpendicular_chord(hull, hull[i], hull[j])
    return Axes(long_mm, short_mm, np.stack([hull[i], hull[j]]) / scale, short_ends / scale)


def longest_diameter(mask: np.ndarray, spacing_rc) -> float:
    """The longest in-plane diameter (mm) of a 2D mask; 0 when it is empty."""
    if not np.any(mask):
        return 0.0
    return hull_diameter(convex_hull(outline_points(mask) * np.asarray(spacing_rc, float)))[0]


def recist_axes(lesion: np.ndarray, spacing_zyx) -> tuple[int, Axes]:
    """(slice, axes) of a 3D lesion mask (slices along axis 0): the slice where its
    in-plane diameter is longest (the first of equals), measured there."""
    in_plane = tuple(spacing_zyx[1:])
    lengths = [longest_diameter(plane, in_plane) for plane in lesion]
    k = int(np.argmax(lengths))
    return k, slice_axes(lesion[k], in_plane)
