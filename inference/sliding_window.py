"""2.5D sliding-window inference with Gaussian blending, batching and a memory budget.

Each output slice z is predicted from tiles of the ``context`` slices centred on it
(edges replicated). In-plane tiles lie ``tile_step`` patches apart (the plan's
``tile_step``; they overlap by ``1 - tile_step``); their lesion probabilities
are blended with a Gaussian importance map. Tiles that do not touch the body on their
slice are skipped (their voxels get probability 0). Slices are processed in slabs, so
the accumulators never hold the whole volume, and tiles are batched across slices.

The engine runs on numpy arrays (onnxruntime backend, no torch) or torch tensors on
any device (torch backend), with ``inference.arrays``' operations and two of its own.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from inference.arrays import NumpyOps, TorchOps, is_numpy

log = logging.getLogger(__name__)


def tile_starts(size: int, patch: int, tile_step: float) -> list[int]:
    """Evenly spaced tile starts covering ``size``, at most ``tile_step * patch`` apart."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * tile_step)) + 1
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


def plan_tiles(shape, patch, tile_step, body=None) -> list[Tile]:
    """Tiles for a (z, y, x) volume; with a body mask, tiles missing the body are dropped."""
    ys = tile_starts(shape[1], patch[0], tile_step)
    xs = tile_starts(shape[2], patch[1], tile_step)
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


class _Numpy(NumpyOps):
    """numpy's operations and the window's own: tiles gathered into a reused buffer."""

    def __init__(self, like):
        self.buffer = None

    def gather(self, volume, chunk, patch, half):
        """The batch's tiles copied once into a reused buffer (no per-batch allocation)."""
        n, depth = len(chunk), 2 * half + 1
        if self.buffer is None or self.buffer.shape[0] < n:
            self.buffer = np.empty((n, depth, *patch), np.float32)
        batch = self.buffer[:n]
        last = volume.shape[0] - 1
        for i, t in enumerate(chunk):
            rows, cols = slice(t.y, t.y + patch[0]), slice(t.x, t.x + patch[1])
            for c in range(depth):
                batch[i, c] = volume[min(max(t.z - half + c, 0), last), rows, cols]
        return batch

    @staticmethod
    def normalise(acc, planes, layout_ids):
        # Slice by slice, in place: no slab-sized temporary.
        for i, k in enumerate(layout_ids):
            np.divide(acc[i], planes[k], out=acc[i])


class _Torch(TorchOps):
    """torch's operations and the window's own, on the volume's device."""

    def gather(self, volume, chunk, patch, half):
        return self.torch.stack([self.tile_input(volume, t, patch, half) for t in chunk])

    def tile_input(self, volume, t: Tile, patch, half: int):
        """The context slices centred on ``t.z`` (edges replicated), cut to the tile."""
        nz = volume.shape[0]
        region = volume[max(t.z - half, 0):t.z + half + 1, t.y:t.y + patch[0],
                        t.x:t.x + patch[1]]
        lo, hi = half - min(t.z, half), half - min(nz - 1 - t.z, half)
        if lo or hi:
            region = self.concat([region[:1]] * lo + [region] + [region[-1:]] * hi)
        return region

    def normalise(self, acc, planes, layout_ids):
        # Two kernels per slab (gather the slices' maps, divide) however many layouts.
        if len(set(layout_ids)) == 1:
            acc.div_(planes[layout_ids[0]])
        else:
            index = self.torch.as_tensor(layout_ids, device=self.device)
            acc.div_(planes.index_select(0, index))


def _ops(volume):
    return _Numpy(volume) if is_numpy(volume) else _Torch(volume)


def weight_sum_plane(starts, plane_shape, weight: np.ndarray) -> np.ndarray:
    """The blending normaliser of one slice: the tiles' Gaussian weights summed.

    ``starts`` are the (y, x) tile starts of the slice in the order their probabilities
    are accumulated, so the sum is the same float32 sum, bit for bit, as adding the
    weight tile by tile. Voxels no tile covers get 1 (their accumulated value is 0, and
    0 / 1 keeps it 0), so dividing needs no mask.
    """
    py, px = weight.shape
    norm = np.zeros(plane_shape, np.float32)
    for y, x in starts:
        norm[y:y + py, x:x + px] += weight
    norm[norm == 0] = 1
    return norm


def sliding_window(
    volume,
    predict: Callable,
    patch: Sequence[int],
    tile_step: float,
    context: int,
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
    ``patch``, ``tile_step`` and ``context`` are the plan's (``pipeline.network_probability``
    passes them).
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
    weight_np = gaussian_importance(patch)
    weight = ops.from_host(weight_np)
    half = context // 2
    tiles = plan_tiles(shape, patch, tile_step, body)
    log.debug("%d tiles of %dx%d for a %s volume", len(tiles), py, px, tuple(shape))
    slice_layout, planes = _normalisers(tiles, shape, weight_np, ops)
    out = np.zeros(shape, np.float32) if to_host else ops.zeros(shape)
    # On the device the slab accumulates in ``out`` itself; only a host result needs a
    # device-side slab to blend in first.
    separate = to_host and not ops.is_numpy
    by_slab: dict[int, list[Tile]] = {}
    for t in tiles:
        by_slab.setdefault(t.z // slab_slices, []).append(t)
    for slab, slab_tiles in sorted(by_slab.items()):
        z0 = slab * slab_slices
        z1 = min(z0 + slab_slices, shape[0])
        acc = ops.zeros((z1 - z0, shape[1], shape[2])) if separate else out[z0:z1]
        start = 0
        while start < len(slab_tiles):
            chunk = slab_tiles[start:start + batch_size]
            batch = ops.gather(volume, chunk, patch, half)
            try:
                probs = predict(batch)
            except oom_errors:
                if batch_size == 1:
                    raise
                batch_size = max(batch_size // 2, 1)
                # info: the case's one warning comes from the predictor if it fails here
                log.info("out of memory; retrying with %d tiles per batch", batch_size)
                ops.release_cached_memory()
                continue
            weighted = probs * weight  # one operation for the batch, not one per tile
            for t, p in zip(chunk, weighted):
                acc[t.z - z0, t.y:t.y + py, t.x:t.x + px] += p
            start += len(chunk)
            if progress is not None:
                progress(len(chunk))
        # A slice of the slab without tiles holds zeros, which any layout's map keeps 0.
        ops.normalise(acc, planes, slice_layout[z0:z1].tolist())
        if separate:
            out[z0:z1] = ops.to_host(acc)
    return out[:, :ny, :nx]


def _normalisers(tiles, shape, weight_np, ops):
    """(layout id per slice, one weight-sum plane per layout) for the tiles.

    The normaliser depends only on which tiles a slice has: one map per distinct layout
    (one in all without body skipping), made once, instead of a weight sum per tile.
    """
    layouts: dict[tuple, int] = {}
    slice_layout = np.zeros(shape[0], np.int64)
    by_slice: dict[int, list[tuple[int, int]]] = {}
    for t in tiles:
        by_slice.setdefault(t.z, []).append((t.y, t.x))
    for z, starts in by_slice.items():
        slice_layout[z] = layouts.setdefault(tuple(starts), len(layouts))
    planes = ops.from_host(np.stack([weight_sum_plane(starts, shape[1:], weight_np)
                                    for starts in layouts])) if layouts else None
    return slice_layout, planes
