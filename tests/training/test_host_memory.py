"""The training process keeps freed host memory instead of faulting it back in each step."""

import json
import platform
import subprocess
import sys

import pytest

from training.host_memory import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 20 times: a 40 MB block (above glibc's largest adaptive mmap threshold), written, freed;
# the page faults that took, counted after the first
CYCLES = """
import json, resource, sys
import numpy as np
from training.host_memory import keep_freed_memory
done = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = np.ones(10 << 20, dtype=np.float32); del block
before = faults()
for _ in range(20):
    block = np.ones(10 << 20, dtype=np.float32); del block
print(json.dumps({"done": done, "faults": faults() - before}))
"""


def _cycles(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _cycles("default"), _cycles("keep")
    assert kept["done"] is True
    # by default each cycle maps its 40 MB afresh: thousands of faults (fewer with huge pages)
    assert default["faults"] >= 20 * 10
    assert kept["faults"] * 20 < default["faults"]


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert keep_freed_memory() is False
