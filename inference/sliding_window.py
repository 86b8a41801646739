"""2.5D sliding-window inference with Gaussian blending, batching and a memory budget.

Each output slice z is predicted from tiles of the ``context`` slices centred on it
(edges replicated). In-plane tiles overlap by ``1 - step``; their lesion probabilities
are blended with a Gaussian importance map. Tiles that do not touch the body on their
slice are skipped (their voxels get probability 0). Slices are processed in slabs, so
the accumulators never hold the whole volume, and tiles are batched across slices.

The engine runs on numpy arrays (onnxruntime backend, no torch) or torch tensors on
any device (torch backend): the few array operations it needs are dispatched by type.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def tile_starts(size: int, patch: int, step: float) -> list[int]:
    """Evenly spaced tile starts covering ``size`` with at most ``step * patch`` apart."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    return [round(i * (size - patch) / (n - 1)) for i in range(n)]


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1 / 8) -> np.ndarray:
    """Gaussian weights peaking at the tile centre, no zeros (nnU-Net's blending map)."""
    axes = []
    for n in patch:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (x / (n * sigma_scale)) ** 2))
    g = np.outer(axes[0], axes[1])
    g /= g.max()
    g = np.maximum(g, g[g > 0].min())
    return g.astype(np.float32)


@dataclass(frozen=True)
class Tile:
    z: int
    y: int
    x: int


def plan_tiles(shape, patch, step, body=None) -> list[Tile]:
    """Tiles for a (z, y, x) volume; with a body mask, tiles missing the body are dropped."""
    ys = tile_starts(shape[1], patch[0], step)
    xs = tile_starts(shape[2], patch[1], step)
    tiles = []
    for z in range(shape[0]):
        if body is None:
            tiles.extend(Tile(z, y, x) for y in ys for x in xs)
            continue
        rows = np.flatnonzero(body[z].any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(body[z].any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1], cols[0], cols[-1]
        tiles.extend(Tile(z, y, x) for y in ys for x in xs
                     if y <= y1 and y + patch[0] > y0 and x <= x1 and x + patch[1] > x0)
    return tiles


class _Numpy:
    def __init__(self, like):
        pass

    zeros = staticmethod(lambda shape: np.zeros(shape, np.float32))
    stack = staticmethod(np.stack)
    as_array = staticmethod(lambda a: a)

    @staticmethod
    def pad_inplane(volume, pad_y, pad_x, value):
        return np.pad(volume, ((0, 0), (0, pad_y), (0, pad_x)), constant_values=value)


class _Torch:
    def __init__(self, like):
        import torch

        self.torch, self.device = torch, like.device

    def zeros(self, shape):
        return self.torch.zeros(shape, dtype=self.torch.float32, device=self.device)

    def stack(self, items):
        return self.torch.stack(items)

    def as_array(self, a):
        return self.torch.as_tensor(a, device=self.device)

    def pad_inplane(self, volume, pad_y, pad_x, value):
        import torch.nn.functional as F

        return F.pad(volume, (0, pad_x, 0, pad_y), value=value)


def _ops(volume):
    return _Numpy(volume) if isinstance(volume, np.ndarray) else _Torch(volume)


def sliding_window(
    volume,
    predict: Callable,
    patch: Sequence[int] = (192, 192),
    step: float = 0.5,
    context: int = 3,
    batch_size: int = 8,
    body=None,
    slab_slices: int = 32,
    pad_value: float = 0.0,
    oom_errors: tuple = (),
    progress: Callable[[int], None] | None = None,
    to_host: bool = False,
):
    """Lesion probability for every voxel of ``volume`` (z, y, x), same shape.

    ``predict(tiles)`` maps a (b, context, py, px) batch to (b, py, px) probabilities.
    ``body`` is a boolean numpy mask of ``volume``'s shape: tiles that miss it on their
    slice are skipped. On one of ``oom_errors`` the batch is halved and retried.
    The result has ``volume``'s type, or is a numpy array filled slab by slab when
    ``to_host`` is set, so the device holds only one slab's accumulators.
    """
    ops = _ops(volume)
    nz, ny, nx = volume.shape
    py, px = patch
    pad_y, pad_x = max(py - ny, 0), max(px - nx, 0)
    if pad_y or pad_x:
        volume = ops.pad_inplane(volume, pad_y, pad_x, pad_value)
        if body is not None:
            body = np.pad(body, ((0, 0), (0, pad_y), (0, pad_x)))
    shape = volume.shape
    weight = ops.as_array(gaussian_importance(patch))
    half = context // 2
    tiles = plan_tiles(shape, patch, step, body)
    log.debug("%d tiles of %dx%d for a %s volume", len(tiles), py, px, tuple(shape))
    out = np.zeros(shape, np.float32) if to_host else ops.zeros(shape)
    by_slab: dict[int, list[Tile]] = {}
    for t in tiles:
        by_slab.setdefault(t.z // slab_slices, []).append(t)
    for slab, slab_tiles in sorted(by_slab.items()):
        z0 = slab * slab_slices
        z1 = min(z0 + slab_slices, shape[0])
        acc = ops.zeros((z1 - z0, shape[1], shape[2]))
        norm = ops.zeros((z1 - z0, shape[1], shape[2]))
        start = 0
        while start < len(slab_tiles):
            chunk = slab_tiles[start:start + batch_size]
            batch = ops.stack([_tile_input(volume, t, patch, half) for t in chunk])
            try:
                probs = predict(batch)
            except oom_errors:
                if batch_size == 1:
                    raise
                batch_size = max(batch_size // 2, 1)
                log.warning("out of memory; retrying with %d tiles per batch", batch_size)
                _release_cached_memory(volume)
                continue
            for t, p in zip(chunk, probs):
                region = (t.z - z0, slice(t.y, t.y + py), slice(t.x, t.x + px))
                acc[region] += p * weight
                norm[region] += weight
            start += len(chunk)
            if progress is not None:
                progress(len(chunk))
        covered = norm > 0
        acc[covered] /= norm[covered]
        out[z0:z1] = acc if not to_host or isinstance(acc, np.ndarray) else acc.cpu().numpy()
    return out[:, :ny, :nx]


def _tile_input(volume, t: Tile, patch, half: int):
    """The context slices centred on ``t.z`` (edges replicated), cut to the tile."""
    nz = volume.shape[0]
    region = volume[max(t.z - half, 0):t.z + half + 1, t.y:t.y + patch[0], t.x:t.x + patch[1]]
    lo, hi = half - min(t.z, half), half - min(nz - 1 - t.z, half)
    if lo or hi:
        parts = [region[:1]] * lo + [region] + [region[-1:]] * hi
        region = np.concatenate(parts) if isinstance(region, np.ndarray) else \
            _ops(region).torch.cat(parts)
    return region


def _release_cached_memory(volume) -> None:
    if not isinstance(volume, np.ndarray) and volume.is_cuda:
        import torch

        torch.cuda.empty_cache()
