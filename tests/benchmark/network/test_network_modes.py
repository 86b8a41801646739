"""benchmark.network.network_modes on the CPU: every mode is timed and agrees with fp32."""

import json

from benchmark.network import network_modes


def test_cpu_modes_are_timed_and_agree(tmp_path):
    assert network_modes.main(["--preset", "tiny", "--device", "cpu", "--batches", "2",
                               "--rounds", "1", "--iterations", "1", "-o", str(tmp_path)]) == 0
    (result,) = tmp_path.glob("network_modes_*_tiny.json")
    rows = json.loads(result.read_text())["rows"]
    assert {r["mode"] for r in rows} == {"grouped/fp32", "branches/fp32"}
    assert all(r["ms_per_tile"] > 0 and r["max_abs_diff"] < 1e-4 for r in rows)
    assert (tmp_path / result.name.replace(".json", ".md")).read_text().count("| 2 |") == 2
