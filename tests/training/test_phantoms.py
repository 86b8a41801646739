"""Synthetic CT phantoms: labels, HU, geometry, reproducibility and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from training.phantoms import (
    LESION_HOSTS,
    TISSUE,
    make_phantom,
    plan_cases,
    write_dataset,
)

REPO = Path(__file__).resolve().parents[2]
SHAPE, SPACING = (96, 96, 40), (4.0, 4.0, 8.0)  # small but the whole abdomen fits


def _host_mask(phantom, host):
    return np.isin(phantom.tissue, [TISSUE[t] for t in LESION_HOSTS[host][0]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_is_exactly_the_painted_lesion_voxels(seed):
    ph = make_phantom(SHAPE, SPACING, seed, n_lesions=4, noise=False, blur=False,
                      dtype="float32")
    assert ph.lesions, "no lesion was placed"
    union = np.zeros(ph.label.shape, dtype=bool)
    for les in ph.lesions:
        mask = ph.lesion_ids == les.id
        assert mask.sum() == les.voxels > 0
        assert not (union & mask).any()
        assert _host_mask(ph, les.host)[mask].all(), f"lesion {les.id} leaves its {les.host}"
        union |= mask
    assert ph.label.dtype == np.uint8 and set(np.unique(ph.label)) <= {0, 1}
    np.testing.assert_array_equal(ph.label.astype(bool), union)
    np.testing.assert_array_equal(ph.image != ph.background(), union)
    # Each lesion is one connected blob, apart from the others.
    assert ndimage.label(ph.label)[1] == len(ph.lesions)


def test_lesions_vary_in_host_size_and_contrast():
    lesions = [les for seed in range(8)
               for les in make_phantom(SHAPE, SPACING, seed, n_lesions=5).lesions]
    assert len({les.host for les in lesions}) >= 4
    diameters = [2 * les.radius_mm for les in lesions]
    assert min(diameters) < 15 and max(diameters) > 25 and max(diameters) <= 60
    for les in lesions:
        if les.host != "lymph_node":
            assert 15 <= abs(les.contrast_hu) <= 100, les
    assert any(les.contrast_hu > 0 for les in lesions)
    assert any(les.contrast_hu < 0 for les in lesions)


@pytest.mark.parametrize("seed", [0, 3])
def test_tissue_hu_is_plausible(seed):
    ph = make_phantom(SHAPE, SPACING, seed, healthy=True, dtype="float32")
    image = ph.image
    expected = {  # mean HU inside each tissue, away from its edges
        "air": (-1024, -960), "subcutaneous_fat": (-125, -75), "muscle": (30, 70),
        "liver": (40, 80), "spleen": (35, 65), "kidney_cortex": (100, 160),
        "lung": (-880, -780), "visceral_fat": (-120, -70),
    }
    for name, (lo, hi) in expected.items():
        inner = ndimage.binary_erosion(ph.tissue == TISSUE[name], np.ones((1, 3, 3), bool))
        assert inner.sum() > 20, f"{name} missing from the phantom"
        mean = float(image[inner].mean())
        assert lo <= mean <= hi, f"{name}: mean {mean:.0f} HU not in [{lo}, {hi}]"
    bone = np.isin(ph.tissue, [TISSUE["cortical_bone"], TISSUE["cancellous_bone"]])
    assert image[bone].mean() > 200
    assert image.min() >= -1024
    assert 8 < float(image[ndimage.binary_erosion(ph.tissue == TISSUE["air"])].std()) < 30


def test_fov_padding_outside_the_scan_circle():
    ph = make_phantom(SHAPE, SPACING, 0, fov_padding=True, dtype="int16")
    assert (ph.image[:, 0, 0] == -3024).all()
    inside = ph.image[:, SHAPE[1] // 2, SHAPE[0] // 2]
    assert inside.min() >= -1024


@pytest.mark.parametrize("dtype,orientation", [("int16", "LPS"), ("int32", "RAS"),
                                               ("float32", "RAS")])
def test_nifti_header_and_voxels_round_trip(tmp_path, dtype, orientation):
    ph = make_phantom((40, 36, 12), (0.78125, 0.8, 2.5), 5, orientation=orientation,
                      dtype=dtype, fov_padding=True)
    ph.write(str(tmp_path / "c_0000.nii.gz"), str(tmp_path / "c.nii.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.nii.gz", "c_0000.nii.gz"]
    for name, array in (("c_0000.nii.gz", ph.image), ("c.nii.gz", ph.label)):
        img = sitk.ReadImage(str(tmp_path / name))
        assert img.GetSize() == (40, 36, 12)
        assert img.GetSpacing() == ph.spacing
        assert img.GetOrigin() == ph.origin
        assert img.GetDirection() == ph.direction
        back = sitk.GetArrayFromImage(img)
        assert back.dtype == array.dtype
        np.testing.assert_array_equal(back, array)
    assert ph.image.dtype == np.dtype(dtype)


def test_same_seed_same_case_other_seed_other_case():
    a = make_phantom(SHAPE, SPACING, (7, 0, 3), dtype="int16")
    b = make_phantom(SHAPE, SPACING, (7, 0, 3), dtype="int16")
    c = make_phantom(SHAPE, SPACING, (8, 0, 3), dtype="int16")
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert a.origin == b.origin and a.lesions == b.lesions
    assert not np.array_equal(a.image, c.image)


def test_cases_do_not_depend_on_the_number_of_cases():
    assert plan_cases(3, seed=4) == plan_cases(6, seed=4)[:3]
    specs = plan_cases(50, seed=1)
    healthy = sum(s.healthy for s in specs)
    assert 8 <= healthy <= 12  # --healthy-fraction 0.2, spread evenly
    assert {s.orientation for s in specs} == {"LPS", "RAS"}
    assert {s.dtype for s in specs} == {"int16", "int32", "float32"}
    for s in specs:
        assert s.shape_xyz[:2] == (512, 512)
        assert 0.59 <= s.spacing_xyz[0] <= 1.0 and 1.0 <= s.spacing_xyz[2] <= 5.0


def test_anatomy_keeps_its_physical_size_whatever_the_spacing():
    coarse = make_phantom((96, 96, 48), (4.0, 4.0, 8.0), 2, healthy=True)
    fine = make_phantom((192, 192, 96), (2.0, 2.0, 4.0), 2, healthy=True)
    for name in ("liver", "spleen", "kidney_cortex", "lung"):
        v_coarse = (coarse.tissue == TISSUE[name]).sum() * 128.0
        v_fine = (fine.tissue == TISSUE[name]).sum() * 16.0
        assert v_coarse == pytest.approx(v_fine, rel=0.1), name
    assert 800e3 < (fine.tissue == TISSUE["liver"]).sum() * 16.0 < 2500e3  # mm3: 0.8-2.5 l


def test_ras_and_lps_of_one_seed_are_the_same_physical_volume():
    lps = make_phantom(SHAPE, SPACING, 11, n_lesions=3, orientation="LPS")
    ras = make_phantom(SHAPE, SPACING, 11, n_lesions=3, orientation="RAS")
    np.testing.assert_array_equal(ras.image, lps.image[:, ::-1, ::-1])
    np.testing.assert_array_equal(ras.label, lps.label[:, ::-1, ::-1])
    img_lps, img_ras = lps.to_sitk(), ras.to_sitk()
    assert img_ras.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert len(lps.lesions) == len(ras.lesions) > 0
    for a, b in zip(lps.lesions, ras.lesions):
        pa = img_lps.TransformContinuousIndexToPhysicalPoint(a.centre_index)
        pb = img_ras.TransformContinuousIndexToPhysicalPoint(b.centre_index)
        np.testing.assert_allclose(pa, pb, atol=1e-3)
        np.testing.assert_allclose(pa, a.centre_mm, atol=1e-3)
        np.testing.assert_allclose(pb, b.centre_mm, atol=1e-3)
        # The voxel at the centre is lesion in both.
        i, j, k = (round(v) for v in b.centre_index)
        assert ras.lesion_ids[k, j, i] == b.id
    corner = img_lps.TransformIndexToPhysicalPoint((0, 0, 0))
    nx, ny, _ = SHAPE
    np.testing.assert_allclose(
        img_ras.TransformIndexToPhysicalPoint((nx - 1, ny - 1, 0)), corner, atol=1e-3)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_partial_labels_keep_only_the_largest_lesion(tmp_path):
    ids = write_dataset(tmp_path, 4, seed=3, shape_xyz=SHAPE, spacing_xyz=SPACING,
                        healthy_fraction=0.0, partial=True, progress=False)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    specs = {s.case_id: s for s in plan_cases(4, seed=3, shape_xyz=SHAPE,
                                              spacing_xyz=SPACING, healthy_fraction=0.0)}
    assert meta["partial_labels"] is True and ids == list(specs)
    several = 0
    for entry in meta["training"]:
        label = _read(tmp_path / entry["label"])
        spec = specs[entry["id"]]
        ph = make_phantom(spec.shape_xyz, spec.spacing_xyz, spec.seed, healthy=spec.healthy,
                          orientation=spec.orientation, dtype=spec.dtype,
                          fov_padding=spec.fov_padding)
        assert entry["n_lesions"] == len(ph.lesions) >= 1
        assert entry["n_labelled_lesions"] == 1
        assert ndimage.label(label)[1] == 1
        biggest = max(ph.lesions, key=lambda les: les.voxels)
        np.testing.assert_array_equal(label, ph.lesion_ids == biggest.id)
        several += len(ph.lesions) > 1
    assert several, "no case had more than one lesion to leave out"


def test_healthy_cases_have_empty_labels(tmp_path):
    write_dataset(tmp_path, 3, seed=0, shape_xyz=SHAPE, spacing_xyz=SPACING,
                  healthy_fraction=1.0, progress=False)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    for entry in meta["training"]:
        assert entry["healthy"] and entry["n_lesions"] == 0
        assert not _read(tmp_path / entry["label"]).any()
    assert not make_phantom(SHAPE, SPACING, 0, healthy=True).label.any()


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "training.phantoms", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_flare_layout(tmp_path):
    out = tmp_path / "ds"
    res = _cli("-o", str(out), "-n", "2", "--unlabelled", "1", "--shape", "48", "48", "12",
               "--spacing", "8", "8", "16", "--seed", "5", "--disable-progress-bar")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [
        "phantom_000_0000.nii.gz", "phantom_001_0000.nii.gz"]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [
        "phantom_000.nii.gz", "phantom_001.nii.gz"]
    assert [p.name for p in (out / "imagesUnlabelled").iterdir()] == ["phantom_u000_0000.nii.gz"]
    meta = json.loads((out / "dataset.json").read_text())
    assert [e["id"] for e in meta["training"]] == ["phantom_000", "phantom_001"]
    for entry in meta["training"]:
        img = sitk.ReadImage(str(out / entry["image"]))
        lab = sitk.ReadImage(str(out / entry["label"]))
        assert img.GetSize() == lab.GetSize() == tuple(entry["shape"]) == (48, 48, 12)
        assert img.GetOrigin() == lab.GetOrigin() == tuple(entry["origin"])
        assert img.GetDirection() == lab.GetDirection() == tuple(entry["direction"])
        assert lab.GetPixelID() == sitk.sitkUInt8
        assert sitk.GetArrayViewFromImage(img).dtype == np.dtype(entry["dtype"])


@pytest.mark.parametrize("args", [
    ["-n", "-1"], ["--spacing", "1", "1", "0"], ["--healthy-fraction", "1.5"],
    ["--fov-padding-fraction", "-0.1"], ["--shape", "0", "10", "10"],
])
def test_cli_bad_argument_is_one_line(tmp_path, args):
    res = _cli("-o", str(tmp_path / "ds"), *args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, res.stderr
    assert not (tmp_path / "ds").exists()
