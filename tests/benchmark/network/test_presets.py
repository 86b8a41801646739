"""python -m benchmark.network.presets: the preset table."""

import subprocess
import sys
from pathlib import Path

import pytest

from benchmark.network.presets import preset_table
from inference.model import PRESETS

ROOT = Path(__file__).resolve().parents[3]


def test_preset_table_cli():
    out = subprocess.run([sys.executable, "-m", "benchmark.network.presets"], cwd=ROOT,
                         text=True, capture_output=True, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == set(PRESETS)
    paper = rows["paper"]
    assert paper[-1] == "3x192x192" and paper[1] == "vit"
    assert 70 < float(paper[2]) < 78 and float(paper[3]) == 0  # trainable, frozen (M)
    assert 0 < float(paper[5]) < float(paper[4])  # the SAM branch's share of the GFLOPs
    assert float(paper[6]) == pytest.approx(float(paper[4]) - float(paper[5]), abs=0.02)
    assert float(paper[8]) > 0  # CPU ms per tile


def test_the_table_counts_a_frozen_encoder_apart():
    rows = {(r["preset"], r["sam"]): r for r in preset_table(
        ("preset", "sam_vit_b", "none"), timing=False, presets=("tiny",))}
    vit_b = rows[("tiny", "sam_vit_b")]
    assert 89 < vit_b["frozen_m"] < 90.5 and vit_b["trainable_m"] < 1  # ViT-B: 89.7M
    assert vit_b["sam_gflops"] > 900  # 1024 px
    assert rows[("tiny", "none")]["sam_gflops"] == 0
