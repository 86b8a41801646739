"""Host memory a training process keeps and reuses instead of handing back each step.

A training step allocates and frees the same few-megabyte tensors every time. glibc's
malloc maps each block above its mmap threshold afresh and gives free memory at the heap's
top back to the kernel once it passes its trim threshold; both thresholds adapt to what
was freed, so how often that happens depends on the order of a run's allocations. Every
page taken back and asked for again costs a page fault and its zeroing: thousands per step
of the demo's network on the CPU, varying by a factor of two between runs of the same code.
``keep_freed_memory`` fixes both thresholds high, so the step is served from memory the
process already holds; the peak the process needs is unchanged, it is only not returned.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap: a step's largest tensors are well below it
# (the `paper` network's first stage at batch 4 and 192 px is 19 MB).
MMAP_THRESHOLD = 64 << 20
# Free memory at the heap's top kept before any is returned. Setting either threshold
# stops glibc adapting both, so both are set.
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for a training process; whether it was done
    (False where the C library is not glibc, which keeps its own behaviour)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    except (OSError, AttributeError):
        return False
    log.debug("malloc keeps freed memory: %s", done)
    return done
