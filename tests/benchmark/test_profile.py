"""Profile and stage runs end to end: one fresh predict.sh process per case."""

import csv
import json
import sys

import pytest

from benchmark import machine, profile
from benchmark.container import stages
from benchmark.container.memory import nvml_available, rss_available

needs_sampler = pytest.mark.skipif(
    not (nvml_available() or rss_available()),
    reason="no GPU and no psutil to measure memory (pip install psutil: the bench extra)")


@needs_sampler
def test_profile_one_tiny_case_end_to_end(tiny_case_dir, tiny_weights, tmp_path):
    out = tmp_path / "results"
    code = profile.main(["-i", str(tiny_case_dir), "-o", str(out), "--weights",
                         str(tiny_weights), "--backend", "onnx", "--sizes", "12",
                         "--no-warmup", "--tag", "test"])
    assert code == 0
    csv_path, = out.glob("profile_*_test.csv")
    with open(csv_path, newline="") as f:
        row, = list(csv.DictReader(f))
    assert row["case"] == "bench" and row["size"] == "96x80x12" and row["slices"] == "12"
    assert row["exit_code"] == "0" and row["output_ok"] == "True"
    assert row["backend"] == "onnx" and row["device"] == "cpu"
    assert float(row["time_s"]) > 0 and int(row["samples"]) >= 1
    assert float(row["cpu_s"]) > 0  # the run's own CPU seconds, read from its rusage
    assert float(row["max_mb"]) > 0 and float(row["area_mb_s"]) > 0
    # the floors of the same invocation: a fresh torch start-up on the run's device, and
    # the idle whole-GPU memory (blank without NVML)
    floor = float(row["floor_s"])
    assert 0 < floor < 60
    assert (row["idle_mb"] == "") == (not nvml_available())
    stages_sum = sum(float(row[f"{s}_s"]) for s in profile.STAGES)
    assert 0 < stages_sum < float(row["time_s"])
    assert float(row["other_s"]) > 0  # the interpreter and imports are never free
    md = csv_path.with_suffix(".md").read_text()
    assert "| bench | 96x80x12 | 12 |" in md
    assert "untrained" in md and "## The paper's Table 4" in md
    net = float(row["median_time_s"]) - floor
    assert f"| {float(row['median_time_s']):.2f} | {net:.2f} |" in md
    assert f"start-up floor `floor_s` {floor:.2f} s" in md
    if not nvml_available():
        assert row["memory"] == "rss" and "not comparable with the paper's GPU memory" in md
    assert csv_path.with_suffix(".png").stat().st_size > 0
    assert "/tmp/" not in md  # no absolute paths of this machine in results


def test_the_floor_is_none_where_torch_cannot_start_on_the_device(tmp_path, caplog):
    from benchmark.container.runner import floor_s

    assert floor_s("cpu", repeats=1, python=sys.executable) > 0
    if not torch_cuda():
        assert floor_s("cuda:0", repeats=1, python=sys.executable) is None
        assert "could not be measured on cuda:0" in caplog.text
    assert floor_s("cpu", python=str(tmp_path / "no-python")) is None


def test_idle_memory_is_none_without_nvml(monkeypatch):
    from benchmark.container import memory

    monkeypatch.setattr(memory, "nvml_available", lambda index=0: False)
    assert memory.idle_mb() is None


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_profile_exits_2_without_inputs(tmp_path):
    assert profile.main(["-i", str(tmp_path), "-o", str(tmp_path / "r")]) == 2
    assert profile.main(["-i", str(tmp_path / "missing"), "-o", str(tmp_path / "r")]) == 2


@needs_sampler
def test_profile_records_a_failed_run(tiny_case_dir, tmp_path):
    broken = tmp_path / "weights"
    broken.mkdir()
    code = profile.main(["-i", str(tiny_case_dir), "-o", str(tmp_path / "r"), "--weights",
                         str(broken), "--no-warmup", "--tag", "broken"])
    assert code == 1
    with open(next((tmp_path / "r").glob("*.csv")), newline="") as f:
        row, = list(csv.DictReader(f))
    assert row["exit_code"] == "2" and row["output_ok"] == "False" and row["error"]


@needs_sampler
def test_stage_breakdown_adds_up_to_the_wall_clock(tiny_case_dir, tiny_weights, tmp_path):
    code = stages.main(["-i", str(tiny_case_dir / "bench_0000.nii.gz"), "-o", str(tmp_path),
                        "--weights", str(tiny_weights), "--backend", "onnx", "--no-warmup",
                        "--tag", "t"])
    assert code == 0
    data = json.loads(next(tmp_path.glob("stages_*_t.json")).read_text())
    parts = data["breakdown"][:-1]
    total = data["breakdown"][-1]["seconds"]
    assert abs(sum(p["seconds"] for p in parts) - total) < 1e-6
    assert all(p["seconds"] >= 0 for p in parts)


def test_predict_args_reach_predict_sh_after_the_benchmark_options():
    from benchmark.container.runner import PREDICT_SH, local_command

    cmd = local_command(None, None, "torch", "cuda", ["--torch-mode", "branches/half"])
    assert cmd[:2] == ["sh", str(PREDICT_SH)]
    assert cmd[2:] == ["--backend", "torch", "--device", "cuda", "--torch-mode", "branches/half"]



def test_weights_note_calls_exported_weights_trained(tmp_path):
    """Weights from `training export` are trained even where model.json predates the flag."""
    (tmp_path / "model.json").write_text(json.dumps(
        {"preset": "tiny", "source": "python -m training export", "epoch": 69}))
    assert machine.weights_note(tmp_path)["trained"] is True
    (tmp_path / "model.json").write_text(json.dumps({"preset": "tiny"}))
    assert machine.weights_note(tmp_path)["trained"] is None
    assert machine.weights_note(None)["trained"] is True  # the shipped demo weights
