"""RECIST diameters on shapes of known size: discs, rotated ellipses, spheres and
ellipsoids at anisotropic spacing, each within one voxel's in-plane diagonal."""

import math

import numpy as np
import pytest

from inference.recist import convex_hull, longest_diameter, outline_points, recist_axes, slice_axes

SPACING = (0.7, 0.9)  # rows, columns (mm): anisotropic in plane
DIAGONAL = math.hypot(*SPACING)


def ellipse(a_mm, b_mm, angle_deg, spacing=SPACING, size=160, centre=(0.3, -0.2)):
    """A digitised ellipse (semi-axes a along the rotated column axis, b across)."""
    rows = (np.arange(size)[:, None] - size / 2) * spacing[0] - centre[0]
    columns = (np.arange(size)[None, :] - size / 2) * spacing[1] - centre[1]
    t = math.radians(angle_deg)
    u = columns * math.cos(t) + rows * math.sin(t)
    v = -columns * math.sin(t) + rows * math.cos(t)
    return (u / a_mm) ** 2 + (v / b_mm) ** 2 <= 1


@pytest.mark.parametrize("angle", [0, 17, 30, 45, 60, 90, 133])
@pytest.mark.parametrize("a, b", [(20, 10), (25, 6), (12, 12)])
def test_a_rotated_ellipse_measures_its_axes(a, b, angle):
    axes = slice_axes(ellipse(a, b, angle), SPACING)
    assert axes.long_mm == pytest.approx(2 * a, abs=DIAGONAL)
    assert axes.short_mm == pytest.approx(2 * b, abs=DIAGONAL)


@pytest.mark.parametrize("angle", [0, 30, 75])
def test_the_long_axis_follows_the_ellipse_and_the_short_axis_is_perpendicular(angle):
    axes = slice_axes(ellipse(22, 9, angle), SPACING)
    scale = np.array(SPACING)
    long_vector = (axes.long_ends[1] - axes.long_ends[0]) * scale
    short_vector = (axes.short_ends[1] - axes.short_ends[0]) * scale
    assert np.linalg.norm(long_vector) == pytest.approx(axes.long_mm)
    assert np.linalg.norm(short_vector) == pytest.approx(axes.short_mm)
    assert abs(long_vector @ short_vector) < 1e-6 * axes.long_mm * axes.short_mm
    # (row, column) vector of the major axis: columns along cos, rows along sin
    direction = np.array([math.sin(math.radians(angle)), math.cos(math.radians(angle))])
    cosine = abs(long_vector @ direction) / np.linalg.norm(long_vector)
    assert cosine > math.cos(math.radians(5))


def test_one_voxel_is_one_voxel_across():
    mask = np.zeros((5, 5), bool)
    mask[2, 3] = True
    axes = slice_axes(mask, SPACING)
    assert axes.long_mm == pytest.approx(max(SPACING))
    assert axes.short_mm == pytest.approx(min(SPACING))


def test_a_row_of_voxels_is_its_length_by_one_voxel():
    mask = np.zeros((5, 20), bool)
    mask[2, 4:14] = True
    axes = slice_axes(mask, SPACING)
    assert axes.long_mm == pytest.approx(10 * SPACING[1])  # face to face along the row
    assert axes.short_mm == pytest.approx(SPACING[0])


def test_the_hull_of_the_extreme_faces_has_the_diameter_of_every_outline_face():
    """Only each row's and column's outermost faces are kept: the diameter is the one
    measured over every face between the lesion and the background."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((14, 17)) < 0.35
        mask[7, 8] = True
        padded = np.pad(mask, 1)
        faces = []
        for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            neighbour = padded[1 + dr:15 + dr, 1 + dc:18 + dc]
            r, c = np.nonzero(mask & ~neighbour)
            faces.append(np.stack([r + dr / 2, c + dc / 2], axis=1))
        points = np.concatenate(faces) * SPACING
        brute = np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max()
        assert longest_diameter(mask, SPACING) == pytest.approx(brute)
        assert len(convex_hull(outline_points(mask) * SPACING)) >= 3


def ellipsoid(semi_mm, spacing_zyx, shape, angle_deg=0.0):
    """A digitised ellipsoid (semi-axes x, y, z in mm) rotated in the axial plane."""
    z, y, x = (np.arange(n)[:, None, None].swapaxes(0, axis) * s - n * s / 2
               for axis, (n, s) in enumerate(zip(shape, spacing_zyx)))
    t = math.radians(angle_deg)
    u, v = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
    return (u / semi_mm[0]) ** 2 + (v / semi_mm[1]) ** 2 + (z / semi_mm[2]) ** 2 <= 1


@pytest.mark.parametrize("semi, angle", [((15, 15, 15), 0), ((18, 9, 12), 0),
                                         ((18, 9, 12), 35), ((11, 7, 25), 110)])
def test_a_sphere_or_ellipsoid_at_anisotropic_spacing(semi, angle):
    spacing = (2.5, 0.7, 0.9)
    lesion = ellipsoid(semi, spacing, (40, 90, 90), angle)
    k, axes = recist_axes(lesion, spacing)
    assert axes.long_mm == pytest.approx(2 * semi[0], abs=DIAGONAL)
    assert axes.short_mm == pytest.approx(2 * semi[1], abs=DIAGONAL)
    # the widest slice is the one nearest the equator (the volume's middle)
    assert abs((k + 0.5) * spacing[0] - 40 * spacing[0] / 2) <= spacing[0]
