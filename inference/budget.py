"""Memory budgets: the GPU's (what the challenge allows, what CUDA takes, what we ask
for) and the host's (the container's limit, which decides whether the next case may be
read while this one is predicted).

A module of its own, with no imports, so the command line can show the default without
importing the predictor before the first case's read has started.
"""

from __future__ import annotations

# Whole-GPU memory the organisers allow is 4 GB; the CUDA context and cuDNN take a share
# of it before any tensor exists (CUDA_CONTEXT_MB, with a margin), so the allocator gets
# the rest. The default is a small budget because the organisers score memory too, and a
# larger one bought no speed (benchmark/results/README.md).
DEFAULT_GPU_MEMORY_MB = 1200
CUDA_CONTEXT_MB = 700
MIN_ALLOCATOR_MB = 256

# How the allocator's share of the budget is spent. torch's per-process limit
# (``set_per_process_memory_fraction``) counts everything the allocator reserves: its
# cache, and the private pools of CUDA graphs too. A graph keeps the activations of the
# batch it captured in its own pool for as long as it lives, so the graphs are dropped
# when a case's network stage ends: the pool then lives exactly as long as the eager
# activations it replaces, and the network share covers either. The stages before and
# after the network (preprocessing, the next case's preprocessing) get the whole allocator.
NETWORK_SHARE = 0.6  # one batch's activations (or the graph pool holding them)
BLEND_SHARE = 1 / 8  # a slab's two blending accumulators; as much again for the probability
MAX_BATCH = 64
# A graph's pool against the eager forward's peak: capture allocates the same tensors,
# rounded up to the pool's segments.
GRAPH_POOL_MARGIN = 1.25


def allocator_bytes(gpu_memory_mb: float) -> float:
    """What torch's allocator may reserve under a whole-GPU budget: the budget less the
    CUDA context, never under ``MIN_ALLOCATOR_MB``."""
    return max(gpu_memory_mb - CUDA_CONTEXT_MB, MIN_ALLOCATOR_MB) * 2**20


def memory_fraction(gpu_memory_mb: float, device: str) -> float:
    """The share of ``device``'s memory torch's allocator may hold under the budget."""
    import torch

    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    return float(min(allocator_bytes(gpu_memory_mb) / total, 1.0))


def tiles_per_batch(allocator: float, per_tile_bytes: float) -> int:
    """Tiles per network batch: their activations within the network share."""
    return int(min(max(NETWORK_SHARE * allocator // per_tile_bytes, 1), MAX_BATCH))


def blending(allocator: float, shape) -> tuple[int, bool]:
    """(slab depth, whether blended slabs go to host memory) for a (z, y, x) volume.

    A slab's two accumulators take at most the blending share; the whole
    network-resolution probability stays on the device only if it fits in another.
    """
    plane_bytes = 4 * shape[1] * max(shape[2], 1)
    budget = allocator * BLEND_SHARE
    slab = int(min(max(budget // (2 * plane_bytes), 1), 64))
    return slab, plane_bytes * shape[0] > budget


def graph_fits(limit_bytes: float, reserved_bytes: float, forward_peak_bytes: float) -> bool:
    """Whether a CUDA graph may be captured: its private pool (about one eager forward's
    peak, with a margin) beside what the allocator holds now stays under its limit.
    Where it does not, that batch shape runs eagerly, which needs only the cache."""
    return reserved_bytes + GRAPH_POOL_MARGIN * forward_peak_bytes <= limit_bytes


# Resident memory per byte of input voxels (benchmark.container.host_memory, CPU, onnxruntime): a
# case's peak is its read, the voxels and the mapped compressed file (more than the voxel
# bytes alone above the baseline). Once the read-ahead is decided the current case is read; it
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
