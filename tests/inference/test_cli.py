"""The container contract end to end: predict.sh / python -m inference on files."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.inference.conftest import write_phantom_case

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "real"


def run_cli(inputs, outputs, weights, *extra, text=True, timeout=600):
    """The command line in a subprocess; ``text=False`` keeps its output as raw bytes. A run
    past ``timeout`` is killed with its worker (TimeoutExpired), so none is left behind."""
    cmd = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs),
           "--weights", str(weights), "--disable-progress-bar", *extra]
    # The run logs UTF-8 (names included) whatever locale a test left this process in.
    encoding = {"encoding": "utf-8", "errors": "backslashreplace"} if text else {}
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True, **encoding) as run:
        try:
            out, err = run.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
            raise
    return subprocess.CompletedProcess(cmd, run.returncode, out, err)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and a.GetSpacing() == b.GetSpacing()
            and a.GetOrigin() == b.GetOrigin() and a.GetDirection() == b.GetDirection())


def check_outputs(inputs: Path, outputs: Path, cases):
    for case in cases:
        out = sitk.ReadImage(str(outputs / f"{case}.nii.gz"))
        ref = sitk.ReadImage(str(inputs / f"{case}_0000.nii.gz"))
        assert same_grid(out, ref), case
        assert out.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayViewFromImage(out))) <= {0, 1}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    write_phantom_case(folder, "lps", 1, "LPS")
    write_phantom_case(folder, "ras", 2, "RAS")
    return folder


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_both_backends_write_masks_on_the_input_grid(inputs, tmp_path, tiny_weights, backend):
    result = run_cli(inputs, tmp_path, tiny_weights, "--backend", backend, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    check_outputs(inputs, tmp_path, ["lps", "ras"])
    assert "network" in result.stderr and "write" in result.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_backends_agree(inputs, tmp_path, tiny_weights):
    for backend in ("onnx", "torch"):
        assert run_cli(inputs, tmp_path / backend, tiny_weights, "--backend", backend,
                       "--device", "cpu").returncode == 0
    for case in ("lps", "ras"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "onnx" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "torch" / f"{case}.nii.gz")))
        assert (a != b).mean() < 1e-3


def test_onnx_path_never_imports_torch(inputs, tmp_path, tiny_weights):
    # The cases run in a forked worker: an import of torch anywhere (the parent or the
    # worker, which inherits this) fails, and with it the case and the exit code.
    code = ("import sys; sys.modules['torch'] = sys.modules['torchvision'] = None\n"
            "from inference.__main__ import main\n"
            "assert main(['-i', sys.argv[1], '-o', sys.argv[2], '--weights', sys.argv[3], "
            "'--backend', 'onnx', '--device', 'auto', '--quiet']) == 0\n"
            "print(sys.modules['torch'] is None, sys.modules['torchvision'] is None)")
    out = subprocess.run([sys.executable, "-c", code, str(inputs), str(tmp_path),
                          str(tiny_weights)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    check_outputs(inputs, tmp_path, ["lps", "ras"])


def test_onnx_path_writes_nothing_but_the_masks(inputs, tmp_path, tiny_weights):
    # onnxruntime's telemetry stores a device id under ~/.cache unless it is switched off;
    # it also stays quiet under CI, so the markers of a CI machine are removed here.
    home, outputs = tmp_path / "home", tmp_path / "outputs"
    home.mkdir()
    ci_markers = ("CI", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TF_BUILD",
                  "ORT_DISABLE_TELEMETRY")
    env = {k: v for k, v in os.environ.items() if k not in ci_markers}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    cmd = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs),
           "--weights", str(tiny_weights), "--backend", "onnx", "--device", "cpu", "--quiet"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []
    assert sorted(p.name for p in outputs.iterdir()) == ["lps.nii.gz", "ras.nii.gz"]


def test_predict_sh_runs_on_a_workspace_folder(inputs, tmp_path, tiny_weights):
    workspace_in, workspace_out = tmp_path / "inputs", tmp_path / "outputs"
    shutil.copytree(inputs, workspace_in)
    env = {**os.environ, "INPUT_DIR": str(workspace_in), "OUTPUT_DIR": str(workspace_out)}
    result = subprocess.run(["sh", str(ROOT / "predict.sh"), "--weights", str(tiny_weights)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    check_outputs(workspace_in, workspace_out, ["lps", "ras"])


def test_predict_sh_takes_relative_paths_from_the_callers_folder(inputs, tmp_path,
                                                                 tiny_weights):
    # cd X && INPUT_DIR=in OUTPUT_DIR=out sh /path/to/predict.sh: X/in is read, X/out written
    shutil.copytree(inputs, tmp_path / "in")
    (tmp_path / "w").symlink_to(tiny_weights)
    (tmp_path / "inference").mkdir()  # a folder of the caller's is not the package
    (tmp_path / "inference" / "__init__.py").write_text("raise SystemExit('wrong package')")
    env = {**os.environ, "INPUT_DIR": "in", "OUTPUT_DIR": "out"}
    result = subprocess.run(["sh", str(ROOT / "predict.sh"), "--weights", "w",
                             "--timings-json", "t.json"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    check_outputs(tmp_path / "in", tmp_path / "out", ["lps", "ras"])
    assert len(json.loads((tmp_path / "t.json").read_text())["cases"]) == 2


@pytest.mark.parametrize("streams", ["2>&-", "<&- >&- 2>&-", "broken pipe"])
def test_closed_or_broken_standard_streams_cost_nothing(inputs, tmp_path, tiny_weights,
                                                        streams):
    # a harness may close any stream, or stop reading the pipe it gave
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(out), "--weights",
           str(tiny_weights), "--device", "cpu"]
    if streams == "broken pipe":
        read_end, write_end = os.pipe()
        os.close(read_end)
        result = subprocess.run(cmd, cwd=ROOT, stdout=write_end, stderr=write_end, timeout=600)
        os.close(write_end)
    else:
        result = subprocess.run(["sh", "-c", f'exec "$@" {streams}', "sh", *cmd], cwd=ROOT,
                                timeout=600)
    assert result.returncode == 0
    check_outputs(inputs, out, ["lps", "ras"])


def test_bad_inputs_fail_alone_with_one_line_each(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    good = write_phantom_case(inputs, "good", 3)
    (inputs / "empty_0000.nii.gz").write_bytes(b"")
    data = good.read_bytes()
    (inputs / "truncated_0000.nii.gz").write_bytes(data[: len(data) // 2])
    flat = sitk.GetImageFromArray(np.zeros((30, 40), np.int16))
    sitk.WriteImage(flat, str(inputs / "flat_0000.nii.gz"))
    unit = sitk.GetImageFromArray(np.random.default_rng(0).random((8, 30, 30)).astype(np.float32))
    sitk.WriteImage(unit, str(inputs / "unit_0000.nii.gz"))
    (inputs / "._good_0000.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    out = tmp_path / "out"
    result = run_cli(inputs, out, tiny_weights, "--backend", "onnx", "--device", "cpu")
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["good.nii.gz"]
    errors = [line for line in result.stderr.splitlines() if "_0000.nii.gz" in line]
    for case in ("empty", "truncated", "flat", "unit"):
        assert sum(f"{case}_0000.nii.gz" in line for line in errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "4 of 5 cases failed" in result.stderr


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_bad_first_case_read_during_start_up_fails_alone(tmp_path, tiny_weights, backend):
    # The first case is read while the model loads; its error must still be its own line.
    inputs = tmp_path / "in"
    write_phantom_case(inputs, "zz_good", 3)
    (inputs / "aa_empty_0000.nii.gz").write_bytes(b"")
    out = tmp_path / "out"
    result = run_cli(inputs, out, tiny_weights, "--backend", backend, "--device", "cpu",
                     "--timings-json", str(tmp_path / "t.json"))
    assert result.returncode == 1
    assert sorted(p.name for p in out.iterdir()) == ["zz_good.nii.gz"]
    assert sum("aa_empty_0000.nii.gz" in line for line in result.stderr.splitlines()) == 1
    assert "Traceback" not in result.stderr and "1 of 2 cases failed" in result.stderr
    timings = json.loads((tmp_path / "t.json").read_text())
    assert 0 < timings["startup_s"] <= timings["ready_s"]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_input_folder_is_an_error(tmp_path, tiny_weights, make):
    inputs = tmp_path / "in"
    if make == "empty":
        inputs.mkdir()
    result = run_cli(inputs, tmp_path / "out", tiny_weights)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) <= 2 and str(inputs) in result.stderr


def test_output_folder_that_cannot_be_created(inputs, tmp_path, tiny_weights):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli(inputs, blocker / "out", tiny_weights)
    assert result.returncode == 2 and "out" in result.stderr
    assert "Traceback" not in result.stderr


def test_timings_json_into_a_missing_folder_creates_it(inputs, tmp_path, tiny_weights):
    target = tmp_path / "new" / "deeper" / "t.json"
    result = run_cli(inputs, tmp_path / "out", tiny_weights, "--device", "cpu",
                     "--timings-json", str(target))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(target.read_text())["cases"]) == 2


@pytest.mark.parametrize("option", ["timings in a file", "timings as a folder",
                                    "probabilities folder is a file"])
def test_an_option_whose_output_cannot_be_written_stops_before_any_case(inputs, tmp_path,
                                                                        tiny_weights, option):
    out, blocker = tmp_path / "out", tmp_path / "file"
    blocker.write_text("not a folder")
    extra, words = {
        "timings in a file": (["--timings-json", str(blocker / "t.json")], "--timings-json"),
        "timings as a folder": (["--timings-json", str(tmp_path)], "--timings-json"),
        "probabilities folder is a file": (["--save-probabilities"], "probabilities"),
    }[option]
    out.mkdir()
    (out / "probabilities").write_text("a file where the folder goes")
    result = run_cli(inputs, out, tiny_weights, "--device", "cpu", *extra)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["probabilities"]


def test_corrupt_weights_are_refused(tmp_path, tiny_weights, inputs):
    weights = tmp_path / "weights"
    shutil.copytree(tiny_weights, weights)
    with open(weights / "model.onnx", "r+b") as f:
        f.seek(200)
        f.write(b"\x00\x01\x02\x03")
    result = run_cli(inputs, tmp_path / "out", weights, "--backend", "onnx")
    assert result.returncode == 2 and "model.onnx: sha256 does not match" in result.stderr


def test_continue_and_sharding(inputs, tmp_path, tiny_weights):
    out = tmp_path / "out"
    first = run_cli(inputs, out, tiny_weights, "--num-parts", "2", "--part-id", "0")
    assert first.returncode == 0
    assert len(list(out.glob("*.nii.gz"))) == 1
    second = run_cli(inputs, out, tiny_weights, "--continue", "--timings-json",
                     str(tmp_path / "t.json"))
    assert second.returncode == 0 and "already written" in second.stderr
    timings = json.loads((tmp_path / "t.json").read_text())
    assert len(timings["cases"]) == 1
    assert {"read", "preprocess", "network", "restore", "write"} <= set(timings["cases"][0])
    assert len(list(out.glob("*.nii.gz"))) == 2
    bad = run_cli(inputs, out, tiny_weights, "--num-parts", "2", "--part-id", "2")
    assert bad.returncode == 2 and "--part-id" in bad.stderr


@pytest.mark.skipif(not REAL.is_dir(), reason="real scans live in ../shared/data/real "
                    "beside the project; a user's clone has none")
def test_real_scans_end_to_end(tmp_path, tiny_weights):
    cases = sorted(p.name[:-len("_0000.nii.gz")] for p in REAL.glob("*_0000.nii.gz"))
    assert cases
    result = run_cli(REAL, tmp_path, tiny_weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    check_outputs(REAL, tmp_path, cases)


def test_tiny_volume_and_thousands_of_slices(tmp_path, tiny_weights):
    """A volume smaller than a patch, and a long thin one with 2000 slices."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for case, shape in (("tiny", (3, 12, 10)), ("long", (2000, 24, 20))):
        array = np.full(shape, -1000, np.int16)
        array[:, 2:-2, 2:-2] = rng.integers(-100, 200, size=(shape[0], shape[1] - 4,
                                                            shape[2] - 4))
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((1.5, 1.5, 1.0))
        sitk.WriteImage(image, str(inputs / f"{case}_0000.nii.gz"))
    result = run_cli(inputs, tmp_path / "out", tiny_weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    check_outputs(inputs, tmp_path / "out", ["tiny", "long"])


def test_the_tile_step_has_one_name_and_keeps_the_old_spelling(capsys):
    from inference.__main__ import parse_args

    base = ["-i", "in", "-o", "out"]
    assert parse_args(base).tile_step is None  # the plan's
    assert parse_args([*base, "--tile-step", "0.75"]).tile_step == 0.75
    assert parse_args([*base, "--step", "0.75"]).tile_step == 0.75
    with pytest.raises(SystemExit):
        parse_args([*base, "--tile-step", "1.5"])
    assert "--tile-step is a fraction of the patch" in capsys.readouterr().err
