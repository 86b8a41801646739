"""The resolution ceiling: a perfect network's score through the container's own steps."""

import csv

import numpy as np

from training.__main__ import main
from training.ceiling import ideal_probability, run_ceiling, setting_name, summarise


def test_ideal_probability_is_the_lesion_fraction_of_each_coarse_voxel():
    label = np.zeros((16, 32, 32), np.uint8)
    label[4:12, 8:24, 8:24] = 1  # 8 x 16 x 16 voxels of 1 mm
    p = ideal_probability(label, (1.0, 1.0, 1.0), (2.0, 2.0, 2.0))
    assert p.shape == (8, 16, 16)
    assert p[4, 8, 8] == 1.0 and p[0, 0, 0] == 0.0
    assert abs(p.sum() * 8 - label.sum()) < 0.05 * label.sum()  # volume kept


def test_ceiling_falls_with_a_coarser_spacing_and_a_larger_minimum_volume(dataset, planned):
    native, coarse = (2.5, 2.5, 4.0), (5.0, 5.0, 8.0)
    rows = run_ceiling(dataset, planned, [native, coarse], [0.0, 1e9])

    def of(spacing, volume):
        name = setting_name(spacing, volume, 0.5)
        return summarise([r for r in rows if r["setting"] == name])

    assert of(native, 0)["n_lesion"] >= 3
    assert of(native, 0)["lesion_dsc"] > 0.95  # at the data's own spacing nothing is lost
    assert of(coarse, 0)["lesion_dsc"] < of(native, 0)["lesion_dsc"] - 0.02
    assert of(native, 1e9)["lesion_dsc"] == 0.0  # every lesion filtered out
    healthy = [r for r in rows if r["lesion_ml"] == 0]
    assert healthy and all(r["dsc"] == 1.0 for r in healthy)


def test_ceiling_cli_writes_one_row_per_case_and_setting(dataset, planned, tmp_path):
    out = tmp_path / "ceiling.csv"
    code = main(["ceiling", "-d", str(dataset), "-p", str(planned), "--min-volume", "0",
                 "--min-volume", "100", "--csv", str(out), "--quiet"])
    assert code == 0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 5
    assert {r["setting"] for r in rows} == {"2.5x2.5x4 mm, >= 0 mm3, p > 0.5",
                                            "2.5x2.5x4 mm, >= 100 mm3, p > 0.5"}


def test_ceiling_cli_on_a_missing_dataset_is_one_line(planned, tmp_path, caplog):
    code = main(["ceiling", "-d", str(tmp_path / "nope"), "-p", str(planned)])
    assert code == 2
    assert f"{tmp_path / 'nope'}: no such dataset folder" in caplog.text


def test_the_plans_confidence_cut_is_not_applied_to_lesion_fractions(dataset, planned, tmp_path):
    # A shipped plan keeps components of mean probability >= 0.9; a perfect network's
    # lesion fractions are partial at every edge, so that cut would drop small lesions and
    # report a "ceiling" that falls as the threshold is lowered.
    import dataclasses

    from inference.plans import Plan

    plan = Plan.load(planned)
    confident = tmp_path / "plans.json"
    dataclasses.replace(plan, postprocessing=dataclasses.replace(
        plan.postprocessing, min_confidence=0.9)).save(confident)
    coarse = [(5.0, 5.0, 8.0)]

    def lesion_dsc(plans, **kw):
        return summarise(run_ceiling(dataset, plans, coarse, [0.0], **kw))["lesion_dsc"]

    assert lesion_dsc(confident) == lesion_dsc(planned)
    assert lesion_dsc(confident, min_confidence=0.9) < lesion_dsc(planned) - 0.02
