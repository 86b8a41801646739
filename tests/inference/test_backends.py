"""The torch backend's execution modes: the same function in every form, bad modes refused."""

import numpy as np
import pytest
import torch

from inference.backends import TorchBackend
from inference.devices import DeviceError
from inference.weights import load_plan


@pytest.fixture(scope="module")
def tiles():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("mode", ["grouped/autocast", "branches/autocast", "branches/fp32",
                                  "grouped/half/graph", "grouped/fp32/nhwc",
                                  "branches/half/graph/nhwc"])
def test_every_mode_gives_the_same_probabilities(tiny_weights, tiles, mode):
    plan = load_plan(tiny_weights)
    reference = TorchBackend(tiny_weights, plan, "cpu", mode="grouped/fp32")(tiles)
    backend = TorchBackend(tiny_weights, plan, "cpu", mode=mode)
    out = backend(tiles)
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    # on the CPU every precision runs in fp32: only the form differs, and it is exact
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-5)
    assert 0 <= float(out.min()) and float(out.max()) <= 1


@pytest.mark.parametrize("mode", ["grouped", "grouped/bf16", "dense/fp32", "grouped/fp32/x",
                                  "grouped/fp32/nhwc/graph"])
def test_unknown_modes_are_refused_in_one_line(tiny_weights, mode):
    with pytest.raises(DeviceError, match="FORM/PRECISION"):
        TorchBackend(tiny_weights, load_plan(tiny_weights), "cpu", mode=mode)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("mode", ["grouped/autocast", "branches/half/graph"])
def test_cuda_modes_agree_with_fp32_and_pad_small_batches(tiny_weights, tiles, mode):
    plan = load_plan(tiny_weights)
    reference = TorchBackend(tiny_weights, plan, "cuda", mode="grouped/fp32")(tiles.cuda())
    backend = TorchBackend(tiny_weights, plan, "cuda", mode=mode)
    full = backend(tiles.cuda())
    part = backend(tiles[:2].cuda())  # padded up to the first call's batch of 3
    assert part.shape == (2, 64, 64)
    assert float((full - reference).abs().max()) < 1e-2
    assert float((part - full[:2]).abs().max()) < 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_cuda_graphs_are_captured_where_they_fit_and_released_after_the_network(tiny_weights,
                                                                                tiles):
    plan = load_plan(tiny_weights)
    backend = TorchBackend(tiny_weights, plan, "cuda", mode="grouped/autocast/graph")
    eager = TorchBackend(tiny_weights, plan, "cuda", mode="grouped/autocast")(tiles.cuda())
    out = backend(tiles.cuda())
    assert backend.graphs[tuple(tiles.shape)] is not None
    held = torch.cuda.memory_reserved()
    backend.release()  # the pool goes with the graph
    assert backend.graphs == {} and torch.cuda.memory_reserved() < held
    backend.memory_limit = torch.cuda.memory_reserved()  # no room for a pool
    again = backend(tiles.cuda())
    assert backend.graphs[tuple(tiles.shape)] is None  # this shape runs eagerly
    assert float((out - eager).abs().max()) < 1e-2 and float((again - eager).abs().max()) < 1e-2


def test_auto_runs_onnxruntime_on_a_gpu_when_torch_is_missing(monkeypatch, caplog):
    # An image built on a base without torch (container/build.sh --local-base) on a GPU machine.
    from inference import devices

    assert devices.choose_backend("auto", "cuda:0") == "torch"
    monkeypatch.setattr(devices, "torch_installed", lambda: False)
    assert devices.choose_backend("auto", "cuda:0") == "onnx"
    assert "torch is not installed" in caplog.text
    assert devices.choose_backend("auto", "cpu") == "onnx"
    with pytest.raises(DeviceError, match="torch is not installed"):
        devices.choose_backend("torch", "cuda:0")
