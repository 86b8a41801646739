"""Reading scans as people hold them: NIfTI of any name, NRRD, MetaImage, DICOM series;
each bad input is one InputError line naming it; masks go back on the input's grid."""

import logging

import numpy as np
import pytest
import SimpleITK as sitk

from inference.dicom import read_series
from inference.folders import InputError
from inference.formats import read_scan, scan_name, write_mask
from inference.itk_images import volume_from_image
from tests.inference.dicom_series import write_dicom_series


def ct_image(shape_zyx=(12, 40, 48), spacing=(0.8, 0.8, 2.5), direction=None) -> sitk.Image:
    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 400, shape_zyx).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-20.5, 13.25, -300.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def same_grid(volume, image: sitk.Image, tolerance=1e-4) -> bool:
    return (volume.grid.size == image.GetSize()
            and np.allclose(volume.grid.spacing, image.GetSpacing(), atol=tolerance)
            and np.allclose(volume.grid.origin, image.GetOrigin(), atol=tolerance)
            and np.allclose(volume.grid.direction, image.GetDirection(), atol=tolerance))


def test_names_drop_the_suffix_and_the_challenge_channel():
    assert scan_name("a/ct_0000.nii.gz") == "ct"
    assert scan_name("ct.nii") == "ct"
    assert scan_name("Patient 7.NRRD") == "Patient 7"
    assert scan_name("ct.mha") == "ct"
    assert scan_name("series1") == "series1"


@pytest.mark.parametrize("name", ["scan.nii.gz", "scan.nii", "scan.nrrd", "scan.mha"])
def test_every_format_reads_the_same_voxels_and_grid(tmp_path, name):
    image = ct_image(direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    sitk.WriteImage(image, str(tmp_path / name))
    volume = read_scan(tmp_path / name)
    assert same_grid(volume, image)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_a_mask_is_written_on_the_inputs_grid(tmp_path, suffix):
    image = ct_image(direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    volume = read_scan(tmp_path / "ct.nrrd")
    mask = (volume.array > 300).astype(np.uint8)
    out = write_mask(mask, volume.grid, tmp_path / f"mask{suffix}")
    written = sitk.ReadImage(str(out))
    assert same_grid(volume, written)
    assert written.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct.nrrd", out.name])


@pytest.mark.parametrize("make, message", [
    (lambda: sitk.Image([30, 20], sitk.sitkInt16), "a 2D image of size 30x20"),
    (lambda: sitk.Image([8, 8, 4, 3], sitk.sitkInt16), "a 4D image"),
    (lambda: sitk.Image([8, 8, 4], sitk.sitkVectorInt16, 3), "3 values per voxel"),
])
def test_images_that_are_not_one_ct_volume_are_refused_in_one_line(tmp_path, make, message):
    path = tmp_path / "bad.mha"
    sitk.WriteImage(make(), str(path))
    with pytest.raises(InputError, match=message) as error:
        read_scan(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_4d_image_of_one_volume_reads_as_3d():
    image = sitk.JoinSeries([ct_image()])  # 4D, a single volume
    assert image.GetDimension() == 4
    assert volume_from_image(image).array.shape == (12, 40, 48)


def test_normalised_intensities_are_refused_as_the_nifti_reader_refuses_them(tmp_path):
    image = sitk.Cast(sitk.Image([8, 8, 4], sitk.sitkFloat32), sitk.sitkFloat32)
    sitk.WriteImage(image, str(tmp_path / "zeros.nrrd"))
    with pytest.raises(InputError, match="Hounsfield"):
        read_scan(tmp_path / "zeros.nrrd")


def test_other_files_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="not a scan this reads"):
        read_scan(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no such file"):
        read_scan(tmp_path / "missing.nii.gz")


# ----------------------------------------------------------------------------- DICOM


def test_a_series_reads_sorted_by_position_not_by_file_name(tmp_path):
    image = ct_image()
    names = [f"slice_{(k * 7) % 12:02d}.dcm" for k in range(12)]  # name order is not z order
    write_dicom_series(image, tmp_path, names=names)
    volume = read_series(tmp_path)
    assert same_grid(volume, image)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


def test_a_sagittal_series_keeps_its_geometry(tmp_path):
    image = ct_image(direction=(0, 0, 1, 1, 0, 0, 0, 1, 0))  # slices along x
    write_dicom_series(image, tmp_path)
    volume = read_series(tmp_path)
    assert same_grid(volume, image)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(image))


def test_the_series_with_most_slices_is_read_and_the_others_named(tmp_path, caplog):
    write_dicom_series(ct_image((5, 40, 48)), tmp_path, series=2,
                       names=[f"b{k}.dcm" for k in range(5)])
    write_dicom_series(ct_image(), tmp_path, series=1)
    with caplog.at_level(logging.WARNING):
        volume = read_series(tmp_path)
    assert volume.array.shape[0] == 12
    lines = [r.getMessage() for r in caplog.records if "DICOM series" in r.getMessage()]
    assert len(lines) == 1 and "(12 files, the most)" in lines[0] and "(5 files)" in lines[0]


def test_missing_slices_are_refused_naming_the_gap(tmp_path):
    write_dicom_series(ct_image(), tmp_path, drop=(5,))
    with pytest.raises(InputError) as error:
        read_series(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "1 slice(s) missing" in message
    assert "IM4.dcm and IM6.dcm" in message and "\n" not in message


def test_uneven_spacing_is_resampled_onto_an_even_grid_with_a_warning(tmp_path, caplog):
    image = ct_image()
    positions = [0, 2.5, 5, 7.5, 10, 13, 15.5, 18, 20.5, 23, 25.5, 28]  # one slice 0.5 off
    write_dicom_series(image, tmp_path, positions=positions)
    with caplog.at_level(logging.WARNING):
        volume = read_series(tmp_path)
    assert any("uneven slice spacing" in r.getMessage() for r in caplog.records)
    count = volume.array.shape[0]
    assert count == 12 and volume.grid.spacing[2] == pytest.approx(28 / 11)
    assert volume.grid.origin == pytest.approx(image.GetOrigin(), abs=1e-4)
    source = sitk.GetArrayFromImage(image).astype(np.float32)
    np.testing.assert_allclose(volume.array[0], source[0])
    np.testing.assert_allclose(volume.array[-1], source[-1])
    z = 5 * 28 / 11  # between the slices at 10 and 13 mm
    w = (z - 10) / 3
    np.testing.assert_allclose(volume.array[5], (1 - w) * source[4] + w * source[5],
                               rtol=1e-5, atol=1e-3)


def test_a_slice_is_within_a_tenth_of_a_step_is_read_as_it_is(tmp_path):
    positions = [k * 2.5 for k in range(12)]
    positions[4] += 0.2
    write_dicom_series(ct_image(), tmp_path, positions=positions)
    assert read_series(tmp_path).array.shape[0] == 12


def test_two_slices_at_one_position_are_refused(tmp_path):
    positions = [k * 2.5 for k in range(12)]
    positions[7] = positions[6]
    write_dicom_series(ct_image(), tmp_path, positions=positions)
    with pytest.raises(InputError, match="at the same position"):
        read_series(tmp_path)


def test_a_tilted_stack_is_refused(tmp_path):
    write_dicom_series(ct_image(), tmp_path, shear=0.6)  # 13.5 degrees off the normal
    with pytest.raises(InputError, match="13.5 degrees to their normal .gantry tilt"):
        read_series(tmp_path)


def test_one_slice_is_a_2d_image(tmp_path):
    write_dicom_series(ct_image((1, 40, 48)), tmp_path)
    with pytest.raises(InputError, match="one slice"):
        read_series(tmp_path)


def test_a_folder_without_a_series_says_so(tmp_path):
    (tmp_path / "readme.txt").write_text("no images")
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="no DICOM image series") as error:
        read_series(tmp_path)
    assert "subfolders are not searched" in str(error.value)
