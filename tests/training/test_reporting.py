"""Training reports: the metrics CSV and the curves PNG."""

import csv
import math
import warnings

from training.reporting import METRICS_COLUMNS, plot_curves, write_csv


def test_curves_before_and_after_the_first_validation(tmp_path):
    history = [{"epoch": 0, "train_loss": 1.0, "lr": 1e-3}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns about an empty legend
        plot_curves(tmp_path / "early.png", history)
        history.append({"epoch": 1, "train_loss": 0.8, "lr": 1e-3, "val_dsc": 0.4,
                        "val_nsd": 0.5, "val_score": 0.45})
        plot_curves(tmp_path / "later.png", history)
    for name in ("early.png", "later.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_metrics_csv_leaves_missing_validation_empty(tmp_path):
    history = [{"epoch": 0, "train_loss": 1.0}, {"epoch": 1, "train_loss": 0.5, "val_dsc": 0.25}]
    write_csv(history, tmp_path / "metrics.csv", METRICS_COLUMNS)
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0]["val_dsc"] == "" and math.isclose(float(rows[1]["val_dsc"]), 0.25)


def test_mean_scores_of_rows_and_of_none():
    import math

    from training.reporting import mean_scores

    rows = [{"dsc": "0.5", "nsd": 1.0}, {"dsc": 1.0, "nsd": "0.0"}]  # a CSV's text or numbers
    assert mean_scores(rows) == {"dsc": 0.75, "nsd": 0.5}
    assert all(math.isnan(v) for v in mean_scores([]).values())
