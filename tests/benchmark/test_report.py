"""CSV, Markdown and plot writers."""

import csv

from benchmark import paper, report


ROWS = [{"case": "a", "slices": 55, "time_s": 1.23456, "max_mb": 300.0, "area_mb_s": 123.4},
        {"case": "b|c", "slices": 100, "time_s": 2.5, "max_mb": None, "area_mb_s": 250.0}]


def test_csv_round_trips_with_blank_missing_values(tmp_path):
    path = report.write_csv(ROWS, tmp_path / "sub" / "t.csv",
                            ["case", "slices", "time_s", "max_mb", "extra"])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b|c"]
    assert float(rows[0]["time_s"]) == 1.23456  # full precision in the CSV
    assert rows[1]["max_mb"] == "" and rows[0]["extra"] == ""
    assert not list(tmp_path.glob("sub/.*.tmp"))


def test_markdown_table_formats_aligns_and_escapes():
    text = report.markdown_table(ROWS, [("case", "case"), ("time_s", "time (s)", ".2f"),
                                        ("max_mb", "max (MB)", ".0f")])
    lines = text.strip().splitlines()
    assert lines[0] == "| case | time (s) | max (MB) |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a | 1.23 | 300 |"
    assert lines[3] == "| b\\|c | 2.50 |  |"


def test_paper_table_keeps_only_known_areas():
    rows = paper.table()
    assert [r["slices"] for r in rows] == list(paper.SLICES)
    assert rows[0]["area_mb_s"] == 14158 and rows[-1]["area_mb_s"] == 95581
    assert all(r["area_mb_s"] is None for r in rows[1:-1])
    assert "| 554 | 72.54 | 1570 | 95581 |" in report.paper_markdown()


def test_plot_writes_a_png(tmp_path):
    path = report.plot_table4(ROWS, tmp_path / "p.png", "title", "CPU RSS")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_fit_recovers_fixed_part_and_slope():
    slices = [55, 100, 150, 215, 334, 448, 499, 554]
    times = [0.8 + 0.045 * z for z in slices]
    fit = report.linear_fit(slices, times)
    assert abs(fit["fixed_s"] - 0.8) < 1e-9
    assert abs(fit["per_100_slices_s"] - 4.5) < 1e-9
    assert abs(fit["r2"] - 1) < 1e-12 and fit["max_residual_s"] < 1e-9 and fit["cases"] == 8


def test_linear_fit_reports_misfit_and_refuses_one_size():
    fit = report.linear_fit([100, 200, 300], [2.0, 3.0, 5.0])
    assert fit["r2"] < 1 and abs(fit["max_residual_s"] - 1 / 3) < 1e-9
    line = report.linear_fit_line([{"slices": 100, "time_s": 2.0}, {"slices": 200, "time_s": 3.0},
                                   {"slices": 300, "time_s": 5.0}])
    assert line.startswith("Linear fit over 3 cases: time = 0.33 s + 1.50 s per 100 slices")
    import pytest

    with pytest.raises(ValueError):
        report.linear_fit([100, 100], [1.0, 2.0])
    assert report.linear_fit_line([{"slices": 100, "time_s": 1.0}]) == ""
