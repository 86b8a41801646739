"""The lesion table: sizes, places in patient coordinates, intensities and RECIST axes,
the same whichever way the scan is stored."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from inference.itk_images import volume_from_image
from inference.lesions import case_statistics, label_lesions, lesion_table
from tests.inference.test_recist import ellipsoid

SPACING_XYZ = (0.7, 0.9, 2.5)
SHAPE_ZYX = (40, 80, 90)


def lesion_image() -> sitk.Image:
    """A CT-like image (HU) with an ellipsoid (18 x 9 x 12 mm semi-axes, turned 30
    degrees), a sphere of radius 5 mm and one voxel, at anisotropic spacing."""
    mask = np.zeros(SHAPE_ZYX, np.uint8)
    mask[:, 10:70, 5:65] |= ellipsoid((18, 9, 12), SPACING_XYZ[::-1], (40, 60, 60), 30)
    mask[10:30, 50:76, 60:86] |= ellipsoid((5, 5, 5), SPACING_XYZ[::-1], (20, 26, 26))
    mask[35, 5, 85] = 1
    hu = np.where(mask > 0, 60, -900).astype(np.int16)
    hu[mask > 0] += np.arange(int(mask.sum()), dtype=np.int16) % 50
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-31.0, 12.5, 240.0))
    return image


def table_of(image: sitk.Image, probability=None):
    volume = volume_from_image(image)
    mask = (volume.array > 0).astype(np.uint8)
    return mask, volume, lesion_table(mask, volume.grid, volume.array, probability)


def test_lesions_are_numbered_from_the_largest_and_sum_to_the_mask():
    mask, volume, lesions = table_of(lesion_image())
    assert [lesion.id for lesion in lesions] == [1, 2, 3]
    assert [lesion.voxels for lesion in lesions] == sorted(
        (lesion.voxels for lesion in lesions), reverse=True)
    assert lesions[2].voxels == 1
    assert sum(lesion.voxels for lesion in lesions) == int(mask.sum())
    voxel_ml = math.prod(SPACING_XYZ) / 1000
    for lesion in lesions:
        assert lesion.volume_ml == pytest.approx(lesion.voxels * voxel_ml)
    totals = case_statistics("case", lesions, volume.grid)["totals"]
    assert totals["voxels"] == int(mask.sum())
    assert totals["volume_ml"] == pytest.approx(mask.sum() * voxel_ml)
    labels, count = label_lesions(mask)
    assert count == 3 and np.bincount(labels.ravel())[1:].tolist() == [
        lesion.voxels for lesion in lesions]


def test_centroid_and_box_are_where_itk_puts_them():
    image = sitk.DICOMOrient(lesion_image(), "RAS")  # flipped axes and a moved origin
    mask, volume, lesions = table_of(image)
    shapes = sitk.LabelShapeStatisticsImageFilter()
    shapes.Execute(sitk.ConnectedComponent(sitk.GetImageFromArray(mask), True))
    reference = sitk.Image(image)
    by_size = sorted(shapes.GetLabels(), key=shapes.GetNumberOfPixels, reverse=True)
    for lesion, label in zip(lesions, by_size):
        box = shapes.GetBoundingBox(label)  # x, y, z start then size, in voxel indices
        assert lesion.bbox_min_index == tuple(box[:3])
        assert lesion.bbox_max_index == tuple(b + n - 1 for b, n in zip(box[:3], box[3:]))
        index = shapes.GetCentroid(label)  # physical on an identity grid: the index here
        expected = reference.TransformContinuousIndexToPhysicalPoint(index)
        assert lesion.centroid_mm == pytest.approx(expected, abs=1e-3)


def test_hu_and_probability_are_each_lesions_own():
    image = lesion_image()
    hu = sitk.GetArrayFromImage(image)
    probability = np.where(hu > 0, 0.5 + (hu % 7) / 20, 0.01).astype(np.float32)
    mask, _, lesions = table_of(image, probability)
    labels, _ = label_lesions(mask)
    for lesion in lesions:
        inside = labels == lesion.id
        assert lesion.hu_mean == pytest.approx(hu[inside].mean())
        assert lesion.hu_max == hu[inside].max()
        assert lesion.probability_mean == pytest.approx(probability[inside].mean(), rel=1e-6)
        assert lesion.probability_max == pytest.approx(probability[inside].max())


def test_the_ellipsoid_measures_its_axes_on_its_widest_axial_slice():
    _, _, lesions = table_of(lesion_image())
    diagonal = math.hypot(*SPACING_XYZ[:2])
    big, sphere = lesions[0], lesions[1]
    assert big.long_axis_mm == pytest.approx(36, abs=diagonal)
    assert big.short_axis_mm == pytest.approx(18, abs=diagonal)
    assert sphere.long_axis_mm == pytest.approx(10, abs=diagonal)
    assert abs(big.axial_slice - 20) <= 1
    ends = np.array(big.long_axis_ends_mm)
    assert ends[0, 2] == ends[1, 2] == 240.0 + big.axial_slice * SPACING_XYZ[2]
    assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(big.long_axis_mm, abs=1e-3)
    short = np.array(big.short_axis_ends_mm)
    assert abs((ends[1] - ends[0]) @ (short[1] - short[0])) < 1e-2


@pytest.mark.parametrize("orientation", ["RAS", "PIL", "SLP", "ILA"])
def test_a_scan_stored_another_way_gives_the_same_table(orientation):
    """Axial means perpendicular to the patient's long axis, whatever the storage: a
    sagittally or coronally stored copy is measured on the same planes."""
    _, _, expected = table_of(lesion_image())
    stored = sitk.DICOMOrient(lesion_image(), orientation)
    _, volume, lesions = table_of(stored)
    size = stored.GetSize()
    axis = int(np.argmax(np.abs(np.array(stored.GetDirection()).reshape(3, 3)[2])))
    for lesion, reference in zip(lesions, expected):
        assert lesion.voxels == reference.voxels
        assert lesion.centroid_mm == pytest.approx(reference.centroid_mm, abs=1e-3)
        assert lesion.long_axis_mm == pytest.approx(reference.long_axis_mm)
        assert lesion.short_axis_mm == pytest.approx(reference.short_axis_mm)
        assert np.array(lesion.long_axis_ends_mm) == pytest.approx(
            np.array(reference.long_axis_ends_mm), abs=1e-3)
        # the same physical slice, counted along the stored image's own axis
        point = stored.TransformIndexToPhysicalPoint(
            [lesion.axial_slice if a == axis else 0 for a in range(3)])
        assert point[2] == pytest.approx(240.0 + reference.axial_slice * SPACING_XYZ[2])
        assert 0 <= lesion.axial_slice < size[axis]


def test_no_lesion_gives_an_empty_table_and_zero_totals():
    image = lesion_image()
    volume = volume_from_image(image)
    mask = np.zeros(volume.array.shape, np.uint8)
    assert lesion_table(mask, volume.grid, volume.array) == []
    statistics = case_statistics("empty", [], volume.grid)
    assert statistics["totals"] == {"lesions": 0, "voxels": 0, "volume_ml": 0,
                                    "largest_long_axis_mm": 0.0}
    json.dumps(statistics)
