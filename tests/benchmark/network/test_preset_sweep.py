"""benchmark.network.preset_sweep: each candidate timed, the page named from the machine stamp."""

import pytest

from benchmark import machine
from benchmark.network import preset_sweep

pytest.importorskip("onnxruntime")


def test_a_candidate_is_measured_into_a_page_named_like_every_result(tmp_path):
    assert preset_sweep.main(["--only", "fast, base 8 (cap 128)", "--rounds", "1",
                              "-o", str(tmp_path)]) == 0
    (page,) = tmp_path.iterdir()
    assert page.name.startswith("preset_sweep_cpu-") and page.suffix == ".md"
    assert page.stem.endswith(f"_{machine.stamp()['date']}")
    text = page.read_text()
    assert "- command: `python -m benchmark.network.preset_sweep --only" in text
    assert "| fast, base 8 (cap 128) | 4.22 |" in text
