"""No case is lost to GPU memory: out of it at any stage, a case retries smaller where it
can, then runs on the CPU with one warning, and its mask is written; the next case is
back on the first backend.

The GPU is played by torch on the CPU whose ``oom_errors`` holds the GPU's own exception
(``torch.cuda.OutOfMemoryError``), raised here by hand at a chosen stage.
"""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from inference import backends
from inference import predictor as predictor_module
from inference.backends import cpu_fallback_backend
from inference.predictor import Predictor
from tests.inference.conftest import write_phantom_case

ROOT = Path(__file__).resolve().parents[2]
OOM = torch.cuda.OutOfMemoryError
MESSAGE = "CUDA out of memory. Tried to allocate 48.00 MiB. GPU 0 has 500.00 MiB allowed"


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("oom_inputs")
    return [(case, write_phantom_case(folder, case, seed, orientation))
            for case, seed, orientation in (("first", 11, "RAS"), ("second", 12, "LPS"))]


def masks(folder: Path, cases) -> dict:
    return {case: sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz")))
            for case, _ in cases}


@pytest.fixture(scope="module")
def clean(cases, tiny_weights, tmp_path_factory):
    """Masks of clean runs: on the stand-in GPU (torch) and on the fallback's backend."""
    out = {}
    for name in ("torch", cpu_fallback_backend(tiny_weights)):
        folder = tmp_path_factory.mktemp(f"clean_{name}")
        results = Predictor(tiny_weights, "cpu", name).run(cases, folder, show_progress=False)
        assert not [r.error for r in results if r.error]
        out[name] = masks(folder, cases)
    return out


def gpu_standin(tiny_weights, monkeypatch) -> Predictor:
    predictor = Predictor(tiny_weights, "cpu", "torch")
    monkeypatch.setattr(predictor.backend, "oom_errors", (OOM,))
    return predictor


def fail_first(monkeypatch, name: str, times: int) -> list:
    """``inference.predictor.<name>`` raises the GPU's out-of-memory error on its first
    ``times`` calls; returns the list of calls (True: raised)."""
    real, calls = getattr(predictor_module, name), []

    def failing(*args, **kwargs):
        calls.append(len(calls) < times)
        if calls[-1]:
            raise OOM(MESSAGE)
        return real(*args, **kwargs)

    monkeypatch.setattr(predictor_module, name, failing)
    return calls


def backends_of_network_calls(monkeypatch) -> list:
    """Records which backend each case's sliding window ran on."""
    real, seen = predictor_module.network_probability, []

    def spy(volume, predict, *args, **kwargs):
        seen.append(predict.name)
        return real(volume, predict, *args, **kwargs)

    monkeypatch.setattr(predictor_module, "network_probability", spy)
    return seen


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("stage, function, times", [
    ("preprocess", "preprocess", 2),  # the first try and the retry in thinner slabs
    ("network", "network_probability", 1),
    ("postprocess", "decide", 1),
    ("restore", "restore", 1),
    ("probabilities", "restore_probability", 1),
])
def test_out_of_gpu_memory_at_any_stage_the_case_is_written_on_the_cpu(
        stage, function, times, cases, clean, tiny_weights, tmp_path, monkeypatch, caplog):
    gpu = gpu_standin(tiny_weights, monkeypatch)
    seen = backends_of_network_calls(monkeypatch)
    calls = fail_first(monkeypatch, function, times)
    with caplog.at_level(logging.INFO):
        results = gpu.run(cases, tmp_path, save_probabilities=True, show_progress=False)
    assert [r.error for r in results] == [None, None]
    assert calls[:times] == [True] * times and not any(calls[times:])
    got = masks(tmp_path, cases)
    fallback = cpu_fallback_backend(tiny_weights)
    np.testing.assert_array_equal(got["first"], clean[fallback]["first"])
    np.testing.assert_array_equal(got["second"], clean["torch"]["second"])
    assert (tmp_path / "probabilities" / "first.nii.gz").is_file()
    warned, = warnings_of(caplog)
    assert warned.startswith(f"first: out of GPU memory in {stage} (CUDA out of memory. "
                             "Tried to allocate 48.00 MiB); running")
    assert warned.endswith(f"running this case on the CPU ({fallback})")
    # the case ran again on the CPU; the next one went back to the stand-in GPU
    assert seen[-2:] == [fallback, "torch"]


def test_preprocess_out_of_memory_once_retries_in_thinner_slabs_on_the_gpu(
        cases, clean, tiny_weights, tmp_path, monkeypatch, caplog):
    gpu = gpu_standin(tiny_weights, monkeypatch)
    seen = backends_of_network_calls(monkeypatch)
    slabs = []
    calls = fail_first(monkeypatch, "preprocess", 1)
    failing = predictor_module.preprocess

    def recording(*args, **kwargs):
        slabs.append(args[5])
        return failing(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "preprocess", recording)
    with caplog.at_level(logging.INFO):
        results = gpu.run(cases, tmp_path, show_progress=False)
    assert [r.error for r in results] == [None, None]
    normal, thinner = predictor_module.PREPROCESS_SLAB, predictor_module.RETRY_SLAB
    assert calls == [True, False, False] and slabs == [normal, thinner, normal]
    assert warnings_of(caplog) == [] and seen == ["torch", "torch"]
    got = masks(tmp_path, cases)  # thinner slabs resample the same voxels
    for case, _ in cases:
        np.testing.assert_array_equal(got[case], clean["torch"][case])


class AlwaysOutOfMemory:
    """The stand-in GPU's backend, out of memory at every batch size."""

    def __init__(self, inner):
        self.inner, self.sizes = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, tiles):
        self.sizes.append(len(tiles))
        raise OOM(MESSAGE)


def test_the_sliding_window_halves_its_batch_to_one_before_the_cpu(
        cases, clean, tiny_weights, tmp_path, monkeypatch, caplog):
    gpu = gpu_standin(tiny_weights, monkeypatch)
    gpu.backend = AlwaysOutOfMemory(gpu.backend)
    with caplog.at_level(logging.INFO):
        results = gpu.run(cases[:1], tmp_path, show_progress=False)
    assert results[0].error is None
    assert gpu.backend.sizes == [8, 4, 2, 1]
    np.testing.assert_array_equal(masks(tmp_path, cases[:1])["first"],
                                  clean[cpu_fallback_backend(tiny_weights)]["first"])
    warned, = warnings_of(caplog)
    assert "first: out of GPU memory in network" in warned


def test_the_fallback_runs_torch_on_the_cpu_where_onnxruntime_is_missing(
        cases, clean, tiny_weights, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: False)
    assert cpu_fallback_backend(tiny_weights) == "torch"
    gpu = gpu_standin(tiny_weights, monkeypatch)
    seen = backends_of_network_calls(monkeypatch)
    fail_first(monkeypatch, "decide", 1)
    with caplog.at_level(logging.WARNING):
        results = gpu.run(cases[:1], tmp_path, show_progress=False)
    assert results[0].error is None and seen == ["torch", "torch"]
    assert gpu._on_cpu().backend.device.type == "cpu"
    assert warnings_of(caplog)[0].endswith("running this case on the CPU (torch)")
    np.testing.assert_array_equal(masks(tmp_path, cases[:1])["first"], clean["torch"]["first"])


def test_the_fallback_prefers_onnxruntime_when_it_and_the_graph_are_there(tiny_weights,
                                                                           tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(backends, "onnxruntime_installed", lambda: True)
    assert cpu_fallback_backend(tiny_weights) == "onnx"
    (tmp_path / "plans.json").write_text("{}")  # a folder without model.onnx
    assert cpu_fallback_backend(tmp_path) == "torch"


CLI = """
import sys, torch
from inference import backends, predictor
from inference.__main__ import main

init = backends.TorchBackend.__init__


def init_as_gpu(self, *args, **kwargs):
    init(self, *args, **kwargs)
    self.oom_errors = (torch.cuda.OutOfMemoryError,)


backends.TorchBackend.__init__ = init_as_gpu
real, calls = predictor.preprocess, []


def preprocess(*args, **kwargs):
    calls.append(1)
    if len(calls) <= 2:  # the first case, and its retry in thinner slabs
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 48.00 MiB")
    return real(*args, **kwargs)


predictor.preprocess = preprocess
sys.exit(main(["-i", sys.argv[1], "-o", sys.argv[2], "--weights", sys.argv[3],
               "--backend", "torch", "--device", "cpu", "--quiet"]))
"""


def test_the_command_line_writes_every_mask_and_exits_0_with_one_warning(
        cases, clean, tiny_weights, tmp_path):
    inputs = cases[0][1].parent
    out = subprocess.run([sys.executable, "-c", CLI, str(inputs), str(tmp_path),
                          str(tiny_weights)], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("first: out of GPU memory in preprocess")
    got = masks(tmp_path, cases)
    np.testing.assert_array_equal(got["first"], clean[cpu_fallback_backend(tiny_weights)]["first"])
    np.testing.assert_array_equal(got["second"], clean["torch"]["second"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.nii.gz", "second.nii.gz"]
