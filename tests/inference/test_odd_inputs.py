"""The catalogue of odd inputs, generated from one phantom and run as the organisers run us.

Each entry is a file a hospital export, a challenge harness or a careless copy produces
(the quirks of real exports seen in the wild are the floor). One run of the command line
takes them all: readable ones must give the same lesion probability as the clean file
(or a mask on their own grid where their geometry differs), broken ones exactly one line
naming the file, and the run exit 1 naming the failed cases, with no traceback.
"""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from tests.inference.test_cli import ROOT, run_cli
from tests.inference.test_nifti import nifti1
from training.phantoms import make_phantom

SHAPE, SPACING = (64, 56, 12), (1.5, 1.5, 3.0)


def _phantom_hu() -> np.ndarray:
    phantom = make_phantom(SHAPE, SPACING, seed=4, noise=False, blur=False)
    return sitk.GetArrayFromImage(phantom.to_sitk()).astype(np.int16)


def _patch(raw: bytes, offset: int, fmt: str, *values) -> bytes:
    data = bytearray(raw)
    struct.pack_into("<" + fmt, data, offset, *values)
    return bytes(data)


def z(raw: bytes) -> bytes:
    """gzip at the fastest level, as the catalogue's files are written."""
    return gzip.compress(raw, 1)


def _catalogue(hu: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, expectation): ``same`` (the clean case's probability),
    ``mask`` (a mask on its own grid), or the text its one error line must hold."""
    clean = nifti1(hu, spacing=SPACING)
    shifted = (hu.astype(np.int32) + 1024).astype(np.uint16)
    cropped = np.clip(hu, -100, None)  # a tissue-only crop: no air anywhere
    d = struct.unpack_from("<8h", clean, 40)
    return {
        "clean": (z(clean), "same"),
        # accepted as they are
        "multi_member": (z(clean[:4000]) + z(clean[4000:]), "same"),
        "uncompressed_named_gz": (clean, "same"),
        "big_endian": (z(nifti1(hu, spacing=SPACING, endian=">")), "same"),
        "int32": (z(nifti1(hu.astype(np.int32), spacing=SPACING)), "same"),
        "float32": (z(nifti1(hu.astype(np.float32), spacing=SPACING)), "same"),
        "scaled": (z(nifti1(shifted, spacing=SPACING, slope=1.0, inter=-1024.0)), "same"),
        "singleton_4d": (z(nifti1(hu[None], spacing=SPACING)), "same"),
        "padding_minus_3024": (z(nifti1(np.where(hu <= -1000, -3024, hu).astype(np.int16),
                                        spacing=SPACING)), "mask"),
        "oblique": (z(nifti1(hu, affine=_oblique())), "mask"),
        "sheared": (z(nifti1(hu, affine=np.array([[1.5, 0.3, 0, 0], [0, 1.5, 0, 0],
                                                   [0, 0, 3, 0], [0, 0, 0, 1.0]]))), "mask"),
        # what the field's readers accept, we accept
        "trailing_garbage": (z(clean) + b"\x00\x00junk", "same"),
        "trailing_zeros": (z(clean) + b"\x00" * 512, "same"),
        "empty_first_member": (gzip.compress(b"") + z(clean), "same"),
        "dim4_zero": (z(_patch(clean, 40, "8h", 4, d[1], d[2], d[3], 0, 1, 1, 1)), "same"),
        # repaired, with a warning
        "uint16_without_intercept": (z(nifti1(shifted, spacing=SPACING)), "same"),
        "zero_pixdim_with_sform": (z(_patch(clean, 84, "f", 0.0)), "same"),
        "nan_pixdim_with_sform": (z(_patch(clean, 88, "f", float("nan"))), "same"),
        "negative_pixdim": (z(_patch(clean, 80, "f", -SPACING[0])), "mask"),
        "no_air": (z(nifti1(cropped, spacing=SPACING)), "mask"),
        # refused, one line each
        "zero_bytes": (b"", "empty (0 bytes)"),
        "truncated": (z(clean)[: len(z(clean)) // 2], "truncated"),
        "uint8_display": (z(nifti1(np.clip((hu + 160) / 400 * 255, 0, 255).astype(np.uint8),
                                   spacing=SPACING)), "8-bit voxels"),
        "normalised": (z(nifti1((hu + 1024).astype(np.float32) / 3000, spacing=SPACING)),
                       "looks normalised"),
        "flat_2d": (z(nifti1(hu[0], spacing=SPACING)), "2D image"),
        "real_4d": (z(nifti1(np.stack([hu, hu]), spacing=SPACING)), "4D image"),
        "nifti2": (z(_patch(clean, 0, "i", 540)), "NIfTI-2"),
        "analyze": (z(clean[:344] + b"ni1\0" + clean[348:]), "single-file magic"),
        "text": (b"patient,age\n1,54\n", "not a NIfTI file"),
        # a transform in use that holds NaN or inf places the voxels nowhere
        "nan_sform": (z(_patch(clean, 284, "f", float("nan"))), "srow_x holds NaN"),
        "inf_sform": (z(_patch(clean, 312, "f", float("inf"))), "srow_z holds inf"),
        "nan_qform": (z(_patch(_patch(clean, 252, "2h", 1, 0), 268, "f", float("nan"))),
                      "qoffset_x holds NaN"),
    }


def _oblique() -> np.ndarray:
    a = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0],
                               [0, 0, 1]]) @ np.diag(SPACING)
    return affine


@pytest.fixture(scope="module")
def catalogue_run(tmp_path_factory, tiny_weights):
    folder = tmp_path_factory.mktemp("odd")
    inputs, outputs = folder / "in", folder / "out"
    inputs.mkdir()
    entries = _catalogue(_phantom_hu())
    for name, (data, _) in entries.items():
        (inputs / f"{name}_0000.nii.gz").write_bytes(data)
    # what is not a case, and must be said to be ignored
    (inputs / "folder_0000.nii.gz").mkdir()
    (inputs / "clean_0001.nii.gz").write_bytes(entries["clean"][0])
    (inputs / "uncompressed_0000.nii").write_bytes(gzip.decompress(entries["clean"][0]))
    (inputs / "._clean_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 resource fork")
    result = run_cli(inputs, outputs, tiny_weights, "--backend", "onnx", "--device", "cpu",
                     "--save-probabilities")
    return entries, inputs, outputs, result


def _probability(outputs, case) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(outputs / "probabilities" /
                                                     f"{case}.nii.gz")))


def test_every_readable_odd_input_gets_its_mask(catalogue_run):
    entries, inputs, outputs, result = catalogue_run
    reference = _probability(outputs, "clean")
    assert reference.max() > 0.01  # the comparison below can fail
    for name, (_, expect) in entries.items():
        if expect not in ("same", "mask"):
            continue
        mask = sitk.ReadImage(str(outputs / f"{name}.nii.gz"))
        assert mask.GetPixelID() == sitk.sitkUInt8, name
        assert mask.GetSize() == SHAPE, name
        if expect == "same":
            np.testing.assert_allclose(_probability(outputs, name), reference, atol=1e-5,
                                       err_msg=name)


def test_every_broken_input_gets_one_line_and_the_run_says_which(catalogue_run):
    entries, inputs, outputs, result = catalogue_run
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "vnl_svd" not in result.stderr
    lines = result.stderr.splitlines()
    broken = sorted(n for n, (_, expect) in entries.items() if expect not in ("same", "mask"))
    for name in broken:
        mine = [line for line in lines if f"/{name}_0000.nii.gz" in line]
        assert len(mine) == 1, (name, mine)
        assert entries[name][1] in mine[0], (name, mine[0])
        assert not (outputs / f"{name}.nii.gz").exists()
    summary = [line for line in lines if "cases failed" in line]
    assert summary == [f"{len(broken)} of {len(entries)} cases failed: " + ", ".join(broken)]
    written = sorted(p.name for p in outputs.iterdir())
    assert written == sorted([f"{n}.nii.gz" for n in entries if n not in broken]
                             + ["probabilities"])


def test_repairs_and_doubts_are_said_in_one_line_each(catalogue_run):
    entries, inputs, outputs, result = catalogue_run
    lines = result.stderr.splitlines()
    said = {
        "uint16_without_intercept": "1024 subtracted",
        "zero_pixdim_with_sform": "taken from the sform",
        "nan_pixdim_with_sform": "taken from the sform",
        "negative_pixdim": "pixdim[1] is -1.5",
        "no_air": "no voxel under -500 HU",
        "trailing_garbage": "bytes after the end of the gzip data are ignored",
        "dim4_zero": "zero extent past the third axis",
        "sheared": "not a rotation",
    }
    for name, words in said.items():
        mine = [line for line in lines if f"/{name}_0000.nii.gz" in line]
        assert len(mine) == 1 and words in mine[0], (name, mine)
    for name in ("clean", "int32", "big_endian", "singleton_4d"):
        assert not [line for line in lines if f"/{name}_0000.nii.gz" in line], name


def test_files_that_are_not_cases_are_listed_once_with_the_reason(catalogue_run):
    entries, inputs, outputs, result = catalogue_run
    ignored = [line for line in result.stderr.splitlines() if line.startswith("ignored in")]
    assert len(ignored) == 1
    for words in ("folder_0000.nii.gz (a folder", "clean_0001.nii.gz (another channel",
                  "uncompressed_0000.nii (not gzip-compressed", "._clean_0000.nii.gz (a hidden"):
        assert words in ignored[0], words


def test_a_folder_named_like_a_case_alone_gets_a_clear_message(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    (inputs / "case_0000.nii.gz").mkdir(parents=True)
    result = run_cli(inputs, tmp_path / "out", tiny_weights)
    assert result.returncode == 2
    assert "case_0000.nii.gz (a folder, not a file)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- the second
# catalogue: hostile names and files, each run on its own beside good cases


def _clean_case() -> bytes:
    return gzip.compress(nifti1(_phantom_hu(), spacing=SPACING), 1)


def test_a_name_that_is_not_utf8_is_refused_in_one_line_and_the_others_go_on(tmp_path,
                                                                           tiny_weights):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in (b"a", b"c\xff", b"d"):  # read ahead, predicted, read ahead again
        with open(os.fsencode(inputs) + b"/" + name + b"_0000.nii.gz", "wb") as f:
            f.write(_clean_case())
    result = run_cli(inputs, outputs, tiny_weights, "--device", "cpu")
    assert result.returncode == 1, result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["a.nii.gz", "d.nii.gz"]
    mine = [line for line in result.stderr.splitlines() if "c\\xff_0000.nii.gz" in line]
    assert len(mine) == 1 and "not valid UTF-8" in mine[0], result.stderr
    assert result.stderr.splitlines()[-1] == "1 of 3 cases failed: c\\xff"
    assert "Traceback" not in result.stderr and "killed" not in result.stderr


def test_names_are_logged_with_control_characters_escaped(tmp_path, tiny_weights):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "good_0000.nii.gz").write_bytes(_clean_case())
    (inputs / "bad\r0 errors, all fine_0000.nii.gz").write_bytes(b"")
    (inputs / "notes\x1b[2J.txt").write_bytes(b"")
    result = run_cli(inputs, outputs, tiny_weights, "--device", "cpu", text=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert "\r" not in err and "\x1b" not in err, err
    assert "notes\\x1b[2J.txt (not named" in err
    said = [line for line in err.splitlines() if "bad\\r0 errors, all fine_0000.nii.gz" in line]
    assert len(said) == 1 and "empty (0 bytes)" in said[0], err
    assert err.splitlines()[-1] == "1 of 2 cases failed: bad\\r0 errors, all fine"


def test_a_fifo_named_like_a_case_is_ignored_not_waited_for(tmp_path, tiny_weights):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    os.mkfifo(inputs / "aa_0000.nii.gz")  # sorts first: reading it would wait for ever
    (inputs / "b_0000.nii.gz").write_bytes(_clean_case())
    (inputs / "c_0000.nii.gz").symlink_to(inputs / "b_0000.nii.gz")  # a link to a file is one
    result = run_cli(inputs, outputs, tiny_weights, "--device", "cpu", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "aa_0000.nii.gz (a FIFO, not a regular file)" in result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["b.nii.gz", "c.nii.gz"]
    os.unlink(inputs / "b_0000.nii.gz")
    os.unlink(inputs / "c_0000.nii.gz")
    alone = run_cli(inputs, outputs, tiny_weights, "--device", "cpu", timeout=120)
    assert alone.returncode == 2 and "aa_0000.nii.gz (a FIFO" in alone.stderr


def _header_only(dims, spacing=SPACING) -> bytes:
    """A .nii.gz whose header describes int16 voxels of ``dims`` (x, y, z) and whose gzip
    trailer gives their size, holding only a few of them: what a reader sees before it
    allocates the array."""
    header = bytearray(nifti1(np.zeros((1, 1, 1), np.int16), spacing=spacing)[:352])
    struct.pack_into("<3h", header, 42, *dims)
    data = gzip.compress(bytes(header) + bytes(4096), 1)
    size = 352 + 2 * int(np.prod(dims, dtype=np.int64))
    return data[:-4] + struct.pack("<I", size % 2**32)


def _memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_scan_too_large_for_memory_is_one_line_found_from_its_header(tmp_path,
                                                                       tiny_weights):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    side = min(int((2 * _memory_bytes()) ** (1 / 3)) + 1, 32767)  # 4x the memory in int16
    (inputs / "huge_0000.nii.gz").write_bytes(_header_only((side, side, side)))
    wide = nifti1(_phantom_hu(), spacing=(1000.0, 1000.0, 1000.0))  # metres read as mm
    (inputs / "wide_0000.nii.gz").write_bytes(gzip.compress(wide, 1))
    (inputs / "good_0000.nii.gz").write_bytes(_clean_case())
    result = run_cli(inputs, outputs, tiny_weights, "--device", "cpu")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["good.nii.gz"]
    for name, words in (("huge", f"{side}x{side}x{side} int16 voxels"),
                        ("wide", "1000 mm voxels")):
        mine = [line for line in result.stderr.splitlines() if f"/{name}_0000.nii.gz" in line]
        assert len(mine) == 1 and words in mine[0] and "memory" in mine[0], (name, mine)
    assert result.stderr.splitlines()[-1] == "2 of 3 cases failed: huge, wide"


def test_a_memory_error_that_still_happens_is_one_line(tmp_path, tiny_weights):
    # an address-space limit that the header check does not know of: numpy fails to allocate
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    (inputs / "big_0000.nii.gz").write_bytes(_header_only((1024, 1024, 1536)))  # 3 GiB
    (inputs / "good_0000.nii.gz").write_bytes(_clean_case())
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))"
    code = f"{limit}\nfrom inference.__main__ import main, _exit_now\n_exit_now(main())"
    result = subprocess.run([sys.executable, "-c", code, "-i", str(inputs), "-o", str(outputs),
                             "--weights", str(tiny_weights), "--device", "cpu",
                             "--backend", "onnx", "--disable-progress-bar"],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    mine = [line for line in result.stderr.splitlines() if "/big_0000.nii.gz" in line]
    assert len(mine) == 1 and "out of memory" in mine[0], result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == ["good.nii.gz"]


def test_the_longest_case_names_a_file_system_allows_get_their_masks(tmp_path, tiny_weights):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    longest = 255 - len("_0000.nii.gz")  # bytes in a name, on most Linux file systems
    names = ["x" * longest, "é" * (longest // 2) + "y" * (longest % 2)]  # 2 bytes a letter
    for name in names:
        (inputs / f"{name}_0000.nii.gz").write_bytes(_clean_case())
    result = run_cli(inputs, outputs, tiny_weights, "--device", "cpu", "--save-probabilities")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in outputs.iterdir()) == sorted(
        [f"{name}.nii.gz" for name in names] + ["probabilities"])
    assert sorted(p.name for p in (outputs / "probabilities").iterdir()) == sorted(
        f"{name}.nii.gz" for name in names)
