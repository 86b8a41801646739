"""2.5D training samples from the cache, with foreground oversampling.

A sample is ``context`` neighbouring slices (edges replicated, as the sliding window
does) cut to an in-plane window, plus the centre slice's label. About
``oversample`` of the samples (one third by default, as nnU-Net) are centred on a
labelled lesion voxel with a random offset that keeps the voxel inside the patch after
the worst rotation and zoom-in of the augmentation (``training.augment.lesion_reach``);
the rest are drawn uniformly over the volume.

Which lesion voxel (``lesion_sampling``): ``"voxel"`` draws one uniformly from the
case's lesion voxels (nnU-Net), so a 50 mm lesion is drawn a thousand times as often as
a 5 mm one in the same case; ``"lesion"`` first draws one of the case's lesions
(26-connected components of the label) uniformly, then a voxel in it, so small and
mid-sized lesions get as many samples as large ones. Windows are cut larger than the patch
(``training.augment.window_for`` of the augmentation in use) so rotation and scaling in
``training.augment`` never pull in padding.

Each batch has its own seed, a function of (seed, rank, epoch, batch number): a resumed run
draws the same samples as an uninterrupted one, each DDP rank draws its own, and the
number of DataLoader workers that make them changes nothing.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import cc3d
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from training.augment import NNUNET, AugmentConfig, lesion_reach, window_for
from training.preprocessing import load_case
from training.settings import LESION_SAMPLING, OVERSAMPLE

# a batch that was not ready when the step asked for it: the loop blocked this long or more
# (taking a ready one from a worker's queue takes a fraction of it)
DATA_WAIT_S = 1e-3


@dataclass
class CachedCase:
    case: str
    image: np.ndarray  # (z, y, x) float16, memory-mapped
    label: np.ndarray  # (z, y, x) uint8
    coords: np.ndarray  # (n, 3) lesion voxel sample
    partial: bool
    spacing_zyx: tuple
    lesions: list[np.ndarray] = field(default_factory=list)  # (n_i, 3) voxels per lesion


def load_cases(cache, cases: list[str]) -> list[CachedCase]:
    out = []
    for case in cases:
        image, label, meta = load_case(cache, case)
        coords = np.asarray(meta["lesion_coords"], np.int64).reshape(-1, 3)
        out.append(CachedCase(case, image, label, coords, bool(meta.get("partial")),
                              tuple(meta["spacing_zyx"]), lesion_components(label)))
    return out


def lesion_components(label) -> list[np.ndarray]:
    """(n_i, 3) voxel coordinates of each 26-connected lesion of ``label``."""
    # a uint8 image, not binary_image=True: cc3d 4.1.1 fails on some binary inputs
    ids = cc3d.connected_components((np.asarray(label) > 0).astype(np.uint8), connectivity=26)
    coords = np.argwhere(ids)
    if not len(coords):
        return []
    owner = ids[tuple(coords.T)]
    order = np.argsort(owner, kind="stable")
    coords, owner = coords[order], owner[order]
    return np.split(coords, np.flatnonzero(np.diff(owner)) + 1)


def cut(case: CachedCase, z: int, cy: int, cx: int, window, context: int, pad_value: float):
    """(context, wy, wx) image and (wy, wx) label centred on (z, cy, cx), padded outside."""
    nz, ny, nx = case.image.shape
    wy, wx = window
    y0, x0 = cy - wy // 2, cx - wx // 2
    half = context // 2
    zs = np.clip(np.arange(z - half, z + half + 1), 0, nz - 1)
    image = np.full((context, wy, wx), pad_value, np.float32)
    label = np.zeros((wy, wx), np.uint8)
    sy0, sy1 = max(y0, 0), min(y0 + wy, ny)
    sx0, sx1 = max(x0, 0), min(x0 + wx, nx)
    if sy1 > sy0 and sx1 > sx0:
        dst = (slice(sy0 - y0, sy1 - y0), slice(sx0 - x0, sx1 - x0))
        image[(slice(None), *dst)] = case.image[zs, sy0:sy1, sx0:sx1]
        label[dst] = case.label[z, sy0:sy1, sx0:sx1]
    return image, label


class PatchSampler:
    """Draws samples from cached cases; ``sample(rng)`` -> (image, label, partial, foreground).

    ``augmentation`` is the configuration ``training.augment`` will apply to the samples
    (``None``: none); it sizes the window and bounds a lesion's offset in the patch.
    """

    def __init__(self, cases: list[CachedCase], patch, context: int = 3,
                 oversample: float = OVERSAMPLE, pad_value: float = 0.0,
                 lesion_sampling: str = "voxel",
                 augmentation: AugmentConfig | None = NNUNET):
        if not cases:
            raise ValueError("no training cases")
        if lesion_sampling not in LESION_SAMPLING:
            raise ValueError(f"lesion_sampling must be one of {LESION_SAMPLING}, "
                             f"got {lesion_sampling!r}")
        self.lesion_sampling = lesion_sampling
        self.cases, self.patch, self.context = cases, tuple(patch), context
        self.oversample, self.pad_value = oversample, pad_value
        self.window = window_for(self.patch, augmentation)
        # largest |offset| of the window's centre from the lesion voxel; the voxel sits half a
        # pixel off an even window's centre, hence the - 0.5 (none: patch // 2 - 1, as before)
        self.reach = tuple(max(0, math.floor(r - 0.5))
                           for r in lesion_reach(self.patch, augmentation))
        self.with_lesions = [c for c in cases if len(c.coords)]

    def sample(self, rng: np.random.Generator):
        foreground = bool(self.with_lesions) and rng.random() < self.oversample
        if foreground:
            case = self.with_lesions[rng.integers(len(self.with_lesions))]
            if self.lesion_sampling == "lesion" and case.lesions:
                voxels = case.lesions[rng.integers(len(case.lesions))]
            else:
                voxels = case.coords
            z, y, x = voxels[rng.integers(len(voxels))]
            # the lesion voxel lands anywhere in the patch that augmentation keeps it in
            cy = y + int(rng.integers(-self.reach[0], self.reach[0] + 1))
            cx = x + int(rng.integers(-self.reach[1], self.reach[1] + 1))
        else:
            case = self.cases[rng.integers(len(self.cases))]
            nz, ny, nx = case.image.shape
            z = int(rng.integers(nz))
            cy = int(rng.integers(min(self.patch[0] // 2, ny // 2), max(ny - self.patch[0] // 2,
                                                                        ny // 2 + 1)))
            cx = int(rng.integers(min(self.patch[1] // 2, nx // 2), max(nx - self.patch[1] // 2,
                                                                        nx // 2 + 1)))
        image, label = cut(case, int(z), int(cy), int(cx), self.window, self.context,
                           self.pad_value)
        return image, label, case.partial, foreground

    def batch(self, rng: np.random.Generator, batch_size: int) -> dict:
        items = [self.sample(rng) for _ in range(batch_size)]
        return {
            "image": torch.from_numpy(np.stack([i[0] for i in items])),
            "label": torch.from_numpy(np.stack([i[1] for i in items])),
            "partial": torch.tensor([i[2] for i in items]),
            "foreground": torch.tensor([i[3] for i in items]),
        }


class BatchStream(IterableDataset):
    """The batches of epochs ``first_epoch`` to ``last_epoch`` (excluded; default: that one
    epoch), ``iterations`` each, in order.

    DataLoader workers deal them out: worker w makes every batch n (counted from the first)
    with n % workers == w, which is the order the DataLoader asks its workers in, so the
    stream is the same with any number of them. One stream for the whole run lets the
    workers run ahead across an epoch's end (its validation and checkpoint).
    """

    def __init__(self, sampler: PatchSampler, batch_size: int, iterations: int, seed: int,
                 rank: int, first_epoch: int, last_epoch: int | None = None):
        self.sampler, self.batch_size, self.iterations = sampler, batch_size, iterations
        self.seed, self.rank = seed, rank
        self.first_epoch = first_epoch
        self.last_epoch = first_epoch + 1 if last_epoch is None else last_epoch

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        n = 0
        for epoch in range(self.first_epoch, self.last_epoch):
            for i in range(self.iterations):
                if n % workers == worker:
                    rng = np.random.default_rng([self.seed, self.rank, epoch, i])
                    yield self.sampler.batch(rng, self.batch_size)
                n += 1


def batch_loader(stream: BatchStream, workers: int, device: torch.device):
    """A stream's batches made by ``workers`` processes ahead of the step, in pinned memory
    on CUDA (the copy to the device then runs while the host goes on)."""
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers,
                                       pin_memory=device.type == "cuda")


def next_batch(batches) -> tuple[dict, float]:
    """The next batch and the seconds the loop waited for it."""
    t = time.perf_counter()
    batch = next(batches)
    return batch, time.perf_counter() - t


def data_workers(requested, device: torch.device, world: int = 1) -> int:
    """DataLoader workers per process: ``requested``, or by default none on the CPU (they
    would take cores from the step) and on CUDA all but one of this process's share of the
    cores, at most 8."""
    if requested is not None:
        return requested
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // world - 1))
