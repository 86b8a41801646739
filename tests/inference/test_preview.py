"""The preview: a PNG with the planes as radiologists view them, whatever the storage."""

import numpy as np
import pytest
import SimpleITK as sitk

from inference.geometry import Reorientation
from inference.itk_images import volume_from_image
from inference.lesions import label_lesions, lesion_table
from inference.preview import _centre, _planes, write_preview
from tests.inference.test_lesions import lesion_image

pytest.importorskip("matplotlib")


def marked_image(orientation: str) -> sitk.Image:
    """A volume (LPS-indexed) whose one bright voxel lies at the patient's left, anterior,
    superior corner, stored in ``orientation``."""
    array = np.full((10, 12, 14), -1000, np.int16)
    array[-1, 0, -1] = 1000  # z superior, y anterior (LPS y grows posterior), x left
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    return sitk.DICOMOrient(image, orientation)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "PIL", "SAR"])
def test_each_plane_is_shown_as_radiologists_view_it(orientation):
    volume = volume_from_image(marked_image(orientation))
    reorientation = Reorientation.to_target(volume.grid.direction, "LPS")
    image = reorientation.apply(volume.array)
    spacing = reorientation.spacing_zyx(volume.grid.spacing)
    corner = (image.shape[0] - 1, 0, image.shape[2] - 1)
    planes = {name: (picture, extent)
              for name, picture, _, extent, _ in _planes(image, image, spacing, corner)}
    bright = {name: np.unravel_index(np.argmax(picture), picture.shape)
              for name, (picture, _) in planes.items()}
    rows, columns = planes["axial"][0].shape
    assert bright["axial"] == (0, columns - 1)  # anterior at the top, patient's left on the right
    assert bright["coronal"] == (0, planes["coronal"][0].shape[1] - 1)  # superior at the top
    assert bright["sagittal"] == (0, 0)  # anterior on the left
    # millimetres: each plane spans the volume's physical size
    assert planes["axial"][1][1:3] == pytest.approx((14 * 0.8, 12 * 0.9))
    assert planes["sagittal"][1][1:3] == pytest.approx((12 * 0.9, 10 * 3.0))


def test_the_planes_cross_at_the_largest_lesions_long_axis(tmp_path):
    volume = volume_from_image(lesion_image())
    mask = (volume.array > 0).astype(np.uint8)
    labels, _ = label_lesions(mask)
    lesions = lesion_table(mask, volume.grid, volume.array, labels=(labels, 3))
    reorientation = Reorientation.to_target(volume.grid.direction, "LPS")
    z, _, _ = _centre(reorientation, volume.array.shape, volume.grid, lesions)
    assert z == lesions[0].axial_slice
    path = write_preview(tmp_path / "p.png", volume.array, labels, volume.grid, lesions, "t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]


def test_a_case_without_lesions_is_shown_through_its_centre(tmp_path):
    volume = volume_from_image(lesion_image())
    labels = np.zeros(volume.array.shape, np.uint8)
    reorientation = Reorientation.to_target(volume.grid.direction, "LPS")
    assert _centre(reorientation, volume.array.shape, volume.grid, []) == (20, 40, 45)
    path = write_preview(tmp_path / "none.png", volume.array, labels, volume.grid, [],
                         "no lesion")
    assert path.stat().st_size > 1000
