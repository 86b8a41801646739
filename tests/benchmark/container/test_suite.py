"""The Table 4 phantom suite: challenge-style names, 0.8 mm in plane, made once."""

import pytest

from benchmark.container.runner import case_info
from benchmark.container.suite import case_path, main, write_suite


def test_suite_writes_missing_cases_and_keeps_existing_ones(tmp_path):
    first = write_suite(tmp_path, sizes=[3, 4])
    assert [p.name for p in first] == ["table4_z003_0000.nii.gz", "table4_z004_0000.nii.gz"]
    size, spacing = case_info(first[0])
    assert size == (512, 512, 3)
    assert spacing[:2] == pytest.approx((0.8, 0.8))
    mtime = first[0].stat().st_mtime_ns
    write_suite(tmp_path, sizes=[3])
    assert first[0].stat().st_mtime_ns == mtime  # cached, not made again
    write_suite(tmp_path, sizes=[3], slice_spacing=5.0)  # different spacing: made again
    assert case_info(case_path(tmp_path, 3))[1][2] == pytest.approx(5.0)


def test_suite_cli_picks_sizes(tmp_path, capsys):
    assert main(["-o", str(tmp_path), "--sizes", "2"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["table4_z002_0000.nii.gz"]
