"""A weights folder is checked once, before any case: its checksums, its plan's ranges,
and the plan against the model. Each problem is one line and exit code 2."""

import json
import shutil
import subprocess

import pytest

from inference.weights import SUMS, sha256
from tests.inference.conftest import write_phantom_case
from tests.inference.test_cli import run_cli


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
    # out of range
    ("normalization.std", float("nan"), "normalization.std"),
    ("body_threshold_hu", float("nan"), "body_threshold_hu"),
    ("target_spacing", [0.001, 0.001, 0.001], "target_spacing"),
    ("tile_step", 1e-4, "tile_step"),
    ("postprocessing.min_volume_mm3", -5, "min_volume_mm3"),
    ("context_slices", 4, "context_slices"),
    # of the wrong type
    ("target_spacing", "2.0", "target_spacing must be three numbers"),
    ("target_spacing", {"x": 2}, "target_spacing must be three numbers"),
    ("patch_size", None, "patch_size must be two integers"),
    ("patch_size", ["a", 64], "patch_size must be an integer"),
    ("patch_size", [64.5, 64], "patch_size must be an integer"),
    ("context_slices", 3.5, "context_slices must be an integer"),
    ("batch_size", True, "batch_size must be an integer"),
    ("postprocessing", None, "postprocessing must be an object"),
    ("normalization", [1, 2], "normalization must be an object"),
    ("normalization.spread", 2, "normalization: unknown field 'spread'"),
    ("sam_checkpoint", 5, "sam_checkpoint must be a file name or null"),
])
def test_plan_values_out_of_range_or_of_the_wrong_type_are_refused_before_any_case(
        one_case, tmp_path, tiny_weights, field, value, words):
    weights = _resigned(tiny_weights, tmp_path / "w", _setting(field, value))
    out = tmp_path / "out"
    _one_line_exit_2(run_cli(one_case, out, weights), "plans.json", words)
    assert not any(out.iterdir())


def _setting(field: str, value):
    """A change to a plan's dict that sets ``field`` (``section.name`` for a nested one)."""
    def change(plan):
        *path, last = field.split(".")
        target = plan
        for key in path:
            target = target[key]
        target[last] = value

    return change


@pytest.mark.parametrize("backend, change, words", [
    ("onnx", {"context_slices": 5}, ["model.onnx", "context_slices 5"]),
    ("onnx", {"patch_size": [96, 96]}, ["model.onnx", "patch_size [96, 96]"]),
    ("torch", {"context_slices": 5}, ["model.pt", "context_slices 5"]),
])
def test_a_plan_that_does_not_fit_the_model_is_one_line(one_case, tmp_path, tiny_weights,
                                                         backend, change, words):
    def consistent(plan):  # the plan agrees with itself, the model does not
        plan.update(change)
        plan["network"].update({"in_channels": plan["context_slices"],
                                "patch_size": plan["patch_size"]})

    weights = _resigned(tiny_weights, tmp_path / "w", consistent)
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


def test_checksums_in_every_form_sha256sum_checks_are_read(one_case, tmp_path, tiny_weights):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    forms = ["{}  ./{}", "{} *{}", "{} *./{}", "{}  {}"]  # text and binary mode, ./ or not
    lines = [line.split() for line in (weights / SUMS).read_text().splitlines()]
    (weights / SUMS).write_text("".join(form.format(digest, name) + "\n"
                                        for form, (digest, name) in zip(forms, lines)))
    if shutil.which("sha256sum"):
        checked = subprocess.run(["sha256sum", "--check", "--quiet", SUMS], cwd=weights)
        assert checked.returncode == 0
    result = run_cli(one_case, tmp_path / "out", weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- the network


def test_the_plan_stores_every_network_field_and_reads_it_back(tmp_path):
    from dataclasses import fields

    from inference.network_config import NetworkConfig, get_config
    from inference.plans import Plan

    config = get_config("tiny", base_features=12, n_kernels=2, sam_depth=2)
    plan = Plan(preset="tiny", patch_size=(64, 64), network=config)
    stored = json.loads(plan.save(tmp_path / "plans.json").read_text())["network"]
    assert set(stored) == {f.name for f in fields(NetworkConfig)}
    assert Plan.load(tmp_path / "plans.json").network == config


def test_a_weights_folder_rebuilds_the_network_it_was_trained_as(tmp_path, one_case):
    import numpy as np
    import torch

    from inference.backends import OnnxBackend, TorchBackend
    from inference.model import LesionProbability, NnSam
    from inference.network_config import get_config
    from inference.plans import Plan
    from inference.weights import load_plan, write_weights

    config = get_config("tiny", base_features=12, max_features=48, n_kernels=2,
                        cbam_ratio=2, sam_embed_dim=48, sam_out_channels=8)
    torch.manual_seed(3)
    model = NnSam(config)
    model.set_temperature(1.0)
    folder = write_weights(tmp_path / "w", model, Plan(preset="tiny", patch_size=(64, 64),
                                                       network=config), onnx_batch=2)
    plan = load_plan(folder)
    assert plan.network == config
    tiles = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = LesionProbability(model.eval())(tiles)
    torch_out = TorchBackend(folder, plan, "cpu", mode="grouped/fp32")(tiles)
    np.testing.assert_allclose(torch_out.numpy(), expected.numpy(), atol=1e-6)
    onnx_out = OnnxBackend(folder, "cpu")(tiles.numpy())
    np.testing.assert_allclose(onnx_out, expected.numpy(), atol=1e-4)
    result = run_cli(one_case, tmp_path / "out", folder, "--device", "cpu")
    assert result.returncode == 0, result.stderr


def test_weights_folders_written_before_the_network_was_stored_still_load():
    from pathlib import Path

    from inference.network_config import get_config
    from inference.plans import Plan

    shipped = Path(__file__).resolve().parents[2] / "weights" / "plans.json"
    data = json.loads(shipped.read_text())
    data.pop("network", None)  # as every plan before it
    plan = Plan.from_dict(data, "old plans.json")
    assert plan.network == get_config(data["preset"], patch_size=tuple(data["patch_size"]),
                                      in_channels=data["context_slices"])


@pytest.mark.parametrize("change, words", [
    ({"n_stages": "five"}, "n_stages must be int"),
    ({"depth_of_field": 3}, "unknown network field 'depth_of_field'"),
    ({"patch_size": [40, 40]}, "not divisible"),
])
def test_a_bad_network_in_the_plan_is_one_line(one_case, tmp_path, tiny_weights, change, words):
    def edit(plan):
        plan["network"].update(change)
        if "patch_size" in change:
            plan["patch_size"] = change["patch_size"]

    weights = _resigned(tiny_weights, tmp_path / "w", edit)
    _one_line_exit_2(run_cli(one_case, tmp_path / "out", weights), "plans.json", words)


# ----------------------------------------------------------------------------- signing again


def _weights_cli(*argv):
    import sys

    from tests.inference.test_cli import ROOT

    return subprocess.run([sys.executable, "-m", "inference.weights", *map(str, argv)],
                          cwd=ROOT, capture_output=True, text=True)


def _edit_by_hand(folder, field, value):
    plan = json.loads((folder / "plans.json").read_text())
    _setting(field, value)(plan)
    (folder / "plans.json").write_text(json.dumps(plan, indent=4))


def test_a_plan_edited_by_hand_is_refused_until_signed_again(one_case, tmp_path, tiny_weights):
    from inference.weights import load_plan

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    _edit_by_hand(weights, "postprocessing.min_volume_mm3", 123.0)
    _one_line_exit_2(run_cli(one_case, tmp_path / "refused", weights, "--device", "cpu"),
                     "plans.json: sha256 does not match",
                     f"python -m inference.weights sign {weights}")
    signed = _weights_cli("sign", weights)
    assert signed.returncode == 0 and "signed plans.json" in signed.stdout, signed.stderr
    assert load_plan(weights).postprocessing.min_volume_mm3 == 123.0
    result = run_cli(one_case, tmp_path / "out", weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    again = _weights_cli("sign", weights)
    assert again.returncode == 0 and "already matches" in again.stdout


def _one_line_exit_2_of(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_sign_refuses_a_bad_value_and_a_changed_model_and_signs_nothing(tmp_path, tiny_weights):
    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    sums = (weights / SUMS).read_text()
    _edit_by_hand(weights, "postprocessing.threshold", 1.5)
    _one_line_exit_2_of(_weights_cli("sign", weights), "plans.json", "postprocessing.threshold")
    assert (weights / SUMS).read_text() == sums
    _edit_by_hand(weights, "postprocessing.threshold", 0.45)
    with open(weights / "model.onnx", "r+b") as f:  # a model is exported, never re-signed
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    _one_line_exit_2_of(_weights_cli("sign", weights), "model.onnx", "export the weights again")
    assert (weights / SUMS).read_text() == sums


def test_set_changes_one_field_checks_the_plan_and_signs_it(tmp_path, tiny_weights):
    from inference.weights import load_plan

    weights = tmp_path / "w"
    shutil.copytree(tiny_weights, weights)
    before = json.loads((weights / "plans.json").read_text())
    done = _weights_cli("set", weights, "postprocessing.min_volume_mm3", "200")
    assert done.returncode == 0, done.stderr
    assert _weights_cli("set", weights, "orientation", "RAS").returncode == 0  # text as text
    plan = load_plan(weights)
    assert plan.postprocessing.min_volume_mm3 == 200 and plan.orientation == "RAS"
    after = json.loads((weights / "plans.json").read_text())
    before["postprocessing"]["min_volume_mm3"], before["orientation"] = 200, "RAS"
    assert after == before  # nothing else changed
    state = {name: (weights / name).read_bytes() for name in ("plans.json", SUMS)}
    for argv, words in ((["tile_step", "0"], ["plans.json", "tile_step"]),
                        (["postprocessing.threshold", "high"], ["postprocessing.threshold"]),
                        (["postprocessing.spread", "2"], ["unknown field 'spread'"]),
                        (["filters.size", "2"], ["no section 'filters'"])):
        _one_line_exit_2_of(_weights_cli("set", weights, *argv), *words)
        assert {name: (weights / name).read_bytes() for name in state} == state
