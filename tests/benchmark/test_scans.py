"""benchmark.scans: one row per scan with every variant timed, written as Markdown and JSON."""

import json

from benchmark.scans import main


def test_each_scan_gets_its_timings(tiny_case_dir, tiny_weights, tmp_path):
    assert main(["-i", str(tiny_case_dir), "--weights", str(tiny_weights), "--repeats", "1",
                 "-o", str(tmp_path)]) == 0
    (table,) = tmp_path.glob("scans_*.json")
    rows = json.loads(table.read_text())["rows"]
    assert len(rows) == len(list(tiny_case_dir.glob("*_0000.nii.gz")))
    for row in rows:
        assert all(row[key] > 0 for key in ("mask", "table", "statistics", "preview"))
    assert (tmp_path / table.name.replace(".json", ".md")).exists()
