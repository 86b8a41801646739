"""Fixtures: a small phantom dataset, its plan and training cache (tiny preset)."""

from pathlib import Path

import pytest

from training.phantoms import write_dataset
from training.planning import run_plan
from training.preprocessing import run_preprocess

SHAPE, SPACING = (96, 96, 16), (2.5, 2.5, 4.0)  # small, with a realistic-ish spacing


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_dataset(folder, 5, seed=3, shape_xyz=SHAPE, spacing_xyz=SPACING,
                  healthy_fraction=0.2, orientation="LPS", dtype="int16", progress=False)
    return folder


@pytest.fixture(scope="session")
def planned(dataset, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("plan") / "plans.json"
    run_plan(dataset, path, target_spacing=(2.5, 2.5, 4.0), preset="tiny", patch=(64, 64),
             batch_size=2, progress=False)
    return path


@pytest.fixture(scope="session")
def cache(dataset, planned, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    run_preprocess(dataset, planned, folder, workers=1, progress=False)
    return folder
