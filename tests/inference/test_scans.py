"""flare-nnsam predict end to end: scans as people hold them in, masks on their grids,
the statistics file and the preview out; bad inputs refused in one line with exit 2."""

import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from inference import scans
from inference.api import Segmenter
from tests.inference.conftest import write_phantom_case
from tests.inference.dicom_series import write_dicom_series
from tests.inference.test_formats import ct_image

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "real"
SHIPPED = ROOT / "weights"
needs_real = pytest.mark.skipif(not (REAL / "tsdicom_0000.nii.gz").exists(),
                                reason="the real scans are not here")


def flare_nnsam(*args, timeout=600):
    """The console command as a user runs it (python -m flare_nnsam: the installed script's
    entry point without the installation)."""
    return subprocess.run([sys.executable, "-m", "flare_nnsam", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def predict(*args):
    return flare_nnsam("predict", *args, "--device", "cpu", "--disable-progress-bar")


def series_image(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    return reader.Execute()


def assert_same_grid(a: sitk.Image, b: sitk.Image):
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@needs_real
def test_a_dicom_series_of_a_real_scan(tmp_path):
    """The mask lies on the series' grid, equals the container's mask of the same scan,
    and the lesion volumes of the statistics sum to the mask's volume."""
    scan = sitk.ReadImage(str(REAL / "tsdicom_0000.nii.gz"))
    names = [f"{(k * 7) % scan.GetDepth():04d}" for k in range(scan.GetDepth())]
    write_dicom_series(scan, tmp_path / "CT series", names=names)
    result = predict("-i", tmp_path / "CT series", "-o", tmp_path / "out",
                     "--statistics", tmp_path / "lesions.json")
    assert result.returncode == 0, result.stderr
    mask_image = sitk.ReadImage(str(tmp_path / "out" / "CT series.nii.gz"))
    assert_same_grid(mask_image, series_image(tmp_path / "CT series"))
    mask = sitk.GetArrayFromImage(mask_image)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert mask.sum() > 0, "the shipped weights found no lesion: the sums below test nothing"

    shutil.copy(REAL / "tsdicom_0000.nii.gz", tmp_path / "tsdicom_0000.nii.gz")
    container = subprocess.run(
        [sys.executable, "-m", "inference", "-i", str(tmp_path), "-o", str(tmp_path / "ref"),
         "--device", "cpu", "--disable-progress-bar"], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert container.returncode == 0, container.stderr
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "ref" / "tsdicom.nii.gz")))
    np.testing.assert_array_equal(mask, reference)

    statistics = json.loads((tmp_path / "lesions.json").read_text())
    (case,) = statistics["cases"]
    voxel_ml = math.prod(mask_image.GetSpacing()) / 1000
    lesions = case["lesions"]
    assert case["case"] == "CT series" and case["mask"].endswith("CT series.nii.gz")
    assert sum(lesion["voxels"] for lesion in lesions) == int(mask.sum())
    assert sum(lesion["volume_ml"] for lesion in lesions) == pytest.approx(mask.sum() * voxel_ml)
    assert case["totals"]["volume_ml"] == pytest.approx(mask.sum() * voxel_ml)
    assert case["totals"]["lesions"] == len(lesions) >= 1
    for lesion in lesions:
        assert 0 < lesion["probability_mean"] <= lesion["probability_max"] <= 1
        assert lesion["hu_mean"] <= lesion["hu_max"]
        assert lesion["short_axis_mm"] <= lesion["long_axis_mm"]


@needs_real
def test_predict_writes_the_containers_masks_for_challenge_inputs(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in ("tsdicom", "sts001"):
        shutil.copy(REAL / f"{case}_0000.nii.gz", inputs)
    ours = predict("-i", inputs, "-o", tmp_path / "ours")
    theirs = subprocess.run(
        [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(tmp_path / "theirs"),
         "--device", "cpu", "--disable-progress-bar"], cwd=ROOT, capture_output=True,
        text=True, timeout=600)
    assert ours.returncode == 0 and theirs.returncode == 0, ours.stderr + theirs.stderr
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == [
        "sts001.nii.gz", "tsdicom.nii.gz"]
    for case in ("tsdicom", "sts001"):  # header and voxels, byte for byte
        ours_bytes = gzip.decompress((tmp_path / "ours" / f"{case}.nii.gz").read_bytes())
        assert ours_bytes == gzip.decompress(
            (tmp_path / "theirs" / f"{case}.nii.gz").read_bytes()), case


def test_one_nrrd_gives_a_nrrd_mask_the_statistics_and_a_preview(tmp_path, tiny_weights):
    pytest.importorskip("matplotlib")
    phantom = write_phantom_case(tmp_path / "src", "p", 4)
    sitk.WriteImage(sitk.ReadImage(str(phantom)), str(tmp_path / "Patient 4.nrrd"))
    result = predict("-i", tmp_path / "Patient 4.nrrd", "-o", tmp_path / "masks",
                     "--statistics", tmp_path / "report" / "s.json",
                     "--preview", tmp_path / "report" / "p.png", "--weights", tiny_weights)
    assert result.returncode == 0, result.stderr
    mask = sitk.ReadImage(str(tmp_path / "masks" / "Patient 4.nrrd"))
    assert_same_grid(mask, sitk.ReadImage(str(tmp_path / "Patient 4.nrrd")))
    (case,) = json.loads((tmp_path / "report" / "s.json").read_text())["cases"]
    assert case["case"] == "Patient 4"
    assert case["totals"]["voxels"] == int(sitk.GetArrayViewFromImage(mask).sum())
    picture = (tmp_path / "report" / "p.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n" and len(picture) > 10_000
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["p.png", "s.json"]


def test_a_folder_of_scans_goes_on_past_a_bad_one(tmp_path, tiny_weights):
    folder = tmp_path / "scans"
    write_phantom_case(folder, "a", 5)
    sitk.WriteImage(ct_image(), str(folder / "b.mha"))
    write_dicom_series(ct_image(), folder / "c", drop=(4,))  # a slice missing
    (folder / "notes.txt").write_text("not a scan")
    result = predict("-i", folder, "-o", tmp_path / "out", "--statistics", tmp_path / "s.json",
                     "--weights", tiny_weights)
    assert result.returncode == 1, result.stderr
    assert "1 slice(s) missing" in one_error_line(result)
    assert "notes.txt" in result.stderr  # named as ignored, once
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "b.mha"]
    cases = {case["case"]: case for case in json.loads((tmp_path / "s.json").read_text())["cases"]}
    assert sorted(cases) == ["a", "b", "c"]
    assert "missing" in cases["c"]["error"] and "lesions" in cases["a"]


def make_no_series(tmp_path):
    folder = tmp_path / "dicom"
    folder.mkdir()
    (folder / "IM1.dcm").write_bytes(b"\x00" * 200)
    return folder, "no DICOM image series"


def make_2d(tmp_path):
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(path))
    return path, "a 2D image of size 64x64"


def make_one_slice_series(tmp_path):
    folder = tmp_path / "one"
    write_dicom_series(ct_image((1, 40, 48)), folder)
    return folder, "has one slice (a 2D image)"


def make_missing_slices(tmp_path):
    folder = tmp_path / "gap"
    write_dicom_series(ct_image(), folder, drop=(3, 4))
    return folder, "2 slice(s) missing"


@pytest.mark.parametrize("make", [make_no_series, make_2d, make_one_slice_series,
                                  make_missing_slices])
def test_a_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, tiny_weights, make):
    path, message = make(tmp_path)
    out = tmp_path / "out"
    result = predict("-i", path, "-o", out, "--statistics", out / "s.json", "--preview",
                     out / "p.png", "--weights", tiny_weights)
    assert result.returncode == 2
    line = one_error_line(result)
    assert message in line and str(path) in line
    assert not out.exists()


@pytest.mark.parametrize("option", ["--statistics", "--preview"])
def test_reports_never_go_into_the_challenges_output_folder(tmp_path, option):
    phantom = write_phantom_case(tmp_path, "p", 6)
    target = {"--statistics": "/workspace/outputs/s.json",
              "--preview": "/workspace/outputs/previews"}[option]
    result = predict("-i", phantom, "-o", tmp_path / "out", option, target)
    assert result.returncode == 2
    assert "the challenge's output folder" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_output_paths_that_cannot_work_are_refused_before_anything_runs(tmp_path):
    folder = tmp_path / "scans"
    write_phantom_case(folder, "a", 7)
    write_phantom_case(folder, "b", 8)
    for args in (["-o", tmp_path / "one.nii.gz"],
                 ["-o", tmp_path / "out", "--preview", tmp_path / "one.png"]):
        result = predict("-i", folder, *args)
        assert result.returncode == 2
        assert "names one file but the input holds 2 scans" in one_error_line(result)
    scan = tmp_path / "x.nii.gz"
    shutil.copy(folder / "a_0000.nii.gz", scan)
    result = predict("-i", scan, "-o", scan)
    assert result.returncode == 2 and "would overwrite its input" in one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_the_api_segments_an_image_as_it_segments_its_file(tmp_path, tiny_weights):
    path = write_phantom_case(tmp_path, "api", 9)
    segmenter = Segmenter(tiny_weights, device="cpu")
    from_file = segmenter.segment(path)
    from_image = segmenter.segment(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(from_file.mask, from_image.mask)
    assert from_file.name == "api" and from_image.name == "image"
    image = from_file.mask_image()
    assert_same_grid(image, sitk.ReadImage(str(path)))
    assert [row["voxels"] for row in from_file.table()] == [
        lesion.voxels for lesion in from_image.lesions]
    assert sum(row["voxels"] for row in from_file.table()) == int(from_file.mask.sum())
    assert from_file.probability is not None and from_file.probability.shape == \
        from_file.mask.shape


def test_the_statistics_path_must_name_a_json_file(tmp_path):
    with pytest.raises(SystemExit):
        scans.parse_args(["-i", "x", "-o", "y", "--statistics", str(tmp_path / "s.csv")])


@needs_real
def test_a_dicom_seg_refers_to_the_series_slices(tmp_path):
    hd = pytest.importorskip("highdicom")
    from pydicom import dcmread

    scan = sitk.ReadImage(str(REAL / "tsdicom_0000.nii.gz"))
    write_dicom_series(scan, tmp_path / "series", slice_thickness=False)  # optional to a CT
    result = predict("-i", tmp_path / "series", "-o", tmp_path / "mask.nii.gz",
                     "--dicom-seg", tmp_path / "lesions.dcm")
    assert result.returncode == 0, result.stderr
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.nii.gz")))
    assert mask.sum() > 0, "the shipped weights found no lesion: the SEG holds nothing to test"
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(tmp_path / "series"),
                                          reader.GetGDCMSeriesIDs(str(tmp_path / "series"))[0])
    uids = [dcmread(name, stop_before_pixels=True).SOPInstanceUID for name in files]
    seg = hd.seg.segread(tmp_path / "lesions.dcm")
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                               segment_numbers=[1])[..., 0]
    np.testing.assert_array_equal(frames > 0, mask > 0)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(scan.GetSpacing()[1::-1])


def test_a_dicom_seg_needs_a_series_that_can_be_referred_to(tmp_path, tiny_weights):
    pytest.importorskip("highdicom")
    nifti = write_phantom_case(tmp_path, "p", 10)
    result = predict("-i", nifti, "-o", tmp_path / "out", "--dicom-seg", tmp_path / "s.dcm",
                     "--weights", tiny_weights)
    assert result.returncode == 2 and "is not a DICOM series" in one_error_line(result)
    write_dicom_series(ct_image(), tmp_path / "series", frame_of_reference=False)
    result = predict("-i", tmp_path / "series", "-o", tmp_path / "out", "--dicom-seg",
                     tmp_path / "s.dcm", "--preview", tmp_path / "p.png",
                     "--weights", tiny_weights)
    assert result.returncode == 2
    assert "Frame Of Reference" in one_error_line(result)
    assert not (tmp_path / "out").exists() and not (tmp_path / "p.png").exists()
