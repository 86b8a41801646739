"""Fixtures: an untrained tiny model's weights folder and small phantom inputs."""

import pytest
import torch

from inference.model import build_model
from inference.plans import Plan, PostProcessing
from inference.weights import write_weights
from training.phantoms import make_phantom, write_nifti


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """Weights of a randomly initialised tiny network (the shipped ones may change)."""
    torch.manual_seed(0)
    model = build_model("tiny")
    model.set_temperature(1.0)
    plan = Plan(preset="tiny", patch_size=(64, 64), target_spacing=(2.0, 2.0, 4.0),
                postprocessing=PostProcessing(min_volume_mm3=20.0))
    return write_weights(tmp_path_factory.mktemp("weights"), model, plan, onnx_batch=4)


def write_phantom_case(folder, case, seed, orientation="LPS", shape=(120, 100, 24),
                       spacing=(1.2, 1.2, 3.0)):
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(shape, spacing, seed=seed, orientation=orientation)
    path = folder / f"{case}_0000.nii.gz"
    write_nifti(phantom.to_sitk(), str(path))
    return path
