"""FLARE 2024 Task 1 accuracy metrics: DSC and Normalised Surface Dice (NSD).

All functions take numpy arrays in SimpleITK order (z, y, x) and the voxel spacing in
the same order (``spacing_zyx``, i.e. ``image.GetSpacing()[::-1]``); use the ground
truth's spacing. Only numpy and scipy are imported, so training can call these for
validation without pulling in any I/O library.

How NSD is computed, following the idea of the DeepMind ``surface-distance`` package
that the organisers' evaluation script uses (``compute_surface_distances`` +
``compute_surface_dice_at_tolerance``):

- Surface elements ("surfels") live on the dual grid: each 2x2x2 block of voxels gets
  an 8-bit code saying which of its corners are foreground; a block whose code is
  neither 0 nor 255 holds a piece of the boundary. Masks are zero-padded, so an object
  touching the edge of the array still has a closed surface.
- Each code's piece of surface is the marching-cubes polygon set through the midpoints
  of the cube's cut edges. The table is derived here, not copied: on a face whose
  diagonal corners agree, the corners of the phase with fewer corners in the cube are
  cut off (so a code and its complement have the same surface), and a non-planar
  polygon is split into the triangles that give it the largest area at unit spacing
  (planar polygons have the same area however they are split). A triangle's area at a
  spacing (s0, s1, s2) is the norm of its unit-spacing area vector scaled by
  (s1*s2, s0*s2, s0*s1).
- Distances from each surfel of one mask to the nearest surfel position of the other
  come from ``scipy.ndimage.distance_transform_edt`` with ``sampling=spacing``.
- NSD = (area of pred surfels within tolerance of gt + area of gt surfels within
  tolerance of pred) / (area of all surfels of both); "within" is ``<=``.

Agreement with the official evaluation: during development the derived surfel-area
table was compared with the published lookup table for all 256 codes at unit spacing
and random anisotropic spacings and agreed to floating-point rounding, and so did whole
NSDs on random masks (scored by the published algorithm on x,y,z-ordered arrays). The table
is invariant to permuting the axes, so scoring z,y,x arrays with z,y,x spacing gives the
same result as the organisers' x,y,z (nibabel) arrays with x,y,z spacing. Remaining differences are
the order of float summation and these input conventions, which only matter for
labels outside the contract: foreground is ``gt > 0`` and ``pred > 0``, and
``score_case`` fails a prediction holding any value > 1 or < 0 on the raw array,
whereas the organisers cast both arrays to uint8 first (where -1 wraps to 255 and also
fails, but 256 wraps to 0). Where the official helpers return NaN for two empty masks,
``dice`` and ``surface_dice`` return 1.0.

Both masks are cropped to their joint bounding box before any surface work (plus the
one voxel of zero padding the surface needs; a wider margin would not change any
distance), so a small lesion in a 512x512x500 volume costs one or two full-volume max
passes per array (label check, bounding box) and then almost nothing.
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "surface_dice", "score_case", "NSD_MIN_DSC"]

# The organisers skip NSD (score 0) when the case's DSC is below this.
NSD_MIN_DSC = 0.2

# Corner (a, b, c) of a 2x2x2 block (offsets along z, y, x) is bit 4a + 2b + c of its code.
_CORNERS = tuple(itertools.product((0, 1), repeat=3))


def _face_cycles() -> list[list[tuple[int, int, int]]]:
    """The 6 faces of the unit cube, each as its 4 corners in cyclic order."""
    faces = []
    for axis in range(3):
        u_axis, v_axis = (d for d in range(3) if d != axis)
        for side in (0, 1):
            cycle = []
            for u, v in ((0, 0), (0, 1), (1, 1), (1, 0)):
                corner = [0, 0, 0]
                corner[axis], corner[u_axis], corner[v_axis] = side, u, v
                cycle.append(tuple(corner))
            faces.append(cycle)
    return faces


def _surface_polygons(code: int) -> list[np.ndarray]:
    """Marching-cubes polygons (vertex cycles at cut-edge midpoints) for one block code."""
    inside = {c: bool(code >> (4 * c[0] + 2 * c[1] + c[2]) & 1) for c in _CORNERS}
    # Complement symmetry: cut off the minority phase's corners on ambiguous faces
    # (with 4 corners of each phase either choice gives the same area).
    cut_off_inside = sum(inside.values()) <= 4
    links: dict[frozenset, list[frozenset]] = {}

    def link(edge_a: frozenset, edge_b: frozenset) -> None:
        links.setdefault(edge_a, []).append(edge_b)
        links.setdefault(edge_b, []).append(edge_a)

    for cycle in _face_cycles():
        edges = [frozenset((cycle[i], cycle[(i + 1) % 4])) for i in range(4)]
        cut = [e for e in edges if len({inside[c] for c in e}) == 2]
        if len(cut) == 2:
            link(*cut)
        elif len(cut) == 4:
            for i, corner in enumerate(cycle):
                if inside[corner] == cut_off_inside:
                    link(edges[i - 1], edges[i])

    polygons, seen = [], set()
    for start in links:
        if start in seen:
            continue
        loop, previous, current = [start], None, start
        seen.add(start)
        while True:
            following = [e for e in links[current] if e != previous][0]
            if following == start:
                break
            loop.append(following)
            seen.add(following)
            previous, current = current, following
        polygons.append(np.array([np.mean(list(edge), axis=0) for edge in loop], float))
    return polygons


def _triangulations(n: int) -> list[list[tuple[int, int, int]]]:
    """Every triangulation of the vertex cycle 0..n-1 (n <= 6 here, at most 14 of them)."""

    def split(i: int, j: int) -> list[list[tuple[int, int, int]]]:
        if j - i < 2:
            return [[]]
        return [left + [(i, k, j)] + right
                for k in range(i + 1, j) for left in split(i, k) for right in split(k, j)]

    return split(0, n - 1)


def _area_vector(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
    return 0.5 * np.cross(q - p, r - p)


@functools.lru_cache(maxsize=1)
def _unit_area_vectors() -> np.ndarray:
    """(256, T, 3): area vectors at unit spacing of each code's triangles (zero-padded)."""
    per_code = []
    for code in range(256):
        vectors = []
        for polygon in _surface_polygons(code):
            options = [[_area_vector(*polygon[list(t)]) for t in triangles]
                       for triangles in _triangulations(len(polygon))]
            vectors += max(options, key=lambda vs: sum(np.linalg.norm(v) for v in vs))
        per_code.append(vectors)
    table = np.zeros((256, max(len(v) for v in per_code), 3))
    for code, vectors in enumerate(per_code):
        if vectors:
            table[code, : len(vectors)] = vectors
    return table


@functools.lru_cache(maxsize=32)
def _surfel_area_table(spacing_zyx: tuple[float, float, float]) -> np.ndarray:
    """Surface area in mm^2 inside a 2x2x2 block, indexed by the block's code."""
    s0, s1, s2 = spacing_zyx
    # An area vector scales with the cofactor of diag(spacing), not with the spacing.
    scaled = _unit_area_vectors() * np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.linalg.norm(scaled, axis=-1).sum(axis=-1)


def _check_pair(pred: np.ndarray, gt: np.ndarray, ndim: int | None = None) -> None:
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape "
                         f"{gt.shape}")
    if ndim is not None and gt.ndim != ndim:
        raise ValueError(f"expected {ndim}-D masks, got shape {gt.shape}")


def _check_spacing(spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx must be 3 positive numbers in mm, got {tuple(spacing_zyx)}")
    return spacing


def _foreground_box(*labels: np.ndarray) -> tuple[slice, ...] | None:
    """Smallest box holding every voxel > 0 of any of the label arrays; None when all are empty.

    One full pass per array (a per-slice max along axis 0); the other axes are searched
    only in the slab that holds foreground, so a small lesion in a large volume is cheap.
    """
    def hits(arrays: Sequence[np.ndarray], axis: int) -> np.ndarray:
        others = tuple(d for d in range(arrays[0].ndim) if d != axis)
        found = np.zeros(arrays[0].shape[axis], bool)
        for a in arrays:
            found |= a.max(axis=others) > 0
        return np.flatnonzero(found)

    if labels[0].size == 0:
        return None
    first = hits(labels, 0)
    if first.size == 0:
        return None
    box = [slice(int(first[0]), int(first[-1]) + 1)]
    slabs = [a[box[0]] for a in labels]
    for axis in range(1, slabs[0].ndim):
        found = hits(slabs, axis)
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def _dice_of_masks(pred: np.ndarray, gt: np.ndarray) -> float:
    total = np.count_nonzero(pred) + np.count_nonzero(gt)
    if total == 0:
        return 1.0
    return 2.0 * np.count_nonzero(pred & gt) / total


def _block_codes(mask: np.ndarray) -> np.ndarray:
    """8-bit corner code of every 2x2x2 block of the zero-padded mask (shape + 1 per axis)."""
    padded = np.pad(mask, 1).astype(np.uint8)
    n0, n1, n2 = (n + 1 for n in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for a, b, c in _CORNERS:
        codes |= padded[a:a + n0, b:b + n1, c:c + n2] << (4 * a + 2 * b + c)
    return codes


def _surface_dice_of_masks(pred: np.ndarray, gt: np.ndarray,
                           spacing: tuple[float, float, float], tolerance_mm: float) -> float:
    areas = _surfel_area_table(spacing)
    codes_pred, codes_gt = _block_codes(pred), _block_codes(gt)
    border_pred = (codes_pred != 0) & (codes_pred != 255)
    border_gt = (codes_gt != 0) & (codes_gt != 255)
    area_pred = areas[codes_pred[border_pred]]
    area_gt = areas[codes_gt[border_gt]]
    total = area_pred.sum() + area_gt.sum()
    if total == 0:
        return 1.0
    if not (border_pred.any() and border_gt.any()):
        return 0.0
    to_gt = ndimage.distance_transform_edt(~border_gt, sampling=spacing)[border_pred]
    to_pred = ndimage.distance_transform_edt(~border_pred, sampling=spacing)[border_gt]
    within = area_pred[to_gt <= tolerance_mm].sum() + area_gt[to_pred <= tolerance_mm].sum()
    return float(within / total)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of the foreground (> 0) of two label arrays; 1.0 when both are empty."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt)
    return float(_dice_of_masks(pred > 0, gt > 0))


def surface_dice(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float],
                 tolerance_mm: float = 2.0) -> float:
    """Normalised Surface Dice of the foreground (> 0) of two 3-D label arrays.

    1.0 when both are empty, 0.0 when exactly one is. ``spacing_zyx`` is in array order.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt, ndim=3)
    spacing = _check_spacing(spacing_zyx)
    crop = _foreground_box(pred, gt)
    if crop is None:
        return 1.0
    return _surface_dice_of_masks(pred[crop] > 0, gt[crop] > 0, spacing, tolerance_mm)


def score_case(pred: np.ndarray, gt: np.ndarray, spacing_zyx: Sequence[float],
               tolerance_mm: float = 2.0) -> tuple[float, float]:
    """(DSC, NSD) of one case under the FLARE 2024 Task 1 rules, in the organisers' order.

    A prediction holding any value > 1 (or < 0) scores 0/0; both masks empty 1/1;
    exactly one empty 0/0; DSC < 0.2 sets NSD to 0. All lesions count as one mask (> 0).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_pair(pred, gt, ndim=3)
    spacing = _check_spacing(spacing_zyx)
    if pred.size and pred.dtype != bool:
        if pred.max() > 1 or (pred.dtype.kind != "u" and pred.min() < 0):
            return 0.0, 0.0
    crop = _foreground_box(pred, gt)
    if crop is None:
        return 1.0, 1.0
    pred_mask, gt_mask = pred[crop] > 0, gt[crop] > 0
    if not (pred_mask.any() and gt_mask.any()):
        return 0.0, 0.0
    dsc = _dice_of_masks(pred_mask, gt_mask)
    if dsc < NSD_MIN_DSC:
        return float(dsc), 0.0
    return float(dsc), _surface_dice_of_masks(pred_mask, gt_mask, spacing, tolerance_mm)
