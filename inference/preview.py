"""A picture of a case for a quick look (``--preview``): the CT in a soft-tissue window
(width 400, level 40 HU) with each lesion's outline and id, on the axial, coronal and
sagittal planes through the largest lesion (where its RECIST long axis was measured),
and a close-up of it with its long and short axes drawn; through the volume's centre
when there is no lesion.

The planes are cut from the image turned, by whole axes, into the patient's LPS frame
and shown as radiologists view them: the patient's right on the left of the axial and
coronal planes, anterior on the left of the sagittal one, superior at the top, each
in millimetres so the physical aspect ratio is kept. matplotlib (the ``preview`` extra)
is imported only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference.geometry import Reorientation
from inference.lesions import Lesion
from inference.nifti import Grid

WINDOW_HU = (40.0 - 200.0, 40.0 + 200.0)  # soft tissue: level 40, width 400
COLOURS = ("#ff3b30", "#ffcc00", "#34c759", "#00c7be", "#007aff", "#af52de", "#ff9500",
           "#ff2d55", "#a2845e", "#5ac8fa")
ZOOM_FACTOR = 2.5  # the close-up spans this many times the largest lesion's long axis
ZOOM_MIN_MM = 50.0
PANEL_INCHES = 4.0


def write_preview(path: str | Path, ct: np.ndarray, labels: np.ndarray, grid: Grid,
                  lesions: list[Lesion], title: str) -> Path:
    """Write the three planes (and a close-up of the largest lesion) as a PNG; ``labels``
    numbers the lesions as ``lesions`` does."""
    # A Figure of its own, not pyplot: nothing global changes (a notebook keeps its backend)
    from matplotlib.figure import Figure

    from inference.folders import atomic_temporary

    reorientation = Reorientation.to_target(grid.direction, "LPS")
    image = reorientation.apply(ct)
    marks = reorientation.apply(labels)
    spacing = reorientation.spacing_zyx(grid.spacing)
    centre = _centre(reorientation, image.shape, grid, lesions)
    planes = _planes(image, marks, spacing, centre)
    if lesions:  # the axial plane again, closer: small lesions and their axes stay legible
        planes.append(("lesion 1, RECIST axes", *planes[0][1:]))
    widths = [extent[1] for *_, extent, _ in planes]
    heights = [extent[2] for *_, extent, _ in planes]
    if lesions:
        widths[-1] = heights[0]
    width_in = PANEL_INCHES * len(planes)
    scale = width_in / sum(widths)
    figure = Figure(figsize=(width_in, max(heights) * scale + 1.0), facecolor="black")
    axes = figure.subplots(1, len(planes), gridspec_kw={"width_ratios": widths})
    for ax, (name, picture, marked, extent, point) in zip(axes, planes):
        _draw(ax, name, picture, marked, extent, point, lesions)
    if lesions:
        for ax in (axes[0], axes[-1]):
            _draw_axes(ax, lesions[0], reorientation, grid, spacing, image.shape)
        half = max(ZOOM_MIN_MM, ZOOM_FACTOR * lesions[0].long_axis_mm) / 2
        column, row = planes[0][-1]
        axes[-1].set_xlim(column - half, column + half)
        axes[-1].set_ylim(row + half, row - half)
    figure.suptitle(title, color="white", fontsize=11)
    figure.tight_layout()
    path = Path(path)
    with atomic_temporary(path, keep_suffix=True) as temporary:
        figure.savefig(temporary, dpi=100, facecolor="black", format="png")
    return path


def _centre(reorientation, shape, grid: Grid, lesions: list[Lesion]) -> tuple[int, int, int]:
    """Oriented (z, y, x) voxel where the planes cross: the largest lesion's long-axis
    midpoint on its RECIST slice, else the volume's centre."""
    if not lesions:
        return tuple(n // 2 for n in shape)
    ends = np.array(lesions[0].long_axis_ends_mm)
    return tuple(int(round(v)) for v in _oriented_index(reorientation, grid, shape,
                                                          ends.mean(axis=0)))


def _oriented_index(reorientation, grid: Grid, shape, point_mm) -> np.ndarray:
    """Continuous oriented (z, y, x) index of an LPS point."""
    direction = np.asarray(grid.direction, np.float64).reshape(3, 3)
    index_xyz = direction.T @ (np.asarray(point_mm) - np.asarray(grid.origin)) / np.asarray(
        grid.spacing)
    source = index_xyz[::-1]
    oriented = np.empty(3)
    for axis in range(3):
        c = source[reorientation.perm[axis]]
        oriented[axis] = shape[axis] - 1 - c if reorientation.flips[axis] else c
    return oriented


def _planes(image, marks, spacing, centre):
    """(name, picture, labels, extent, crossing point) of each plane, rows drawn top-down.

    Oriented LPS arrays: rows of an axial plane run anterior to posterior, columns right
    to left; the other two planes have their rows flipped to put superior at the top.
    """
    dz, dy, dx = spacing
    z, y, x = centre
    nz, ny, nx = image.shape
    return [
        ("axial", image[z], marks[z], (dx, nx * dx, ny * dy, dy), (x * dx, y * dy)),
        ("coronal", image[::-1, y], marks[::-1, y], (dx, nx * dx, nz * dz, dz),
         (x * dx, (nz - 1 - z) * dz)),
        ("sagittal", image[::-1, :, x], marks[::-1, :, x], (dy, ny * dy, nz * dz, dz),
         (y * dy, (nz - 1 - z) * dz)),
    ]


def _draw(ax, name, picture, marked, extent, point, lesions) -> None:
    column_mm, width, height, row_mm = extent
    ax.imshow(picture, cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1],
              extent=(-column_mm / 2, width - column_mm / 2, height - row_mm / 2, -row_mm / 2),
              interpolation="bilinear")
    rows = np.arange(picture.shape[0]) * row_mm
    columns = np.arange(picture.shape[1]) * column_mm
    for lesion in lesions:
        inside = marked == lesion.id
        if not inside.any():
            continue
        colour = COLOURS[(lesion.id - 1) % len(COLOURS)]
        ax.contour(columns, rows, inside.astype(np.float32), levels=[0.5], colors=[colour],
                   linewidths=1.0)
        r, c = np.nonzero(inside)
        ax.text(c.max() * column_mm + 3, r.min() * row_mm, str(lesion.id), color=colour,
                fontsize=9, fontweight="bold", va="bottom", clip_on=True)
    ax.axhline(point[1], color="#4a90d9", linewidth=0.4, alpha=0.5)
    ax.axvline(point[0], color="#4a90d9", linewidth=0.4, alpha=0.5)
    ax.set_title(name, color="white", fontsize=10)
    ax.set_xlim(-column_mm / 2, width - column_mm / 2)
    ax.set_ylim(height - row_mm / 2, -row_mm / 2)
    ax.set_aspect("equal")
    ax.axis("off")


def _draw_axes(ax, lesion: Lesion, reorientation, grid: Grid, spacing, shape) -> None:
    """The largest lesion's RECIST long and short axes on the axial plane (its slice)."""
    _, dy, dx = spacing
    for ends, style in ((lesion.long_axis_ends_mm, "-"), (lesion.short_axis_ends_mm, "--")):
        points = np.array([_oriented_index(reorientation, grid, shape, p) for p in ends])
        ax.plot(points[:, 2] * dx, points[:, 1] * dy, style, color="white", linewidth=1.0)
