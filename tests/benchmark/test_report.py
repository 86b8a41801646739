"""CSV, Markdown and plot writers."""

import csv
import json

import pytest

from benchmark import machine, paper, report
from inference.folders import write_text_atomically
from training.reporting import write_csv

ROWS = [{"case": "a", "slices": 55, "time_s": 1.23456, "max_mb": 300.0, "area_mb_s": 123.4},
        {"case": "b|c", "slices": 100, "time_s": 2.5, "max_mb": None, "area_mb_s": 250.0}]


def test_csv_round_trips_with_blank_missing_values(tmp_path):
    path = write_csv(ROWS, tmp_path / "sub" / "t.csv",
                            ["case", "slices", "time_s", "max_mb", "extra"])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["a", "b|c"]
    assert float(rows[0]["time_s"]) == 1.23456  # full precision in the CSV
    assert rows[1]["max_mb"] == "" and rows[0]["extra"] == ""
    assert not list(tmp_path.glob("sub/.*"))  # no temporary left behind


STAMP = {"date": "2000-01-02", "time_utc": "2000-01-02T03:04:05Z",
         "cpu": "AMD EPYC 7B13 64-Core Processor", "cores": 2, "memory_gb": 8.0, "gpus": [],
         "os": "Linux 6.1", "python": "3.11.2", "load_average": [0.5, 0.25, 0.0],
         "revision": "0123abc"}


def test_a_result_is_named_and_headed_from_the_machine_stamp(tmp_path):
    base = report.results_base(tmp_path, "engines", STAMP, "cpu", "tiny-overlap0.5")
    assert base == tmp_path / "engines_cpu-amd-epyc-7b13-64-core-2c_2000-01-02_tiny-overlap0.5"
    text = report.header("Title", STAMP, "benchmark.x", ["-i", str(tmp_path / "a b"), "--n", "3"])
    assert text.splitlines() == ["# Title", "", f"- machine: {machine.describe(STAMP)}",
                                 "- command: `python -m benchmark.x -i '.../a b' --n 3`"]
    assert "2000-01-02T03:04:05Z" in text and "commit 0123abc" in text
    report.write_results(base, text + "body\n", {"rows": [1]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{base.name}.json", f"{base.name}.md"]
    assert (tmp_path / f"{base.name}.md").read_text() == text + "body\n"
    assert json.loads((tmp_path / f"{base.name}.json").read_text()) == {"rows": [1]}


def test_a_write_that_fails_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_text_atomically(tmp_path / "page.md", None)
    assert list(tmp_path.iterdir()) == []


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
    with pytest.raises(ValueError):
        report.linear_fit([100, 100], [1.0, 2.0])
    assert report.linear_fit_line([{"slices": 100, "time_s": 1.0}]) == ""
