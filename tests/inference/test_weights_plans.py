"""A weights folder is checked once, before any case: its checksums, its plan's ranges,
and the plan against the model. Each problem is one line and exit code 2."""

import json
import shutil

import pytest

from inference.weights import SUMS, sha256
from tests.inference.test_cli import run_cli
from tests.inference.conftest import write_phantom_case


@pytest.fixture(scope="module")
def one_case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one")
    write_phantom_case(folder, "a", 1)
    return folder


def _resigned(tiny_weights, folder, change):
    """A copy of the weights with ``change(plan_dict)`` applied and valid checksums."""
    shutil.copytree(tiny_weights, folder)
    plan = json.loads((folder / "plans.json").read_text())
    change(plan)
    (folder / "plans.json").write_text(json.dumps(plan))
    names = ["plans.json", "model.pt", "model.onnx", "model.json"]
    (folder / SUMS).write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in names))
    return folder


def _one_line_exit_2(result, *words):
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


@pytest.mark.parametrize("field, value, words", [
    ("normalization.std", float("nan"), "normalization.std"),
    ("body_threshold_hu", float("nan"), "body_threshold_hu"),
    ("target_spacing", [0.001, 0.001, 0.001], "target_spacing"),
    ("tile_step", 1e-4, "tile_step"),
    ("postprocessing.min_volume_mm3", -5, "min_volume_mm3"),
    ("context_slices", 4, "context_slices"),
])
def test_plan_values_out_of_range_are_refused_before_any_case(one_case, tmp_path, tiny_weights,
                                                              field, value, words):
    def change(plan):
        *path, last = field.split(".")
        target = plan
        for key in path:
            target = target[key]
        target[last] = value

    weights = _resigned(tiny_weights, tmp_path / "w", change)
    out = tmp_path / "out"
    _one_line_exit_2(run_cli(one_case, out, weights), "plans.json", words)
    assert not any(out.iterdir())


@pytest.mark.parametrize("backend, change, words", [
    ("onnx", {"context_slices": 5}, ["model.onnx", "context_slices 5"]),
    ("onnx", {"patch_size": [96, 96]}, ["model.onnx", "patch_size [96, 96]"]),
    ("torch", {"context_slices": 5}, ["model.pt", "context_slices 5"]),
])
def test_a_plan_that_does_not_fit_the_model_is_one_line(one_case, tmp_path, tiny_weights,
                                                         backend, change, words):
    weights = _resigned(tiny_weights, tmp_path / "w", lambda plan: plan.update(change))
    result = run_cli(one_case, tmp_path / "out", weights, "--backend", backend,
                     "--device", "cpu")
    _one_line_exit_2(result, *words)


@pytest.mark.parametrize("text", ["not a checksum file\n", "abc123  plans.json\n",
                                  "\x00\xff\xfe binary"])
def test_malformed_checksums_are_one_line(one_case, tmp_path, tiny_weights, text):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    (weights / SUMS).write_bytes(text.encode("latin-1"))
    _one_line_exit_2(run_cli(one_case, tmp_path / "out", weights), SUMS)
