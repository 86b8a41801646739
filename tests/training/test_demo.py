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
