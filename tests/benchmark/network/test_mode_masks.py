"""The masks of each torch mode, written for verify.py to compare with fp32's."""

import json

import SimpleITK as sitk

from benchmark.network import mode_masks
from inference.backends import _parse_mode


def test_every_mode_is_listed_once_with_fp32_first_and_parses():
    modes = mode_masks.every_mode()
    assert modes[0] == "grouped/fp32" and len(modes) == len(set(modes)) == 24
    for mode in modes:
        _parse_mode(mode)  # a DeviceError would fail the test
    assert "branches/half/graph/nhwc" in modes and "grouped/autocast/graph" in modes


def test_parts_share_the_modes_with_fp32_in_the_first():
    parts = [mode_masks.every_mode()[k::3] for k in range(3)]
    assert parts[0][0] == "grouped/fp32"
    assert sorted(sum(parts, [])) == sorted(mode_masks.every_mode())


def test_each_mode_writes_every_case_on_the_cpu(tiny_case_dir, tiny_weights, tmp_path):
    modes = ["grouped/fp32", "branches/half/graph/nhwc"]
    code = mode_masks.main(["-i", str(tiny_case_dir), "-o", str(tmp_path), "--weights",
                            str(tiny_weights), "--device", "cpu", "--modes", *modes])
    assert code == 0
    record = {m: json.loads((tmp_path / f"{mode_masks.folder_name(m)}.json").read_text())
              ["cases"] for m in modes}
    assert record[modes[1]]["bench"]["seconds"] > 0
    arrays = [sitk.GetArrayFromImage(sitk.ReadImage(
        str(tmp_path / mode_masks.folder_name(m) / "bench.nii.gz"))) for m in modes]
    # on the CPU every precision runs in fp32 and graphs are CUDA's: the same mask
    assert (arrays[0] == arrays[1]).all() and arrays[0].shape == (12, 80, 96)
    assert record[modes[0]]["bench"]["marked"] == int(arrays[0].sum())
