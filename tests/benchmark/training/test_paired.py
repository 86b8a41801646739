"""Two weights' scores on the same cases, compared case by case."""

import csv
import json

import pytest

from benchmark.training.paired import compare, main


def _scores(path, dsc):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["case", "dsc", "nsd"])
        writer.writeheader()
        for case, value in dsc.items():
            writer.writerow({"case": case, "dsc": value, "nsd": value})
    return path


def _lesions(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["case", "volume_ml", "covered", "found"])
        writer.writeheader()
        for case, ml, found in rows:
            writer.writerow({"case": case, "volume_ml": ml, "covered": 0.5, "found": found})
    return path


@pytest.fixture
def dataset(tmp_path):
    entries = [{"id": f"c{i}", "n_lesions": 0 if i == 4 else 1} for i in range(5)]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    return tmp_path


def test_paired_difference_over_the_lesion_cases_and_large_lesions(dataset, tmp_path):
    new = _scores(tmp_path / "new.csv", {"c0": 0.6, "c1": 0.5, "c2": 0.7, "c3": 0.4, "c4": 1})
    old = _scores(tmp_path / "old.csv", {"c0": 0.3, "c1": 0.4, "c2": 0.5, "c3": 0.3, "c4": 0})
    lesions = [_lesions(tmp_path / "ln.csv", [("c0", 6, 1), ("c1", 2, 0)]),
               _lesions(tmp_path / "lo.csv", [("c0", 6, 0), ("c1", 2, 0)])]
    out = compare(dataset, [new, old], lesions)
    d = out["difference"]["dsc"]
    assert d["n"] == 4 and d["mean"] == pytest.approx(0.175)  # the lesion-free case left out
    assert d["se"] == pytest.approx(0.0479, abs=1e-3) and out["better"]
    assert out["new"]["healthy_empty_fraction"] == 1.0
    assert out["shipped"]["healthy_empty_fraction"] == 0
    assert out["new"]["large_lesions"] == {"lesions": 1, "found": 1}
    assert out["shipped"]["large_lesions"] == {"lesions": 1, "found": 0}
    same = compare(dataset, [old, old])
    assert same["difference"]["dsc"]["mean"] == 0 and not same["better"]


def test_scores_of_different_cases_are_refused(dataset, tmp_path, capsys):
    a = _scores(tmp_path / "a.csv", {"c0": 0.5, "c1": 0.5})
    b = _scores(tmp_path / "b.csv", {"c0": 0.5, "c2": 0.5})
    assert main(["--dataset", str(dataset), "--scores", str(a), str(b)]) == 2
    assert "different cases" in capsys.readouterr().err
