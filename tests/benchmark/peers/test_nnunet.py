"""nnU-Net beside ours: the plan written, the results computed, the missing extra said plainly,
and (with the ``peers`` extra) both tools run end to end on one small case."""

import csv
import importlib.util
import json
import math
import subprocess
import sys

import pytest
import SimpleITK as sitk

from benchmark.container.memory import MemoryTrace, nvml_available, rss_available
from benchmark.container.runner import CaseRun
from benchmark.peers import nnunet, nnunet_model, summary
from inference.plans import Plan
from training.reporting import write_csv

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAS_NNUNET,
                                  reason="nnunetv2 is not installed (the peers extra)")


def test_plan_holds_the_winners_3d_network():
    plans = nnunet_model.plans()
    config = plans["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    assert config["spacing"] == [3.0, 2.0, 2.0] and config["patch_size"] == [96, 128, 128]
    assert arch["n_stages"] == 4 and arch["features_per_stage"] == [32, 64, 128, 256]
    assert config["normalization_schemes"] == ["CTNormalization"]
    assert config["architecture"]["network_class_name"].endswith("unet.PlainConvUNet")
    assert arch["conv_op"] == "torch.nn.modules.conv.Conv3d"
    # Every list nnU-Net reads per stage has one entry per stage (decoder: one fewer).
    for key in ("kernel_sizes", "strides", "n_conv_per_stage"):
        assert len(arch[key]) == 4, key
    assert len(arch["n_conv_per_stage_decoder"]) == 3
    # The patch divides by the total stride on every axis and leaves at least 4 voxels at the
    # bottom, as nnU-Net's planner requires.
    for axis, size in enumerate(config["patch_size"]):
        stride = math.prod(s[axis] for s in arch["strides"])
        assert size % stride == 0 and size // stride >= 4
    assert plans["transpose_forward"] == [0, 1, 2] == plans["transpose_backward"]
    assert plans["image_reader_writer"] == "SimpleITKIO"


def test_ct_statistics_are_our_plans_so_both_tools_normalise_alike():
    norm = Plan.load(nnunet_model.OUR_PLAN).normalization
    props = nnunet_model.plans()["foreground_intensity_properties_per_channel"]["0"]
    assert (props["percentile_00_5"], props["percentile_99_5"]) == (norm.clip_low,
                                                                    norm.clip_high)
    assert (props["mean"], props["std"]) == (norm.mean, norm.std)


def test_plan_files_are_json_nnunet_reads(tmp_path):
    nnunet_model.write_plan_files(tmp_path)
    dataset = json.loads((tmp_path / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT"}
    assert dataset["labels"] == {"background": 0, "lesion": 1}
    assert dataset["file_ending"] == ".nii.gz"
    assert json.loads((tmp_path / "plans.json").read_text()) == nnunet_model.plans()
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def _record(case, slices, rnd, tool, wall, ok=True):
    run = CaseRun(case, (512, 512, slices), (0.8, 0.8, 2.5), wall, 0 if ok else 1,
                  MemoryTrace([100.0, 250.0]), ok)
    return nnunet.Record(rnd, tool, run, None)


def test_csv_has_exactly_the_columns_and_its_medians_and_ratios(tmp_path):
    walls = {"ours": [1.0, 2.0, 3.0], "nnunet": [10.0, 30.0, 20.0]}
    records = [_record("table4_z100", 100, r + 1, tool, walls[tool][r])
               for r in range(3) for tool in ("ours", "nnunet")]
    records.append(_record("table4_z100", 100, 4, "nnunet", 1.0, ok=False))  # failed: left out
    path = write_csv([r.row() for r in records], tmp_path / "runs.csv",
                            summary.CSV_COLUMNS)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["case", "slices", "round", "tool", "wall_s", "max_mb",
                                     "idle_mb", "exit_code"]
        rows = list(reader)
    assert rows[0]["idle_mb"] == "" and rows[0]["max_mb"] == "250.0"
    for table in ([r.row() for r in records], rows):  # in memory, and read back from the CSV
        case, = summary.per_case(table)
        assert case["ours_s"] == 2.0 and case["nnunet_s"] == 20.0
        assert case["ratio"] == pytest.approx(10.0)
        assert case["ours_range"] == "1.00-3.00" and case["nnunet_range"] == "10.00-30.00"
        assert case["round_ratios"] == "6.7-15.0"  # 10/1, 15/2, 20/3 within each round
    assert summary.ours_ahead(summary.per_case(rows))


def test_ours_is_not_ahead_when_one_case_is_slower_or_missing():
    rows = [_record("a", 55, 1, "ours", 2.0).row(), _record("a", 55, 1, "nnunet", 1.0).row()]
    assert not summary.ours_ahead(summary.per_case(rows))
    only_ours = [_record("b", 55, 1, "ours", 1.0).row()]
    assert summary.per_case(only_ours)[0].get("ratio") is None
    assert not summary.ours_ahead(summary.per_case(only_ours))


def test_without_the_extra_one_line_and_exit_2(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # as if not installed
    out = tmp_path / "results"
    assert nnunet.main(["-o", str(out), "--model", str(tmp_path / "model")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ['error: nnU-Net v2 is not installed in this Python; install the peers '
                      'extra: pip install -e ".[peers]"']
    assert not out.exists() and not (tmp_path / "model").exists()  # nothing half-written


def test_the_modules_import_without_nnunet():
    code = ("import sys; sys.modules['nnunetv2'] = None; "
            "import benchmark.peers.nnunet, benchmark.peers.nnunet_model, "
            "benchmark.peers.summary")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_nnunets_command_line_is_the_one_compared():
    options = nnunet.nnunet_options("model", "cpu")
    assert options == ["-m", "model", "-f", "0", "-step_size", "0.5", "--disable_tta",
                       "-npp", "1", "-nps", "1", "-device", "cpu", "--disable_progress_bar"]
    assert nnunet.nnunet_device(None, gpu=False) == "cpu"
    assert nnunet.nnunet_device(None, gpu=True) == "cuda"
    assert nnunet.nnunet_device("cuda:1", gpu=True) == "cuda"
    assert nnunet.nnunet_device("cpu", gpu=True) == "cpu"


@needs_nnunet
def test_model_folder_rebuilds_in_nnunets_predictor(tmp_path):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    written = nnunet_model.write_model_folder(tmp_path, seed=3)
    again = nnunet_model.write_model_folder(tmp_path / "again", seed=3)
    assert 5_000_000 < written["parameters"] < 6_000_000  # the winner's network: about 5.6M
    predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False)
    predictor.initialize_from_trained_model_folder(str(tmp_path), (0,))
    assert predictor.configuration_manager.patch_size == [96, 128, 128]
    first = predictor.list_of_parameters[0]
    second = torch.load(again["checkpoint"], weights_only=False)["network_weights"]
    assert all(torch.equal(first[k], second[k]) for k in first)  # seeded: the same weights


@needs_nnunet
@pytest.mark.skipif(not (nvml_available() or rss_available()),
                    reason="no GPU and no psutil to measure memory")
def test_both_tools_write_a_mask_on_the_inputs_grid(tiny_case_dir, tmp_path):
    out, masks = tmp_path / "results", tmp_path / "masks"
    code = nnunet.main(["-i", str(tiny_case_dir), "--sizes", "12", "--rounds", "1",
                        "--no-warmup", "--model", str(tmp_path / "model"), "--masks",
                        str(masks), "-o", str(out), "--device", "cpu"])
    assert code == 0
    csv_path, = out.glob("nnunet_*.csv")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["tool"] for r in rows) == ["nnunet", "ours"]
    assert all(r["exit_code"] == "0" and float(r["wall_s"]) > 0 for r in rows)
    image = sitk.ReadImage(str(tiny_case_dir / "bench_0000.nii.gz"))
    for tool in ("ours", "nnunet"):
        mask = sitk.ReadImage(str(masks / tool / "bench.nii.gz"))
        assert mask.GetSize() == image.GetSize() == (96, 80, 12), tool
        assert mask.GetSpacing() == pytest.approx(image.GetSpacing())
        assert mask.GetOrigin() == pytest.approx(image.GetOrigin())
        assert mask.GetDirection() == pytest.approx(image.GetDirection())
    md = csv_path.with_suffix(".md").read_text()
    assert "2 of 2 runs wrote a mask on its input's voxel grid" in md
    assert "nnUNetv2_predict_from_modelfolder" in md and "/tmp/" not in md
