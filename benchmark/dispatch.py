"""What torch sends to a device, and when the device is done with it: the operation counter
and the drain that the network and training benchmarks time with."""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OperationCounter(TorchDispatchMode):
    """Counts the operations torch dispatches to a backend, views left out.

    They are counted as the backend receives them (a convolution is one call to cuDNN; an
    elementwise operation one kernel), so on a GPU each is at least one kernel launch.
    """

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def synchronize(device) -> None:
    """Wait until ``device`` has finished what was sent to it (a no-op on the CPU, which
    computes as it is called), so a clock read after it includes that work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
