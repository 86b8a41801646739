"""The demo command end to end (its --quick form): phantoms to scored held-out predictions."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_quick_demo_runs_every_stage(tmp_path):
    work, weights = tmp_path / "work", tmp_path / "weights"
    done = subprocess.run([sys.executable, "-m", "training", "demo", "--quick", "-o", str(work),
                           "--weights", str(weights), "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "summary.json").read_text())
    assert summary["test"]["n_cases"] == 3
    assert "<- chosen" in summary["thresholds_table"]
    for name in ("plans.json", "model.pt", "model.onnx", "SHA256SUMS"):
        assert (weights / name).is_file()
    assert len(list((work / "test_predictions").glob("*.nii.gz"))) == 3


def test_a_phantom_set_of_another_size_is_written_again(tmp_path):
    from training.demo import has_cases

    assert not has_cases(tmp_path, 16)  # nothing there yet
    (tmp_path / "dataset.json").write_text(json.dumps({"training": [{"id": "a"}] * 16}))
    assert has_cases(tmp_path, 16)
    assert not has_cases(tmp_path, 64)  # an older, smaller held-out set: make the 64
