"""The gzip-reader comparison: through the container's reader, same voxels, both timed."""

import gzip
import sys
import types

from benchmark.container import gzip_readers
from inference import nifti


def test_without_rapidgzip_it_says_so_and_exits_2(tiny_case_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "rapidgzip", None)  # an import of it fails
    case = tiny_case_dir / "bench_0000.nii.gz"
    assert gzip_readers.main(["-i", str(case), "-o", str(tmp_path)]) == 2
    assert "rapidgzip is not installed" in caplog.text


def test_both_readers_are_timed_on_the_same_voxels(tiny_case_dir, tmp_path, monkeypatch):
    # a stand-in with rapidgzip's open(): the stdlib's gzip reader
    stand_in = types.SimpleNamespace(open=lambda path, parallelization: gzip.open(path, "rb"))
    monkeypatch.setitem(sys.modules, "rapidgzip", stand_in)
    own = nifti._voxel_stream
    case = tiny_case_dir / "bench_0000.nii.gz"
    assert gzip_readers.main(["-i", str(case), "--rounds", "3", "--threads", "2",
                              "-o", str(tmp_path)]) == 0
    assert nifti._voxel_stream is own  # the container's reader is put back
    md, = tmp_path.glob("gzip_readers_*.md")
    text = md.read_text()
    assert "| isal (the container's) |" in text and "| rapidgzip, 2 threads |" in text
    assert "every read gave the same voxels" in text
