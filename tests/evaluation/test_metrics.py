"""DSC / NSD and the FLARE 2024 Task 1 scoring rules, checked against hand-computed values."""

import math

import numpy as np
import pytest
from scipy import ndimage

from evaluation.metrics import dice, score_case, surface_dice

# z, y, x in mm: a z step is 3 mm (beyond the 2 mm tolerance), a y step 1 mm, an x step 0.5 mm.
SPACING = (3.0, 1.0, 0.5)
SHAPE = (9, 9, 16)
BOX_START = (3, 3, 4)
BOX_SIZE = (3, 3, 6)  # voxels: 9 x 3 x 3 mm


def box(shift=(0, 0, 0), shape=SHAPE, start=BOX_START, size=BOX_SIZE, value=1):
    """uint8 volume holding one box of voxels, moved by `shift` voxels."""
    mask = np.zeros(shape, np.uint8)
    lo = [s + d for s, d in zip(start, shift)]
    mask[tuple(slice(a, a + n) for a, n in zip(lo, size))] = value
    return mask


def expected_nsd_one_z_step(sz=3.0, sy=1.0, sx=0.5, nz=3, ny=3, nx=6):
    """NSD of the box against itself moved one voxel along z, worked out by hand.

    The surface passes half a voxel outside the box and is cut into 2x2x2 blocks of
    voxels: a face block (4 box corners) is a flat square of area sa*sb; an edge block
    (2 corners) a bevel strip of length s_free and width sqrt(sa^2 + sb^2)/2; a corner
    block (1 corner) a triangle through three half edges, area sqrt((sy*sx)^2 +
    (sz*sx)^2 + (sz*sy)^2)/8.

    Moved by one z step (sz = 3 mm): every side-wall block of one box is also a side-wall
    block of the other (distance 0), and every top-face block of the lower box is one y
    step (1 mm) from the upper box's side walls (ny = 3 leaves only 2 rows of face blocks,
    both next to a wall). Only the end layer facing away from the other box (the blocks
    below the gt's bottom, above the pred's top: face, 4 edges, 4 corners) is >= 3 mm from
    the other surface. Both boxes have the same area A, so NSD = 1 - A_end / A.
    """
    corner = math.sqrt((sy * sx) ** 2 + (sz * sx) ** 2 + (sz * sy) ** 2) / 8
    end_layer = ((ny - 1) * (nx - 1) * sy * sx                        # the face itself
                 + 2 * (nx - 1) * sx * math.hypot(sz, sy) / 2         # its 2 edges along x
                 + 2 * (ny - 1) * sy * math.hypot(sz, sx) / 2         # its 2 edges along y
                 + 4 * corner)
    side_walls = ((nz - 1) * (2 * (nx - 1) * sz * sx                  # walls facing +-y
                              + 2 * (ny - 1) * sz * sy                # walls facing +-x
                              + 4 * sz * math.hypot(sy, sx) / 2))     # the 4 edges along z
    total = 2 * end_layer + side_walls
    return 1.0 - end_layer / total


# With the defaults: end layer 5 + 2.5*sqrt(10) + 2*sqrt(9.25) + 0.5*sqrt(11.5) = 20.684 mm^2,
# side walls 30 + 24 + 12*sqrt(1.25) = 67.416 mm^2, so NSD = 1 - 20.684 / 108.785 = 0.8099.
NSD_ONE_Z_STEP = expected_nsd_one_z_step()


def test_hand_value_is_what_the_comment_says():
    assert NSD_ONE_Z_STEP == pytest.approx(0.80986, abs=1e-5)


def test_identical_masks_score_one():
    rng = np.random.default_rng(0)
    gt = (rng.random(SHAPE) < 0.3).astype(np.uint8)
    assert score_case(gt.copy(), gt, SPACING) == (1.0, 1.0)
    assert dice(gt, gt) == 1.0
    assert surface_dice(gt, gt, SPACING) == 1.0


def test_both_empty_scores_one():
    empty = np.zeros(SHAPE, np.uint8)
    assert score_case(empty, empty.copy(), SPACING) == (1.0, 1.0)


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_exactly_one_empty_scores_zero(which):
    full, empty = box(), np.zeros(SHAPE, np.uint8)
    pred, gt = (empty, full) if which == "pred" else (full, empty)
    assert score_case(pred, gt, SPACING) == (0.0, 0.0)


def test_label_two_fails_even_with_perfect_overlap():
    gt = box()
    # The same voxels, labelled 2: the masks agree perfectly, the label breaks the contract.
    assert dice(box(value=2), gt) == 1.0
    assert score_case(box(value=2), gt, SPACING) == (0.0, 0.0)
    one_stray_two = gt.copy()
    one_stray_two[0, 0, 0] = 2
    assert score_case(one_stray_two, gt, SPACING) == (0.0, 0.0)


def test_negative_label_fails():
    pred = box().astype(np.int16)
    pred[0, 0, 0] = -1
    assert score_case(pred, box(), SPACING) == (0.0, 0.0)


def test_bool_and_integer_predictions_score_alike():
    gt = box()
    pred = box(shift=(1, 0, 0))
    assert score_case(pred.astype(bool), gt, SPACING) == score_case(pred, gt, SPACING)


def test_shift_of_half_a_millimetre_is_within_tolerance():
    # One x step = 0.5 mm: every surfel of one box has a surfel of the other 0.5 mm away.
    dsc, nsd = score_case(box(shift=(0, 0, 1)), box(), SPACING)
    assert dsc == pytest.approx(5 / 6)  # 5 of the 6 x columns overlap
    assert nsd == 1.0


def test_shift_of_exactly_the_tolerance_counts_as_within():
    # Four x steps = 2.0 mm exactly; the organisers count distance <= tolerance.
    dsc, nsd = score_case(box(shift=(0, 0, 4)), box(), SPACING)
    assert dsc == pytest.approx(2 / 6)
    assert nsd == 1.0
    assert surface_dice(box(shift=(0, 0, 4)), box(), SPACING, tolerance_mm=1.9) < 1.0


def test_shift_of_one_slice_puts_end_faces_out_of_tolerance():
    dsc, nsd = score_case(box(shift=(1, 0, 0)), box(), SPACING)
    assert dsc == pytest.approx(2 / 3)  # 2 of the 3 slices overlap
    assert nsd == pytest.approx(NSD_ONE_Z_STEP, abs=1e-12)
    # Weighting by area matters: counting surfels instead would give 1 - 28/92 = 0.696.
    assert abs(nsd - (1 - 28 / 92)) > 0.1


def test_low_dsc_sets_nsd_to_zero():
    pred, gt = box(shift=(0, 0, 5)), box()  # one x column of 6 overlaps: DSC = 1/6
    assert surface_dice(pred, gt, SPACING) > 0.2
    dsc, nsd = score_case(pred, gt, SPACING)
    assert dsc == pytest.approx(1 / 6)
    assert nsd == 0.0


def test_spacing_order_matters():
    pred, gt = box(shift=(1, 0, 0)), box()
    # Given x,y,z by mistake, the z step looks like 0.5 mm and the one-slice shift vanishes.
    assert surface_dice(pred, gt, SPACING[::-1]) == 1.0
    assert surface_dice(pred, gt, SPACING) == pytest.approx(NSD_ONE_Z_STEP, abs=1e-12)


def test_transposed_arrays_with_transposed_spacing_agree():
    # The organisers read x,y,z arrays with nibabel; we read z,y,x with SimpleITK.
    rng = np.random.default_rng(3)
    blobs = ndimage.gaussian_filter(rng.random((12, 20, 24)), 2.0)
    gt = blobs > np.quantile(blobs, 0.8)
    pred = np.roll(gt, 1, axis=0) & (blobs > np.quantile(blobs, 0.7))
    ours = surface_dice(pred, gt, SPACING)
    theirs = surface_dice(pred.T, gt.T, SPACING[::-1])
    assert 0.2 < ours < 1.0
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_result_does_not_depend_on_where_the_masks_sit():
    small = score_case(box(shift=(1, 0, 0)), box(), SPACING)
    big_shape = (40, 200, 200)
    start = (20, 150, 30)
    big = score_case(box(shift=(1, 0, 0), shape=big_shape, start=start),
                     box(shape=big_shape, start=start), SPACING)
    # Touching the edge of the array: the organisers pad with zeros, so the surface closes.
    edge_shape = (4, 3, 6)
    edge = score_case(box(shift=(1, 0, 0), shape=edge_shape, start=(0, 0, 0)),
                      box(shape=edge_shape, start=(0, 0, 0)), SPACING)
    assert big == pytest.approx(small, abs=1e-12)
    assert edge == pytest.approx(small, abs=1e-12)


def test_non_planar_surfel_area_matches_the_official_table():
    from evaluation.metrics import _surfel_area_table

    # Three foreground corners in an L on one face of a 2x2x2 block: (1,1,1), (1,1,0),
    # (1,0,1) as (z,y,x) offsets, bits 7, 6, 5 -> code 224. Its surface is a non-planar
    # pentagon; the official lookup folds it into the triangle parallel to the face
    # (area 1/2 at unit spacing, normal along z) and a flat chamfer quad in the plane
    # z+y+x = 1.5 (area vector (3/8, 3/8, 3/8), area 3*sqrt(3)/8).
    code = 224
    unit = _surfel_area_table((1.0, 1.0, 1.0))[code]
    assert unit == pytest.approx(0.5 + 3 * math.sqrt(3) / 8)
    # At (3, 1, 0.5) mm an area vector scales by (sy*sx, sz*sx, sz*sy) = (0.5, 1.5, 3):
    # the triangle becomes 0.5 * 0.5 = 0.25 mm^2, the quad |(0.1875, 0.5625, 1.125)| mm^2.
    aniso = _surfel_area_table(SPACING)[code]
    assert aniso == pytest.approx(0.25 + math.sqrt(0.1875 ** 2 + 0.5625 ** 2 + 1.125 ** 2))
    # A block and its complement bound the same surface.
    assert _surfel_area_table(SPACING)[255 - code] == pytest.approx(aniso)

    # Two foreground corners diagonal on a face, (0,0,0) and (0,1,1) -> code 9: the face is
    # ambiguous; like the official table, the lone corners are cut off as two small
    # triangles, and so are the two lone background corners of the complement (code 246).
    corner_triangle = math.sqrt(0.5 ** 2 + 1.5 ** 2 + 3.0 ** 2) / 8
    assert _surfel_area_table(SPACING)[9] == pytest.approx(2 * corner_triangle)
    assert _surfel_area_table(SPACING)[246] == pytest.approx(2 * corner_triangle)


@pytest.mark.parametrize("call", [
    lambda: score_case(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)), SPACING),
    lambda: score_case(np.zeros((2, 2)), np.zeros((2, 2)), SPACING),
    lambda: surface_dice(box(), box(), (1.0, 1.0)),
    lambda: surface_dice(box(), box(), (1.0, 0.0, 1.0)),
])
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
