"""Linear resampling that works on numpy arrays and torch tensors alike.

Separable linear interpolation with the convention of
``torch.nn.functional.interpolate(mode="trilinear", align_corners=False)``, so the
onnxruntime path (numpy, no torch) and the torch path agree. ``region`` limits the work
to a box of the output.
"""

from __future__ import annotations

import numpy as np

from inference.arrays import array_ops


def source_index(n_in: int, n_out: int, start: int = 0, stop: int | None = None):
    """Lower/upper source indices and upper weights for output positions start..stop."""
    stop = n_out if stop is None else stop
    scale = n_in / n_out
    src = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _interp_axis(a, axis: int, n_out: int, start: int = 0, stop: int | None = None):
    n_in = a.shape[axis]
    if n_in == n_out and start == 0 and stop in (None, n_out):
        return a
    lo, hi, w = source_index(n_in, n_out, start, stop)
    shape = [1] * a.ndim
    shape[axis] = len(w)
    ops = array_ops(a)
    low = ops.take(a, lo, axis)
    return low + (ops.take(a, hi, axis) - low) * ops.from_host_like(w.reshape(shape), a)


def resize_plane(part, plane):
    """Linear in-plane resize of a (s, y, x) slab; z untouched: torch's bilinear interpolation
    on a tensor, ``resize_linear`` on a numpy array."""
    ops = array_ops(part)
    if ops.is_numpy:
        return resize_linear(part, (part.shape[0], *plane))
    return ops.interpolate_plane(part, plane)


def resize_linear(a, shape, region=None):
    """``a`` (z, y, x) resized to ``shape`` by trilinear interpolation.

    ``region``, a (start, stop) pair per axis, computes only that box of the output:
    the restore step uses it to upsample only around kept lesions, slab by slab.
    The axis that shrinks most goes first, which keeps intermediate arrays small.
    """
    a = array_ops(a).floating(a)
    region = region or tuple((0, n) for n in shape)
    for axis in sorted(range(3), key=lambda ax: (region[ax][1] - region[ax][0]) / a.shape[ax]):
        a = _interp_axis(a, axis, shape[axis], *region[axis])
    return a
