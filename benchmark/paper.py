"""The paper's efficiency numbers (Table 4), the baseline every benchmark plot draws.

Source: "Pan-cancer segmentation in CT scans based on dynamic convolution with nnSAM",
MICCAI FLARE 2024 Task 1, Table 4 (one NVIDIA RTX 2080Ti, 8 GB), as quoted in the
project's design notes. Cases are 512x512xZ. Only the first and the last GPU
memory-time areas are known to us, so only those two are drawn; the rest are None.
"""

from __future__ import annotations

SOURCE = ("Pan-cancer segmentation in CT scans based on dynamic convolution with nnSAM "
          "(MICCAI FLARE 2024 Task 1), Table 4, RTX 2080Ti 8 GB")
GPU = "NVIDIA RTX 2080Ti (8 GB)"
IN_PLANE = (512, 512)
SLICES = (55, 100, 150, 215, 334, 448, 499, 554)
RUNNING_TIME_S = (15.64, 20.45, 28.79, 38.45, 51.84, 57.79, 61.51, 72.54)
MAX_GPU_MB = (1570,) * len(SLICES)
# "14158 ... 95581": the areas of the smallest and the largest case; the others unknown.
AREA_MB_S = (14158, None, None, None, None, None, None, 95581)
BUDGET_S = 45.0  # the challenge's running-time limit per case
BUDGET_GPU_MB = 4096  # and its GPU memory limit


def table() -> list[dict]:
    """One row per case: slices, running time, max GPU memory and area (None if unknown)."""
    return [{"slices": z, "time_s": t, "max_gpu_mb": m, "area_mb_s": a}
            for z, t, m, a in zip(SLICES, RUNNING_TIME_S, MAX_GPU_MB, AREA_MB_S)]
