"""The training-step benchmark on the CPU: modes parsed, pieces timed, operations counted,
loss curves compared, the dated JSON record written."""

import json

import pytest
import torch

from benchmark.training.curves import compare, rms_gap
from benchmark.training.modes import best_mode, parse_mode, synthetic_batch, trainer_flags
from benchmark.training.train_steps import main


def test_synthetic_batch_has_the_samplers_shapes_and_lesions_in_every_other_sample():
    image, label, partial = synthetic_batch(4, 3, (96, 80), torch.Generator().manual_seed(0))
    assert image.shape == (4, 3, 96, 80) and label.shape == (4, 96, 80)
    assert [int(label[i].sum() > 0) for i in range(4)] == [1, 0, 1, 0]
    assert not partial.any()


def test_modes_name_the_form_precision_and_levers():
    mode = parse_mode("grouped/bf16/adam=fused/loss=batched/compile=default/graph/sync=on")
    assert (mode.form, mode.amp, mode.sync_free) == ("grouped", "bf16", True)
    o = mode.options
    assert (o.adam, o.loss_kernels, o.compile, o.cuda_graph) == ("fused", "batched", "default",
                                                                 True)
    legacy = parse_mode("branches/off")  # the form/amp modes of before
    assert legacy.eager and legacy.options.adam == "auto" and legacy.sync_free is None
    for bad in ("grouped", "grouped/fp8", "grouped/off/turbo", "grouped/off/sync=maybe"):
        with pytest.raises(ValueError, match="mode"):
            parse_mode(bad)


def test_each_mode_is_timed_counted_and_written(tmp_path, capsys):
    assert main(["--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
                 "--modes", "grouped/off", "grouped/off/adam=fused/loss=batched/sync=on",
                 "-o", str(tmp_path), "--tag", "test"]) == 0
    [path] = tmp_path.glob("train_steps_cpu-*_test.json")
    records = json.loads(path.read_text())["records"]
    assert [r["mode"] for r in records] == ["grouped/off",
                                           "grouped/off/adam=fused/loss=batched/sync=on"]
    for r in records:
        assert (r["preset"], r["batch"], r["patch"], r["amp"]) == ("tiny", 2, [64, 64], "fp32")
        assert set(r["pieces_ms"]) == {"to_device", "augment", "forward", "loss", "backward",
                                       "optimiser"}
        assert r["ms_per_step"] > 0 and r["steps_per_s"] > 0
        assert r["gpu_busy"] is None and r["compile_s"] is None  # CUDA only; eager
        assert r["kernels_per_step"] == r["operations_per_step"] > 100
    before, after = records
    assert after["levers"] == {"compile": "off", "cuda_graph": False, "adam": "fused",
                               "loss_kernels": "batched", "sync_free": True}
    assert after["operations_per_step"] < before["operations_per_step"]
    assert capsys.readouterr().out.count('"mode"') == 2


def test_loader_data_reports_waits_and_a_broken_mode_its_error(tmp_path, capsys):
    assert main(["--device", "cpu", "--batch", "2", "--steps", "3", "--warmup", "1",
                 "--data", "loader", "--workers", "1",
                 "--modes", "grouped/off", "grouped/off/graph", "-o", str(tmp_path)]) == 1
    records = json.loads(next(tmp_path.glob("*.json")).read_text())["records"]
    assert 0 <= records[0]["waited_fraction"] <= 1 and records[0]["workers"] == 1
    assert "needs a CUDA device" in records[1]["error"]


def test_loss_curves_against_fp32_on_the_same_and_other_batches(tmp_path):
    assert main(["--device", "cpu", "--batch", "2", "--steps", "1", "--warmup", "1",
                 "--curve-steps", "40", "--modes", "grouped/off/loss=batched",
                 "grouped/on", "-o", str(tmp_path)]) == 0
    records = json.loads(next(tmp_path.glob("*.json")).read_text())["records"]
    batched, bf16 = (r["curve"] for r in records)
    assert batched["steps"] == 40 and batched["finite"]
    # the batched loss is the same arithmetic: no gap at all to fp32 on the same batches
    assert batched["rms_gap_to_fp32"] < 1e-4 * batched["fp32_new_seed_rms_gap"]
    assert batched["within_noise"] is True
    assert bf16["rms_gap_to_fp32"] > batched["rms_gap_to_fp32"]  # bf16 does round


def test_curve_comparison_tells_a_shifted_curve_from_noise():
    reference = [1.0 + 0.1 * (i % 3) for i in range(60)]
    other_seed = [v + 0.02 for v in reference]
    assert rms_gap(other_seed, reference) == pytest.approx(0.02)
    assert compare([v + 0.01 for v in reference], reference, other_seed)["within_noise"]
    assert not compare([v + 0.05 for v in reference], reference, other_seed)["within_noise"]


def test_the_fastest_mode_within_noise_becomes_the_trainers_options():
    curve = {"within_noise": True, "finite": True}
    records = [{"mode": "grouped/auto", "steps_per_s": 10, "curve": curve},
               {"mode": "grouped/bf16/graph", "steps_per_s": 50, "curve": curve},
               {"mode": "grouped/off/graph", "steps_per_s": 90,
                "curve": {"within_noise": False, "finite": True}},
               {"mode": "grouped/bf16/compile=default", "error": "RuntimeError: boom"}]
    assert best_mode(records) == "grouped/bf16/graph"
    assert best_mode(records[2:]) is None
    assert trainer_flags(parse_mode("grouped/bf16/graph")) == [
        "--dynamic-form", "grouped", "--amp", "bf16", "--adam", "auto", "--loss-kernels", "auto",
        "--compile", "off", "--cuda-graph"]
    from training.__main__ import parser

    args = parser().parse_args(["train", "-p", "p", "-c", "c", "-o", "o",
                                *trainer_flags(parse_mode("branches/on/adam=fused/loss=batched/"
                                                          "compile=max-autotune"))])
    assert (args.dynamic_form, args.amp, args.adam, args.loss_kernels, args.compile,
            args.cuda_graph) == ("branches", "on", "fused", "batched", "max-autotune", False)


def test_count_only_counts_the_operations_of_one_step(tmp_path):
    assert main(["--device", "cpu", "--batch", "2", "--warmup", "1", "--count-only",
                 "--modes", "grouped/on/adam=foreach", "grouped/on/adam=fused/loss=batched",
                 "-o", str(tmp_path)]) == 0
    before, after = json.loads(next(tmp_path.glob("*.json")).read_text())["records"]
    assert "ms_per_step" not in before and before["amp"] == "bfloat16"
    assert before["kernels_per_step"] == before["operations_per_step"] > after[
        "operations_per_step"] > 100
