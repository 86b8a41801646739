"""Fixtures for the benchmark tests: an untrained tiny weights folder and one small case."""

import pytest

from training.phantoms import make_phantom, write_nifti


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A randomly initialised tiny network's weights (speed only; the masks mean nothing)."""
    import torch

    from inference.model import build_model
    from inference.plans import Plan
    from inference.weights import write_weights

    torch.manual_seed(0)
    plan = Plan(preset="tiny", patch_size=(64, 64), target_spacing=(2.0, 2.0, 4.0))
    return write_weights(tmp_path_factory.mktemp("weights"), build_model("tiny"), plan,
                         onnx_batch=4, info={"trained": False, "note": "test fixture"})


@pytest.fixture(scope="session")
def tiny_case_dir(tmp_path_factory):
    """A folder holding one small phantom, ``bench_0000.nii.gz`` (96x80x12 voxels)."""
    folder = tmp_path_factory.mktemp("cases")
    phantom = make_phantom((96, 80, 12), (2.0, 2.0, 4.0), seed=3)
    write_nifti(phantom.to_sitk(), str(folder / "bench_0000.nii.gz"))
    return folder
