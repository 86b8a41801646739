"""Reading challenge inputs as they arrive in the wild, and writing masks on their grid."""

from __future__ import annotations

import glob
import gzip
import logging
import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference import gzip_stream, nifti
from inference.folders import InputError, check_output_dir, list_cases, shard
from inference.nifti import CtVolume, Grid, read_ct
from inference.nifti_writer import write_mask, write_probabilities

REAL_DATA = Path(__file__).parents[2].parent / "shared" / "data" / "real"

_DATATYPE = {"uint8": 2, "int8": 256, "int16": 4, "int32": 8, "float32": 16, "float64": 64,
             "uint16": 512}


def nifti1(array_zyx, spacing=(0.8, 0.8, 2.5), affine=None, slope=0.0, inter=0.0,
           endian="<", qform_code=0, sform_code=1) -> bytes:
    """A minimal single-file NIfTI-1: `array_zyx` (t, z, y, x or fewer axes) + a RAS sform."""
    array = np.asarray(array_zyx)
    dims = array.shape[::-1]
    if affine is None:
        affine = np.diag([*spacing[: len(dims)], *[1.0] * (3 - len(dims)), 1.0])
    header = bytearray(348)
    struct.pack_into(endian + "i", header, 0, 348)
    struct.pack_into(endian + "8h", header, 40, len(dims), *dims, *[1] * (7 - len(dims)))
    code = _DATATYPE[array.dtype.name]
    struct.pack_into(endian + "hh", header, 70, code, array.dtype.itemsize * 8)
    pixdim = [1.0, *spacing, 1.0, 1.0, 1.0, 1.0][:8]
    struct.pack_into(endian + "8f", header, 76, *pixdim)
    struct.pack_into(endian + "3f", header, 108, 352.0, slope, inter)
    struct.pack_into(endian + "hh", header, 252, qform_code, sform_code)
    struct.pack_into(endian + "12f", header, 280, *np.asarray(affine, float)[:3].ravel())
    header[344:348] = b"n+1\0"
    data = array.astype(array.dtype.newbyteorder(endian)).tobytes()  # C order: x fastest
    return bytes(header) + b"\0" * 4 + data


def save(folder: Path, name: str, raw: bytes, compress: bool = True) -> Path:
    path = folder / name
    path.write_bytes(gzip.compress(raw, compresslevel=1) if compress else raw)
    return path


def ct_like(shape=(20, 32, 32), seed=0) -> np.ndarray:
    """HU-like int16 values that do not compress to nothing (so a cut file loses data)."""
    return np.random.default_rng(seed).integers(-1024, 1500, shape).astype(np.int16)


def oblique_affine(spacing=(0.8, 0.75, 2.5), origin=(-120.5, 88.25, 13.0)) -> np.ndarray:
    a, b = np.deg2rad(17.0), np.deg2rad(9.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def assert_one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert path.name in message
    return message


def assert_same_grid(written: Path, source: Path) -> None:
    out, ref = sitk.ReadImage(str(written)), sitk.ReadImage(str(source))
    assert out.GetSize() == ref.GetSize()
    assert out.GetSpacing() == ref.GetSpacing()
    assert out.GetOrigin() == ref.GetOrigin()
    assert out.GetDirection() == ref.GetDirection()
    assert out.GetPixelID() == sitk.sitkUInt8


def test_reading_writing_and_postprocessing_never_import_torch():
    code = "import sys, inference.nifti, inference.postprocess; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).parents[2], check=True)
    assert result.stdout.strip() == "False"


# ----------------------------------------------------------------------------- bad inputs


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty_0000.nii.gz"
    path.touch()
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "0 bytes" in assert_one_line_naming(error, path)


def test_missing_file(tmp_path):
    path = tmp_path / "gone_0000.nii.gz"
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert_one_line_naming(error, path)


def test_truncated_gzip_is_refused_although_simpleitk_reads_it(tmp_path):
    array = ct_like()
    path = save(tmp_path, "cut_0000.nii.gz", nifti1(array))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    silently = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))  # no error from ITK ...
    assert silently.shape == array.shape
    assert (silently[-5:] == 0).all() and not (array[-5:] == 0).all()  # ... just zeros

    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "truncated" in assert_one_line_naming(error, path)


def test_gzip_missing_only_its_trailer_is_refused(tmp_path):
    path = save(tmp_path, "tail_0000.nii.gz", nifti1(ct_like()))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "truncated" in assert_one_line_naming(error, path)


def test_multi_member_gzip_reads_and_its_truncation_is_caught(tmp_path):
    raw = nifti1(ct_like())
    path = tmp_path / "multi_0000.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    np.testing.assert_array_equal(read_ct(path).array, ct_like())

    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:])[:-100])
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "truncated" in assert_one_line_naming(error, path)


def test_streamed_gzip_reader_reads_the_same_and_catches_truncation(tmp_path, monkeypatch):
    """The streamed reader (used when isal's in-memory one is missing) behaves the same."""
    monkeypatch.setattr(gzip_stream, "IN_MEMORY_READER", None)
    raw = nifti1(ct_like())
    path = tmp_path / "streamed_0000.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    np.testing.assert_array_equal(read_ct(path).array, ct_like())
    path.write_bytes(gzip.compress(raw)[:-100])
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "truncated" in assert_one_line_naming(error, path)


def test_complete_file_is_checked_without_decompressing_it(tmp_path, monkeypatch):
    """One full decompression per read: the voxels'; the integrity check reads the trailer."""
    path = save(tmp_path, "fast_0000.nii.gz", nifti1(ct_like()))
    opened = []

    def counting(real):
        def open_counted(*args, **kwargs):
            opened.append(real)
            return real(*args, **kwargs)
        return open_counted

    # Either reader inflates: isal's from memory, or the streamed one without it.
    monkeypatch.setattr(gzip_stream._gzip, "open", counting(gzip_stream._gzip.open))
    if gzip_stream.IN_MEMORY_READER is not None:
        monkeypatch.setattr(gzip_stream, "IN_MEMORY_READER",
                            counting(gzip_stream.IN_MEMORY_READER))
    assert read_ct(path).array.shape == (20, 32, 32)
    assert len(opened) == 1


@pytest.mark.parametrize("dtype", ["int16", "int32", "float32", "uint8", ">i2", ">f4"])
@pytest.mark.parametrize("scaled", [False, True])
def test_voxels_equal_itk_for_every_type_byte_order_and_scaling(tmp_path, dtype, scaled):
    array = ct_like()
    if dtype == "uint8":
        array = np.clip(array, 0, 255)
    image = sitk.GetImageFromArray(array.astype(dtype.lstrip("<>")))
    image.SetSpacing((0.7, 0.8, 2.5))
    path = tmp_path / f"{dtype.replace('>', 'be')}_{scaled}_0000.nii.gz"
    sitk.WriteImage(image, str(path))
    raw = bytearray(gzip.decompress(path.read_bytes()))
    if dtype.startswith(">"):  # rewrite as a big-endian file with the same content
        raw = _big_endian(raw, np.dtype(dtype))
    if scaled:
        order = ">" if dtype.startswith(">") else "<"
        struct.pack_into(order + "2f", raw, 112, 0.5, -1024.0)
    path.write_bytes(gzip.compress(bytes(raw), compresslevel=1))
    if dtype == "uint8" and not scaled:  # 0..255 without scaling cannot be HU
        for itk_voxels in (False, True):
            with pytest.raises(InputError, match="8-bit voxels"):
                read_ct(path, itk_voxels=itk_voxels)
        return
    ours, itk = read_ct(path), read_ct(path, itk_voxels=True)
    assert ours.grid == itk.grid
    np.testing.assert_array_equal(ours.array.astype(np.float32), itk.array)
    assert ours.array.flags.writeable and ours.array.dtype.isnative


def _big_endian(raw: bytearray, dtype: np.dtype) -> bytearray:
    """A little-endian NIfTI-1 file's bytes rewritten big-endian (header fields and voxels)."""
    header = bytes(raw[:348])
    out = bytearray(raw)
    for offset, fmt in ((0, "i"), (40, "8h"), (56, "3f"), (68, "4h"), (76, "8f"), (108, "3f"),
                        (120, "h"), (122, "2b"), (124, "4f"), (140, "2i"), (252, "2h"),
                        (256, "18f")):
        values = struct.unpack_from("<" + fmt, header, offset)
        struct.pack_into(">" + fmt, out, offset, *values)
    offset = int(struct.unpack_from("<f", header, 108)[0])
    voxels = np.frombuffer(bytes(raw[offset:]), dtype.newbyteorder("<"))
    out[offset:] = voxels.astype(dtype).tobytes()
    return out


def test_uncompressed_data_named_nii_gz_is_read(tmp_path):
    array = ct_like()
    path = save(tmp_path, "plain_0000.nii.gz", nifti1(array), compress=False)
    np.testing.assert_array_equal(read_ct(path).array, array)


def test_truncated_uncompressed_file_is_refused(tmp_path):
    raw = nifti1(ct_like())
    path = save(tmp_path, "plaincut_0000.nii.gz", raw[: len(raw) // 2], compress=False)
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "truncated" in assert_one_line_naming(error, path)


@pytest.mark.parametrize("content", [b"not an image at all\n" * 40,
                                     gzip.compress(b"not an image at all\n" * 40)])
def test_not_nifti_gives_one_line(tmp_path, content):
    path = tmp_path / "text_0000.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "NIfTI" in assert_one_line_naming(error, path)


def test_nifti2_is_refused_with_a_hint(tmp_path):
    header = bytearray(540)
    struct.pack_into("<i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    path = save(tmp_path, "two_0000.nii.gz", bytes(header) + bytes(4) + bytes(64))
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "NIfTI-2" in assert_one_line_naming(error, path)


def test_2d_image_is_refused(tmp_path):
    path = save(tmp_path, "flat_0000.nii.gz", nifti1(ct_like((32, 32))))
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "2D" in assert_one_line_naming(error, path)


def test_4d_with_singleton_fourth_axis_is_squeezed(tmp_path):
    array = ct_like()
    path = save(tmp_path, "single_0000.nii.gz", nifti1(array[None]))
    volume = read_ct(path)
    assert volume.array.shape == array.shape
    np.testing.assert_array_equal(volume.array, array)
    out = write_mask(volume.array > 0, volume, tmp_path / "single.nii.gz")
    assert sitk.ReadImage(str(out)).GetDimension() == 3


def test_real_4d_is_refused(tmp_path):
    path = save(tmp_path, "series_0000.nii.gz", nifti1(np.stack([ct_like(), ct_like(seed=1)])))
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "4D" in assert_one_line_naming(error, path)


def test_oblique_direction_is_kept(tmp_path):
    affine = oblique_affine()
    path = save(tmp_path, "tilt_0000.nii.gz", nifti1(ct_like(), spacing=(0.8, 0.75, 2.5),
                                                      affine=affine))
    volume = read_ct(path)
    direction = np.reshape(volume.direction, (3, 3))
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(direction, lps @ affine[:3, :3] / [0.8, 0.75, 2.5], atol=1e-6)
    np.testing.assert_allclose(volume.origin, lps @ affine[:3, 3], atol=1e-4)
    np.testing.assert_allclose(volume.spacing, (0.8, 0.75, 2.5), rtol=1e-6)


def test_lps_and_ras_files_keep_their_direction_and_voxel_order(tmp_path):
    array = ct_like()
    ras = save(tmp_path, "ras_0000.nii.gz", nifti1(array, affine=np.diag([0.8, 0.8, 2.5, 1])))
    lps = save(tmp_path, "lps_0000.nii.gz", nifti1(array, affine=np.diag([-0.8, -0.8, 2.5, 1])))
    read_ras, read_lps = read_ct(ras), read_ct(lps)
    assert read_ras.direction == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert read_lps.direction == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    np.testing.assert_array_equal(read_ras.array, read_lps.array)  # never reoriented here
    for volume, source in ((read_ras, ras), (read_lps, lps)):
        out = write_mask(volume.array > 0, volume, tmp_path / source.name.replace("_0000", ""))
        assert_same_grid(out, source)


def test_big_endian_file_is_read_and_its_mask_round_trips(tmp_path):
    array = ct_like()
    path = save(tmp_path, "big_0000.nii.gz", nifti1(array, endian=">"))
    volume = read_ct(path)
    np.testing.assert_array_equal(volume.array, array)
    out = write_mask(volume.array > 0, volume, tmp_path / "big.nii.gz")
    assert_same_grid(out, path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), array > 0)


@pytest.mark.parametrize("dtype", ["int16", "int32", "uint16", "float32", "float64", "int8"])
def test_voxel_types_are_kept_up_to_16_bits_else_float32_hu(tmp_path, dtype):
    values = ct_like().astype(np.int32)
    if dtype == "uint16":  # HU with air, stored unsigned with its intercept's data shifted
        values = values.clip(0, None) + 600  # no value where air would be: kept as it is
    if dtype == "int8":
        values = values.clip(-128, 127)
    array = values.astype(dtype)
    path = save(tmp_path, f"{dtype}_0000.nii.gz", nifti1(array))
    volume = read_ct(path)
    kept = dtype in ("int16", "uint16", "int8", "float32")
    assert volume.array.dtype == (np.dtype(dtype) if kept else np.float32)
    np.testing.assert_array_equal(volume.array.astype(np.float32), array.astype(np.float32))


def test_unsigned_hu_plus_1024_without_its_intercept_is_corrected(tmp_path, caplog):
    hu = ct_like()
    path = save(tmp_path, "shifted_0000.nii.gz", nifti1((hu.astype(np.int32) + 1024)
                                                        .astype(np.uint16)))
    with caplog.at_level(logging.WARNING, logger="inference.nifti"):
        volume = read_ct(path)
    np.testing.assert_array_equal(volume.array, hu)
    assert volume.array.dtype == np.int16 and "1024 subtracted" in caplog.text
    caplog.clear()
    tissue = save(tmp_path, "tissue_0000.nii.gz", nifti1(np.clip(hu, -100, None)))
    with caplog.at_level(logging.WARNING, logger="inference.nifti"):
        np.testing.assert_array_equal(read_ct(tissue).array, np.clip(hu, -100, None))
    assert "no voxel under -500 HU" in caplog.text and "tissue_0000" in caplog.text


def test_scl_slope_and_inter_are_applied(tmp_path):
    stored = np.random.default_rng(2).integers(0, 2000, (10, 16, 16)).astype(np.int16)
    path = save(tmp_path, "scaled_0000.nii.gz", nifti1(stored, slope=2.0, inter=-1024.0))
    np.testing.assert_array_equal(read_ct(path).array, stored.astype(np.float32) * 2 - 1024)


def test_padding_of_minus_3024_is_kept_as_values(tmp_path):
    array = ct_like()
    array[:, :, :5] = -3024
    volume = read_ct(save(tmp_path, "pad_0000.nii.gz", nifti1(array)))
    assert (volume.array[:, :, :5] == -3024).all()
    assert volume.array.min() == -3024


def test_intensities_already_in_0_1_are_refused(tmp_path):
    array = np.random.default_rng(3).random((10, 16, 16)).astype(np.float32)
    path = save(tmp_path, "norm_0000.nii.gz", nifti1(array))
    with pytest.raises(InputError) as error:
        read_ct(path)
    assert "Hounsfield" in assert_one_line_naming(error, path)


def test_nan_and_inf_voxels_are_read_as_finite_values(tmp_path):
    array = ct_like().astype(np.float32)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    volume = read_ct(save(tmp_path, "nan_0000.nii.gz", nifti1(array)))
    assert np.isfinite(volume.array).all()
    # the lowest finite value (air-like, where scanners leave NaN outside the field of view);
    # ITK's NIfTI library would have written 0 (water)
    assert (volume.array[0, 0, :3] == array[np.isfinite(array)].min()).all()
    np.testing.assert_array_equal(volume.array[1:], array[1:])


def test_non_finite_voxels_that_reach_us_become_the_lowest_value(caplog):
    array = ct_like().astype(np.float32)
    array[0, 0, :3] = [np.nan, np.inf, -np.inf]
    with caplog.at_level(logging.WARNING, logger="inference.nifti"):
        checked = nifti.check_intensities(array.copy(), Path("nan_0000.nii.gz"))
    assert np.isfinite(checked).all()
    assert (checked[0, 0, :3] == array[np.isfinite(array)].min()).all()
    assert "3 NaN/inf" in caplog.text
    with pytest.raises(InputError):
        nifti.check_intensities(np.full((2, 2, 2), np.nan, np.float32), Path("x_0000.nii.gz"))


def test_sheared_sform_is_read_with_a_warning_and_no_itk_noise(tmp_path, caplog, capfd,
                                                               monkeypatch):
    affine = np.array([[0.8, 0.2, 0, -10], [0, 0.8, 0, 20], [0, 0, 2.5, 30], [0, 0, 0, 1]])
    path = save(tmp_path, "shear_0000.nii.gz", nifti1(ct_like(), affine=affine))
    with monkeypatch.context() as plain:
        plain.delenv("ITK_NIFTI_SFORM_PERMISSIVE", raising=False)
        with pytest.raises(RuntimeError):  # what SimpleITK does with it by default
            sitk.ReadImage(str(path))
    capfd.readouterr()
    with caplog.at_level(logging.WARNING, logger="inference.nifti"):
        volume = read_ct(path)
    assert "not a rotation" in caplog.text
    assert capfd.readouterr().err == ""
    direction = np.reshape(volume.direction, (3, 3))
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
    out = write_mask(volume.array > 0, volume, tmp_path / "shear.nii.gz")
    with gzip.open(out) as written, gzip.open(path) as source:  # same sform, same place
        assert written.read(348)[252:344] == source.read(348)[252:344]


# ----------------------------------------------------------------------------- folders


def test_list_cases_sorts_and_skips_hidden_and_other_files(tmp_path):
    for name in ("b_0000.nii.gz", "a_0000.nii.gz", "._a_0000.nii.gz", ".c_0000.nii.gz",
                 "a_0001.nii.gz", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "d_0000.nii.gz").mkdir()
    assert list_cases(tmp_path) == [("a", tmp_path / "a_0000.nii.gz"),
                                    ("b", tmp_path / "b_0000.nii.gz")]


def test_missing_input_folder(tmp_path):
    with pytest.raises(InputError) as error:
        list_cases(tmp_path / "inputs")
    assert "does not exist" in assert_one_line_naming(error, tmp_path / "inputs")


def test_empty_input_folder(tmp_path):
    with pytest.raises(InputError) as error:
        list_cases(tmp_path)
    assert "empty" in assert_one_line_naming(error, tmp_path)


def test_input_folder_with_only_hidden_or_misnamed_files(tmp_path):
    (tmp_path / "._case_0000.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError) as error:
        list_cases(tmp_path)
    assert "hidden" in str(error.value)
    (tmp_path / "case.nii.gz").write_bytes(b"x")
    with pytest.raises(InputError) as error:
        list_cases(tmp_path)
    assert "case.nii.gz" in str(error.value) and "_0000.nii.gz" in str(error.value)


def test_input_folder_that_is_a_file(tmp_path):
    path = tmp_path / "inputs"
    path.write_bytes(b"")
    with pytest.raises(InputError):
        list_cases(path)


def test_shard_is_a_round_robin_partition():
    cases = [(f"c{i}", Path(f"c{i}_0000.nii.gz")) for i in range(7)]
    parts = [shard(cases, 3, i) for i in range(3)]
    assert parts[0] == [cases[0], cases[3], cases[6]]
    assert sorted(sum(parts, [])) == sorted(cases)
    assert shard(cases, 1, 0) == cases
    for num_parts, part_id in ((0, 0), (3, 3), (3, -1), (2.0, 0), (True, 0)):
        with pytest.raises(ValueError):
            shard(cases, num_parts, part_id)


def test_output_folder_is_created(tmp_path):
    assert check_output_dir(tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []  # the probe file is gone


def test_output_folder_under_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InputError) as error:
        check_output_dir(tmp_path / "file" / "outputs")
    assert_one_line_naming(error, tmp_path / "file" / "outputs")
    with pytest.raises(InputError):
        check_output_dir(tmp_path / "file")


def test_output_folder_without_write_permission_is_refused(tmp_path):
    folder = tmp_path / "outputs"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        try:
            (folder / "probe").write_bytes(b"")
        except PermissionError:
            pass
        else:
            pytest.skip("permission bits are ignored here (running as root)")
        with pytest.raises(InputError) as error:
            check_output_dir(folder)
        assert "not writable" in assert_one_line_naming(error, folder)
    finally:
        folder.chmod(stat.S_IRWXU)


def test_output_folder_where_no_file_can_be_created_is_refused(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)  # what a read-only mount does for non-root
    with pytest.raises(InputError) as error:
        check_output_dir(tmp_path)
    assert "not writable" in assert_one_line_naming(error, tmp_path)


# ----------------------------------------------------------------------------- writing


@pytest.mark.parametrize("affine", [np.diag([-0.8, -0.75, 2.5, 1.0]), oblique_affine()],
                         ids=["ras", "oblique"])
def test_written_mask_lies_exactly_on_the_input_grid(tmp_path, affine):
    array = ct_like()
    source = save(tmp_path, "case_0000.nii.gz", nifti1(array, spacing=(0.8, 0.75, 2.5),
                                                        affine=affine))
    volume = read_ct(source)
    out = write_mask(volume.array > 500, volume, tmp_path / "out" / "case.nii.gz")
    assert_same_grid(out, source)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), array > 500)


def test_atomic_write_leaves_only_the_output_with_ordinary_permissions(tmp_path):
    volume = read_ct(save(tmp_path, "case_0000.nii.gz", nifti1(ct_like())))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    write_mask(volume.array > 0, volume, out_dir / "case.nii.gz")
    assert [p.name for p in out_dir.iterdir()] == ["case.nii.gz"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out_dir / "case.nii.gz").stat().st_mode) == 0o666 & ~umask


def test_mask_is_invisible_to_globbing_readers_until_complete(tmp_path, monkeypatch):
    volume = read_ct(save(tmp_path, "case_0000.nii.gz", nifti1(ct_like())))
    out_dir = tmp_path / "out"
    seen = {}
    compress = gzip_stream.compress_to

    def spy(raw, chunks):
        seen["visible"] = glob.glob(str(out_dir / "*.nii.gz"))  # as sh and glob do
        seen["hidden"] = glob.glob(str(out_dir / ".*.nii.gz"))  # nor a listing of all
        seen["all"] = sorted(p.name for p in out_dir.iterdir())
        compress(raw, chunks)

    monkeypatch.setattr(gzip_stream, "compress_to", spy)
    write_mask(volume.array > 0, volume, out_dir / "case.nii.gz")
    assert seen["visible"] == [] and seen["hidden"] == []
    (temporary,) = seen["all"]
    assert temporary.startswith(".case.") and temporary.endswith(".partial")
    assert [p.name for p in out_dir.iterdir()] == ["case.nii.gz"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), RuntimeError("bug")])
def test_failure_mid_write_leaves_no_partial_file(tmp_path, monkeypatch, failure):
    volume = read_ct(save(tmp_path, "case_0000.nii.gz", nifti1(ct_like())))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    previous = out_dir / "old.nii.gz"
    write_mask(volume.array > 0, volume, previous)
    before = previous.read_bytes()

    def half_then_fail(raw, chunks):
        raw.write(b"\x1f\x8b partial")
        raise failure

    monkeypatch.setattr(gzip_stream, "compress_to", half_then_fail)
    with pytest.raises(InputError if isinstance(failure, OSError) else RuntimeError):
        write_mask(volume.array > 0, volume, out_dir / "case.nii.gz")
    with pytest.raises(InputError if isinstance(failure, OSError) else RuntimeError):
        write_mask(volume.array < 0, volume, previous)
    assert [p.name for p in out_dir.iterdir()] == ["old.nii.gz"]
    assert previous.read_bytes() == before


def test_write_mask_refuses_our_bugs(tmp_path):
    volume = read_ct(save(tmp_path, "case_0000.nii.gz", nifti1(ct_like())))
    with pytest.raises(ValueError):
        write_mask(np.zeros((20, 32, 31), np.uint8), volume, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError):
        write_mask(np.full((20, 32, 32), 2, np.uint8), volume, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError):
        write_mask(np.zeros((20, 32, 32), np.uint8), volume, tmp_path / "a.nii")
    assert list(tmp_path.glob("a*")) == []


def test_mask_on_a_grid_made_in_code(tmp_path):
    grid = Grid((6, 5, 4), (0.7, 0.7, 3.0), (-10.0, 5.0, 2.0), (1, 0, 0, 0, 0, 1, 0, -1, 0))
    mask = np.zeros(grid.shape_zyx, np.uint8)
    mask[1, 2, 3] = 1
    out = write_mask(mask, grid, tmp_path / "made.nii.gz")
    image = sitk.ReadImage(str(out))
    assert image.GetSize() == grid.size and image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_allclose(image.GetSpacing(), grid.spacing, rtol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), grid.origin, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), grid.direction, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), mask)


def test_probabilities_are_written_as_float32_on_the_grid(tmp_path):
    source = save(tmp_path, "case_0000.nii.gz", nifti1(ct_like(), affine=oblique_affine()))
    volume = read_ct(source)
    probability = np.random.default_rng(4).random(volume.array.shape).astype(np.float16)
    out = write_probabilities(probability, volume, tmp_path / "probabilities" / "case.nii.gz")
    image = sitk.ReadImage(str(out))
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetDirection() == sitk.ReadImage(str(source)).GetDirection()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), probability.astype(np.float32))


# ----------------------------------------------------------------------------- real scans

REAL_CASES = {  # case: (voxel type on disk, fraction of -3024 padding)
    "tsexample": (sitk.sitkInt32, 0.0),
    "tsdicom": (sitk.sitkInt16, 0.0),
    "crlm1004": (sitk.sitkInt16, 0.2),
    "sts001": (sitk.sitkFloat32, 0.0),
}


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"no real scans at {REAL_DATA.name}/ "
                    "(shared/data/real next to the repository)")
@pytest.mark.parametrize("case", sorted(REAL_CASES))
def test_real_scans_read_and_round_trip(tmp_path, case):
    source = REAL_DATA / f"{case}_0000.nii.gz"
    voxel_type, padding = REAL_CASES[case]
    plain = sitk.ReadImage(str(source))
    assert plain.GetPixelID() == voxel_type
    volume = read_ct(source)
    assert isinstance(volume, CtVolume) and volume.array.dtype in (np.int16, np.int32,
                                                                    np.float32)
    np.testing.assert_array_equal(volume.array, sitk.GetArrayFromImage(plain))
    assert (volume.array == -3024).mean() >= padding
    if padding:
        assert volume.array.min() == -3024
    out = write_mask(volume.array > 150, volume, tmp_path / f"{case}.nii.gz")
    assert_same_grid(out, source)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  volume.array > 150)
