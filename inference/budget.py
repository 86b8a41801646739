"""Memory budgets: the GPU's (what the challenge allows, what CUDA takes, what we ask
for) and the host's (the container's limit, which decides whether the next case may be
read while this one is predicted).

A module of its own, with no imports, so the command line can show the default without
importing the predictor before the first case's read has started.
"""

from __future__ import annotations

# Whole-GPU memory the organisers allow is 4 GB; the CUDA context and cuDNN take about
# 650 MiB of it before any tensor exists, so the allocator gets the rest less a margin.
# The default is a small budget because the organisers score memory too, and a larger one
# bought no speed (benchmark/results/container/gpu_h100_2026-11-27.md).
DEFAULT_GPU_MEMORY_MB = 1200
CUDA_CONTEXT_MB = 700


def memory_fraction(gpu_memory_mb: float, device: str) -> float:
    """The share of ``device``'s memory torch's allocator may hold under the budget."""
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2**20
    allocator_mb = max(gpu_memory_mb - CUDA_CONTEXT_MB, 256)
    return float(min(allocator_mb / total, 1.0))


# Resident memory per byte of input voxels (benchmark.container.host_memory, CPU, onnxruntime): a
# case's peak is its read, the voxels and the mapped compressed file (about 1.5x the voxel
# bytes above the baseline). Once the read-ahead is decided the current case is read; it
# then grows by its mask and upsampling slabs while its input is released: under 1x.
GROWTH_PER_VOXEL_BYTE = 1.0
READ_PER_VOXEL_BYTE = 1.6
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_limit_mb() -> float | None:
    """The memory limit of this process's container (cgroup v2 or v1), MB; None if unlimited."""
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # v1 writes a huge number for no limit
            return int(text) / 2**20
        return None
    return None


def host_memory() -> tuple[int, str]:
    """Bytes of memory this process may use, and what sets them: the container's limit,
    or the machine's memory where there is none."""
    import os

    limit = host_memory_limit_mb()
    if limit is not None:
        return int(limit * 2**20), "the container's memory limit"
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the machine's memory"


def more_than_memory(need: int) -> str | None:
    """``None`` when ``need`` bytes fit in ``host_memory``; else the words that say not."""
    available, what = host_memory()
    if need <= available:
        return None
    return f"{need / 2**30:.1f} GiB, more than {what} ({available / 2**30:.1f} GiB)"


def resident_mb() -> float:
    """This process's resident memory now, MB (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def may_read_ahead(limit_mb: float | None, current_bytes: int, next_bytes: int | None) -> bool:
    """Whether the next case can be read while the current one is predicted, within the
    limit: what this process holds now, the current case's growth, the next one's read."""
    if limit_mb is None:
        return True
    if next_bytes is None:
        return False
    need = resident_mb() + (GROWTH_PER_VOXEL_BYTE * current_bytes
                            + READ_PER_VOXEL_BYTE * next_bytes) / 2**20
    return need <= 0.85 * limit_mb
