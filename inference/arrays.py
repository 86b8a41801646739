"""The array operations inference needs, for numpy arrays and torch tensors alike.

The onnxruntime path hands numpy arrays around and must never import torch; the torch
path hands tensors on any device. Preprocessing, resampling, geometry and the sliding
window call ``array_ops(a)`` for the operations of ``a``'s kind instead of checking types
themselves; ``TorchOps`` imports torch only when it is made, which only a tensor does.
"""

from __future__ import annotations

import numpy as np


def is_numpy(a) -> bool:
    return isinstance(a, np.ndarray)


def array_ops(like) -> NumpyOps | TorchOps:
    """The operations for arrays of ``like``'s kind (numpy, or torch on its device)."""
    return NumpyOps(like) if is_numpy(like) else TorchOps(like)


class NumpyOps:
    """numpy: host memory, float32 work arrays, in-place where it saves a copy."""

    is_numpy = True

    def __init__(self, like=None):
        pass

    @staticmethod
    def zeros(shape):
        return np.zeros(shape, np.float32)

    @staticmethod
    def from_host(a):
        """A host (numpy) array as this kind."""
        return a

    @staticmethod
    def from_host_like(a, like):
        """A host float array as factors for ``like``: numpy keeps ``a``'s own type."""
        return a

    @staticmethod
    def to_host(a) -> np.ndarray:
        return a

    @staticmethod
    def float32(a):
        return np.asarray(a, np.float32)

    @staticmethod
    def floating(a):
        """``a`` if it holds floats, else as float32."""
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)

    @staticmethod
    def concat(parts):
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    @staticmethod
    def take(a, indices: np.ndarray, axis: int):
        return np.take(a, indices, axis=axis)

    @staticmethod
    def clip_(a, low, high):
        return np.clip(a, low, high, out=a)

    @staticmethod
    def divide_(a, b):
        a /= b
        return a

    @staticmethod
    def permute_flip(a, perm, flips):
        """Axes permuted by ``perm``, then the flagged axes reversed (a view)."""
        out = np.transpose(a, perm)
        for axis, flip in enumerate(flips):
            if flip:
                out = np.flip(out, axis)
        return out

    @staticmethod
    def nonzero_along(mask, axis: int) -> np.ndarray:
        """Indices along ``axis`` of the planes of ``mask`` (3D) that hold a true voxel."""
        return np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))

    @staticmethod
    def box_sum(a, axis: int, r: int):
        """Sums over a window of 2r+1 voxels along ``axis``, clipped at the ends.

        Shifted in-place sums: the windows are small (3-5 voxels) and no cumulative sum
        of a long float32 axis loses precision.
        """
        n = a.shape[axis]
        total = a.copy()
        for k in range(1, min(r, n - 1) + 1):
            head = (slice(None),) * axis + (slice(k, None),)
            tail = (slice(None),) * axis + (slice(None, -k),)
            total[head] += a[tail]
            total[tail] += a[head]
        return total

    @staticmethod
    def pad_inplane(volume, pad_y, pad_x, value):
        return np.pad(volume, ((0, 0), (0, pad_y), (0, pad_x)), constant_values=value)

    @staticmethod
    def release_cached_memory() -> None:
        pass


class TorchOps:
    """torch on ``like``'s device: the same operations, without leaving the device."""

    is_numpy = False

    def __init__(self, like):
        import torch
        import torch.nn.functional as F

        self.torch, self.F, self.device = torch, F, like.device

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def from_host(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def from_host_like(self, a, like):
        """On ``like``'s device in its type, so that half-precision volumes stay half."""
        return self.torch.as_tensor(a, device=self.device, dtype=like.dtype)

    @staticmethod
    def to_host(a) -> np.ndarray:
        return a.cpu().numpy()

    @staticmethod
    def float32(a):
        return a.float()

    @staticmethod
    def floating(a):
        return a

    def concat(self, parts):
        return self.torch.cat(parts)

    def take(self, a, indices: np.ndarray, axis: int):
        return a.index_select(axis, self.torch.as_tensor(indices, device=self.device))

    @staticmethod
    def clip_(a, low, high):
        return a.clamp_(low, high)

    @staticmethod
    def divide_(a, b):
        return a.div_(b)

    @staticmethod
    def permute_flip(a, perm, flips):
        out = a.permute(*perm)
        dims = [i for i, f in enumerate(flips) if f]
        return out.flip(dims) if dims else out

    @staticmethod
    def nonzero_along(mask, axis: int) -> np.ndarray:
        others = tuple(a for a in range(3) if a != axis)
        return mask.any(dim=others[1]).any(dim=others[0]).nonzero().flatten().cpu().numpy()

    def box_sum(self, a, axis: int, r: int):
        """Running sums: the same cost whatever the window's width."""
        n = a.shape[axis]
        pad = [0] * 6
        pad[2 * (2 - axis)], pad[2 * (2 - axis) + 1] = r + 1, r
        c = self.F.pad(a, pad).cumsum(dim=axis)
        return c.narrow(axis, 2 * r + 1, n) - c.narrow(axis, 0, n)

    def interpolate_plane(self, part, plane):
        """Bilinear in-plane resize of a (s, y, x) slab in one kernel (``resize_linear``'s
        convention)."""
        return self.F.interpolate(part[:, None], size=tuple(plane), mode="bilinear",
                                  align_corners=False)[:, 0]

    def pad_inplane(self, volume, pad_y, pad_x, value):
        return self.F.pad(volume, (0, pad_x, 0, pad_y), value=value)

    def release_cached_memory(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
