"""Synthetic abdominal CT phantoms with lesions, written as a FLARE-style dataset.

Each phantom is a CT volume in Hounsfield units: a body outline with skin, fat and a
muscle wall, spine and ribs, liver, spleen, kidneys, pancreas, stomach, gallbladder,
vessels, bowel and colon with gas, and the lung bases. Lesions are lobulated blobs
inside a host organ; the label is exactly the set of voxels the lesions were painted on.
Anatomy is built in millimetres, so it keeps its physical size whatever the spacing.

API: :func:`make_phantom` returns a :class:`Phantom`; :func:`write_dataset` writes
``imagesTr``/``labelsTr``/``imagesUnlabelled`` and ``dataset.json``.
CLI: ``python -m training.phantoms -o DIR -n N [...]``.

Arrays use SimpleITK order (z, y, x); spacing, origin and sizes are given as (x, y, z).
The anatomy is built in LPS (array x toward the patient's left, y posterior, z superior,
direction identity); an RAS case is the same array flipped along x and y with direction
diag(-1, -1, 1) and an origin that keeps every voxel at the same physical point.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from tqdm import tqdm

from inference.folders import atomic_temporary, write_text_atomically

log = logging.getLogger(__name__)

TISSUES = (
    "air", "skin", "subcutaneous_fat", "muscle", "visceral_fat", "lung", "cortical_bone",
    "cancellous_bone", "disc", "csf", "mediastinum", "aorta", "ivc", "liver", "spleen",
    "kidney_cortex", "kidney_medulla", "pancreas", "stomach_wall", "stomach_content", "gas",
    "bowel_wall", "bowel_fluid", "colon_wall", "colon_content", "gallbladder", "fov_padding",
)
"""Tissue names; ``Phantom.tissue`` holds their indices."""
TISSUE = {name: i for i, name in enumerate(TISSUES)}

# HU range per tissue; each case draws one value per tissue (contrast-enhanced, portal phase).
HU_RANGES = {
    "air": (-1005, -995), "skin": (30, 60), "subcutaneous_fat": (-115, -85),
    "muscle": (40, 60), "visceral_fat": (-110, -80), "lung": (-870, -830),
    "cortical_bone": (700, 1200), "cancellous_bone": (200, 400), "disc": (70, 100),
    "csf": (0, 15), "mediastinum": (35, 55), "aorta": (150, 250), "ivc": (100, 160),
    "liver": (50, 70), "spleen": (45, 55), "kidney_cortex": (120, 150),
    "kidney_medulla": (60, 100), "pancreas": (40, 60), "stomach_wall": (40, 60),
    "stomach_content": (0, 20), "gas": (-1000, -900), "bowel_wall": (35, 55),
    "bowel_fluid": (5, 25), "colon_wall": (35, 55), "colon_content": (-20, 20),
    "gallbladder": (0, 20), "fov_padding": (-3024, -3024),
}

# Lesion hosts: tissues a lesion may occupy, sampling weight, diameter range (mm).
LESION_HOSTS = {
    "liver": (("liver",), 0.35, (3.0, 60.0)),
    "kidney": (("kidney_cortex", "kidney_medulla"), 0.15, (3.0, 45.0)),
    "spleen": (("spleen",), 0.10, (3.0, 40.0)),
    "pancreas": (("pancreas",), 0.10, (5.0, 35.0)),
    # Lymph nodes are soft tissue (+20..+60 HU) in fat, so their contrast is ~100-170 HU.
    "lymph_node": (("visceral_fat",), 0.15, (5.0, 30.0)),
    "muscle": (("muscle",), 0.05, (5.0, 40.0)),
    "bowel": (("bowel_wall", "bowel_fluid"), 0.10, (8.0, 35.0)),
}
DTYPES = ("int16", "int32", "float32")
DTYPE_WEIGHTS = (0.6, 0.2, 0.2)  # most CT is int16; float32 files are also the slowest to write
ORIENTATIONS = ("LPS", "RAS")
HU_FLOOR = -1024.0
PADDING_HU = -3024.0


@dataclass
class Lesion:
    """One painted lesion; ``id`` is its value in ``Phantom.lesion_ids``."""

    id: int
    host: str
    centre_index: tuple[float, float, float]  # continuous (x, y, z) index of the centroid
    centre_mm: tuple[float, float, float]  # the same point in world coordinates
    radius_mm: float  # radius of the main lobe before clipping to the host
    diameter_mm: float  # equivalent-sphere diameter of the painted voxels
    hu: float
    contrast_hu: float  # hu minus the host tissue's HU
    voxels: int
    necrotic_core_hu: float | None = None


@dataclass
class Phantom:
    """A synthetic CT case; arrays are (z, y, x) in the case's own orientation."""

    image: np.ndarray
    label: np.ndarray  # uint8 {0,1}: every lesion
    lesion_ids: np.ndarray  # uint8: 0 background, k for Lesion.id == k
    tissue: np.ndarray  # uint8 indices into TISSUES
    lesions: list[Lesion]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]
    orientation: str
    tissue_hu: dict[str, float] = field(default_factory=dict)
    noise_sd: float = 0.0
    blur_sigma: float = 0.0

    def partial_label(self) -> np.ndarray:
        """Label of the largest lesion only (FLARE's partial labels)."""
        if not self.lesions:
            return np.zeros_like(self.label)
        biggest = max(self.lesions, key=lambda les: les.voxels)
        return (self.lesion_ids == biggest.id).astype(np.uint8)

    def background(self) -> np.ndarray:
        """The noise-free, blur-free image without lesions (float32 HU)."""
        lut = np.array([self.tissue_hu[name] for name in TISSUES], dtype=np.float32)
        return lut[self.tissue]

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """An array on this case's grid (default: the image) as a SimpleITK image."""
        img = sitk.GetImageFromArray(self.image if array is None else array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def write(self, image_path: str, label_path: str | None = None,
              partial: bool = False) -> None:
        """Write the image (and the label, all lesions or the largest) as .nii.gz."""
        write_nifti(self.to_sitk(), image_path)
        if label_path is not None:
            label = self.partial_label() if partial else self.label
            write_nifti(self.to_sitk(label), label_path)


def write_nifti(image: sitk.Image, path: str) -> None:
    """Write atomically: a killed run never leaves a half-written file at ``path``."""
    with atomic_temporary(path, keep_suffix=True) as temporary:
        sitk.WriteImage(image, str(temporary), useCompression=True, compressionLevel=1)


class _Grid:
    """Voxel centres in body-relative millimetres (X left, Y posterior, Z height)."""

    def __init__(self, shape_xyz, spacing_xyz, origin_xyz, body_xy, z_centre):
        self.shape = shape_xyz
        self.spacing = spacing_xyz
        nx, ny, nz = shape_xyz
        sx, sy, sz = spacing_xyz
        self.X = (origin_xyz[0] + sx * np.arange(nx) - body_xy[0]).astype(np.float32)
        self.Y = (origin_xyz[1] + sy * np.arange(ny) - body_xy[1]).astype(np.float32)
        self.Z = (z_centre + sz * (np.arange(nz) - (nz - 1) / 2)).astype(np.float32)

    def box(self, centre, half):
        """Slices and broadcastable coordinates of the voxels within centre +- half (mm)."""
        sl = []
        for axis, c, h in zip((self.X, self.Y, self.Z), centre, half):
            lo = np.searchsorted(axis, c - h, side="left")
            hi = np.searchsorted(axis, c + h, side="right")
            if hi <= lo:
                return None
            sl.append(slice(lo, hi))
        sx, sy, sz = sl
        return ((sz, sy, sx), self.Z[sz][:, None, None] - centre[2],
                self.Y[sy][None, :, None] - centre[1], self.X[sx][None, None, :] - centre[0])


def _paint(tissue, sl, mask, name, onto):
    """Set ``name`` where ``mask`` is true and the current tissue is one of ``onto``."""
    sub = tissue[sl]
    allowed = np.zeros(256, dtype=bool)
    allowed[[TISSUE[t] for t in onto]] = True
    sub[mask & allowed[sub]] = TISSUE[name]


def _ellipsoid(grid, rng, centre, semi, angle=0.0, wobble=0.1):
    """Box and squared normalised radius of a smoothly deformed, z-rotated ellipsoid."""
    # Draw before looking at the grid, so the anatomy is the same whatever the field of view.
    waves = [(rng.normal(size=3), rng.uniform(0.5, 1.0), rng.uniform(0, 2 * math.pi))
             for _ in range(2)]
    box = grid.box(centre, [s * (1 + 2 * wobble) for s in semi])
    if box is None:
        return None, None
    sl, dz, dy, dx = box
    c, s = math.cos(angle), math.sin(angle)
    u, v = c * dx + s * dy, -s * dx + c * dy
    q = (u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (dz / semi[2]) ** 2
    if wobble:
        f = np.ones(1, dtype=np.float32)
        for k, amp, phase in waves:
            k = k * 2 * math.pi / (1.5 * max(semi) * np.linalg.norm(k))
            f = f + wobble * amp * np.sin(k[0] * dx + k[1] * dy + k[2] * dz + phase)
        q = q / f**2
    return sl, q.astype(np.float32, copy=False)


def _tube(tissue, grid, rng, points, radius, wall_mm, wall, content, gas_fraction):
    """Paint a walled tube (a chain of spheres) with a gas cap on its anterior side."""
    points = np.asarray(points, dtype=np.float64)
    lengths = np.linalg.norm(np.diff(points, axis=0), axis=1)
    t = np.concatenate([[0.0], np.cumsum(lengths)])
    samples = np.arange(0.0, t[-1] + 1e-6, max(radius / 2.5, 1.0))
    centres = np.stack([np.interp(samples, t, points[:, a]) for a in range(3)], axis=1)
    radii = radius * (1 + 0.12 * np.sin(samples * 2 * math.pi / 25 + rng.uniform(0, 6.3)))
    spheres = []
    for c, r in zip(centres, radii):
        box = grid.box(c, (r, r, r))
        if box is not None:
            sl, dz, dy, dx = box
            spheres.append((sl, dx**2 + dy**2 + dz**2, r, dy))
    for sl, d2, r, _ in spheres:  # walls first, so contents of overlapping spheres win
        _paint(tissue, sl, d2 <= r * r, wall, ("visceral_fat",))
    for sl, d2, r, dy in spheres:
        inner = d2 <= (r - wall_mm) ** 2
        _paint(tissue, sl, inner, content, ("visceral_fat", wall))
        gas = inner & (dy < r * (2 * gas_fraction - 1))  # gas rises: Y points posterior
        _paint(tissue, sl, gas, "gas", (content,))


@dataclass
class _Build:
    """One abdomen's build, drawn in ``_body_wall``, that every later structure follows."""

    A: float  # semi-axes of the body's cross-section, mm (x, anterior y)
    B: float
    b_post: float  # posterior y semi-axis
    kx: float  # organ scale factors along x and y
    ky: float
    skin: float
    fat_mean: float
    Yv: float = 0.0  # y of the vertebral bodies' centre
    period: float = 0.0  # vertebra + disc height, mm


def _body_wall(grid, rng):
    """The body outline with skin, subcutaneous fat, muscle wall and visceral fat inside."""
    X, Y, Z = grid.X, grid.Y, grid.Z
    A, B = rng.uniform(140, 175), rng.uniform(100, 125)
    b_post = B * rng.uniform(0.85, 0.95)
    ph = rng.uniform(0, 2 * math.pi, size=3)
    Zd = Z.astype(np.float64)
    chest = 1 + 0.06 / (1 + np.exp(-(Zd - 330) / 25))
    a_z = A * (1 + 0.04 * np.sin(2 * math.pi * Zd / 300 + ph[0])) * chest
    b_z = B * (1 + 0.04 * np.sin(2 * math.pi * Zd / 260 + ph[1])) * chest
    inv_b2 = np.where(Y[None, :] < 0, 1 / b_z[:, None] ** 2, 1 / (b_z[:, None] * b_post / B) ** 2)
    theta = np.arctan2(Y[:, None], X[None, :])
    shape2d = 1 + 0.025 * np.cos(3 * theta + ph[2]) + 0.02 * np.cos(4 * theta + ph[0])
    rn = ((X[None, None, :] ** 2) * (1 / a_z**2).astype(np.float32)[:, None, None]
          + (Y[None, :] ** 2 * inv_b2).astype(np.float32)[:, :, None])
    np.sqrt(rn, out=rn)
    rn *= shape2d.astype(np.float32)
    np.maximum(rn, 1e-6, out=rn)
    P = np.hypot(Y[:, None], X[None, :]).astype(np.float32)
    depth = np.divide(P, rn, out=rn)  # radial depth below the skin, mm
    depth -= P
    skin = rng.uniform(1.5, 3.0)
    fat = rng.uniform(6, 30) * (1 + 0.5 * np.clip(-Y[:, None] / np.maximum(P, 1), 0, 1))
    wall = skin + fat + rng.uniform(8, 14)
    layer = (depth >= 0).view(np.uint8).copy()
    layer += depth >= skin
    layer += depth >= (skin + fat).astype(np.float32)
    layer += depth >= wall.astype(np.float32)
    del depth, rn
    lut = np.array([TISSUE[t] for t in
                    ("air", "skin", "subcutaneous_fat", "muscle", "visceral_fat")], np.uint8)
    build = _Build(A, B, b_post, kx=A / 155, ky=B / 112, skin=skin, fat_mean=float(np.mean(fat)))
    return lut[layer], build


_SOFT = ("visceral_fat",)


def _spine(tissue, grid, rng, build: _Build) -> None:
    """Vertebral bodies with discs, canal, posterior arch; paraspinal muscles, psoas."""
    kx = build.kx
    build.Yv = Yv = 18 * build.ky
    build.period, disc_h, zph = rng.uniform(30, 36), rng.uniform(6, 9), rng.uniform(0, 36)
    box = grid.box((0, Yv + 30, 0), (60 * kx, 55, 1e6))
    if box is not None:
        sl, dz, dy, dx = box
        phase = (dz + zph) % build.period  # height within one vertebra + disc
        is_disc = phase < disc_h
        body = (dx / 22) ** 2 + (dy / 17) ** 2
        canal = dx**2 + (dy - 27) ** 2
        # Spinous processes slope down: their tip shows lower in the vertebra than the root.
        spinous = ((np.abs(dx) < 4) & (dy > 35) & (dy < 58)
                   & (np.abs(phase - disc_h - (dy - 30) * 0.25) < 8))
        trans = ((np.abs(dx) > 12) & (np.abs(dx) < 40) & (np.abs(dy - 22) < 5)
                 & (np.abs(phase - disc_h - 10) < 5))
        arch = (((canal <= 15**2) & (dy > 17)) | spinous | trans) & ~is_disc
        paraspinal = ((np.abs(dx) - 30 * kx) / (20 * kx)) ** 2 + ((dy - 45) / 20) ** 2 <= 1
        _paint(tissue, sl, paraspinal, "muscle", ("visceral_fat", "subcutaneous_fat"))
        _paint(tissue, sl, arch, "cortical_bone", ("visceral_fat", "muscle", "subcutaneous_fat"))
        _paint(tissue, sl, canal <= 9**2, "csf", ("cortical_bone",))
        _paint(tissue, sl, (body <= 1) & is_disc, "disc", _SOFT)
        _paint(tissue, sl, body <= 1, "cortical_bone", _SOFT)
        _paint(tissue, sl, body <= 0.8, "cancellous_bone", ("cortical_bone",))
    for side in (-1, 1):
        for z0, z1 in ((60, 100), (100, 150), (150, 200), (200, 235)):
            r = 20 - 0.06 * (z0 - 60)
            sl, q = _ellipsoid(grid, rng, (side * (30 + r) * kx, Yv + 5, (z0 + z1) / 2),
                               (r, r * 0.9, (z1 - z0) * 0.75), wobble=0.05)
            if sl is not None:
                _paint(tissue, sl, q <= 1, "muscle", _SOFT)


def _ribs_and_vessels(tissue, grid, rng, build: _Build) -> None:
    """Ribs (oval cross-sections inside the wall, above the kidneys); aorta and IVC."""
    rib_depth = build.skin + build.fat_mean + 5
    for side in (-1, 1):
        for alpha in np.radians(np.arange(40, 160, 18)):
            for z in np.arange(230 + alpha * 10, grid.Z[-1] + 30, build.period * 0.9):
                px = side * (build.A - rib_depth) * math.sin(alpha)
                py = (build.b_post if alpha < math.pi / 2 else build.B) * math.cos(alpha)
                py -= math.copysign(rib_depth, py) if abs(py) > 1 else 0
                box = grid.box((px, py, z), (6, 6, 6))
                if box is not None:
                    sl, dz, dy, dx = box
                    q = (dx**2 + dy**2) / 25 + (dz / 6) ** 2
                    _paint(tissue, sl, q <= 1, "cortical_bone",
                           ("muscle", "subcutaneous_fat", "visceral_fat"))
                    _paint(tissue, sl, q <= 0.35, "cancellous_bone", ("cortical_bone",))
    for name, x, r, z0 in (("aorta", 14, rng.uniform(10, 13), 115), ("ivc", -24, 11, 105)):
        box = grid.box((x * build.kx, build.Yv - 30, 600), (r, r, 600 - z0))
        if box is not None:
            sl, dz, dy, dx = box
            _paint(tissue, sl, dx**2 + dy**2 <= r * r, name, _SOFT)


def _organs(tissue, grid, rng, build: _Build):
    """Kidneys, liver, spleen, pancreas, stomach and gallbladder below the diaphragm's
    dome; the dome (z of the diaphragm per (y, x)) is returned for the lungs."""
    X, Y = grid.X, grid.Y
    kx, ky, Yv = build.kx, build.ky, build.Yv

    def organ(name, centre, semi, angle=0.0, wobble=0.1, onto=_SOFT):
        c = (centre[0] * kx, centre[1] * ky, centre[2])
        s = [v * rng.uniform(0.85, 1.15) for v in (semi[0] * kx, semi[1] * ky, semi[2])]
        sl, q = _ellipsoid(grid, rng, c, s, angle, wobble)
        if sl is None:
            return None, None
        mask = (q <= 1) & (grid.Z[sl[0]][:, None, None] < dome[sl[1:]][None])
        _paint(tissue, sl, mask, name, onto)
        return sl, q

    # Diaphragm dome: lower laterally and posteriorly.
    d0 = rng.uniform(335, 365)
    dome = (d0 - 35 * ((X[None, :] / build.A) ** 2 + (np.maximum(Y[:, None], 0) / build.B) ** 2)
            - rng.uniform(0, 15) * (X[None, :] < 0)).astype(np.float32)
    for side in (-1, 1):
        kz = rng.uniform(195, 215) + (15 if side > 0 else 0)
        medulla = rng.uniform(0.35, 0.5)
        sl, q = organ("kidney_cortex", (side * 68, Yv + 8, kz), (27, 22, 55),
                      angle=side * rng.uniform(0.2, 0.5), wobble=0.06)
        if sl is not None:
            _paint(tissue, sl, q <= medulla, "kidney_medulla", ("kidney_cortex",))
    organ("liver", (-60, -10, rng.uniform(285, 305)), (75, 70, 75))
    organ("liver", (10, -45, rng.uniform(295, 315)), (55, 30, 40))
    organ("spleen", (88, 45, rng.uniform(275, 295)), (45, 28, 55), angle=0.6)
    pz = rng.uniform(235, 255)
    head, mid, tail = (-35, -22, pz), (5, -38, pz + 10), (70, 10, pz + 25)
    for t in np.linspace(0, 1, 16):
        p = [(1 - t) ** 2 * h + 2 * t * (1 - t) * m + t * t * e for h, m, e in zip(head, mid, tail)]
        r = 17 - 6 * t
        organ("pancreas", p, (r, r * 0.75, r * 0.9), wobble=0.05)
    sz, gas_level = rng.uniform(280, 300), -35 * ky - rng.uniform(0, 25)
    sl, q = organ("stomach_wall", (45, -35, sz), (50, 40, 55), angle=-0.3)
    if sl is not None:
        _paint(tissue, sl, q <= 0.85, "stomach_content", ("stomach_wall",))
        front = grid.Y[sl[1]][None, :, None] < gas_level
        _paint(tissue, sl, (q <= 0.85) & front, "gas", ("stomach_content",))
    organ("gallbladder", (-50, -55, rng.uniform(230, 250)), (16, 14, 35),
          onto=("visceral_fat", "liver"))
    return dome


def _bowel_and_lungs(tissue, grid, rng, build: _Build, dome) -> None:
    """Colon (ascending, transverse, descending), small-bowel loops filling the rest, and
    the lung bases above the dome, split by the mediastinum."""
    kx, ky = build.kx, build.ky
    cz = rng.uniform(235, 255)
    frame = [(-95, 5, 80), (-95, -5, cz - 10), (-60, -65, cz), (40, -70, cz + 5),
             (95, -5, cz + 15), (100, 10, 150), (80, 0, 70), (30, -30, 35)]
    frame = [(x * kx, y * ky, z) for x, y, z in frame]
    _tube(tissue, grid, rng, frame, rng.uniform(18, 24), 3.0, "colon_wall", "colon_content",
          rng.uniform(0.2, 0.6))
    for _ in range(rng.integers(30, 50)):
        c = (rng.uniform(-85, 85) * kx, rng.uniform(-80, 10) * ky, rng.uniform(20, 245))
        r = rng.uniform(9, 17)
        end = np.array(c) + rng.normal(size=3) * r
        _tube(tissue, grid, rng, [c, end], r, 2.5, "bowel_wall", "bowel_fluid",
              rng.uniform(0, 0.5) * (rng.random() < 0.4))
    box = grid.box((0, 0, 1000), (1e6, 1e6, 1000 - float(dome.min())))
    if box is not None:
        sl, dz, dy, dx = box
        above = grid.Z[sl[0]][:, None, None] > dome[sl[1:]][None]
        medi = ((dx - 10 * kx) / (60 * kx)) ** 2 + ((dy + 25 * ky) / (50 * ky)) ** 2 <= 1
        _paint(tissue, sl, above & medi, "mediastinum", _SOFT)
        _paint(tissue, sl, above, "lung", _SOFT)


def _build_anatomy(grid, rng):
    """Tissue index map (z, y, x) of one abdomen, drawn from ``rng``, outside in."""
    tissue, build = _body_wall(grid, rng)
    _spine(tissue, grid, rng, build)
    _ribs_and_vessels(tissue, grid, rng, build)
    dome = _organs(tissue, grid, rng, build)
    _bowel_and_lungs(tissue, grid, rng, build, dome)
    return tissue


def _largest_component(mask):
    labels, n = ndimage.label(mask)
    if n <= 1:
        return mask
    return labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1


def _lesion_shape(grid, centre, radius, rng):
    """Box, mask and necrotic-core mask of a lobulated blob: a rotated, radially
    perturbed ellipsoid plus up to three smaller overlapping spheres."""
    semi = radius * np.array([1.0, rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0)])
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    lobes = []
    for _ in range(rng.integers(0, 4)):
        d = rng.normal(size=3)
        lobes.append((d / np.linalg.norm(d) * radius * rng.uniform(0.4, 0.8),
                      radius * rng.uniform(0.35, 0.7)))
    ext = max([radius * 1.1] + [np.linalg.norm(o) + r for o, r in lobes])
    box = grid.box(centre, [ext + s for s in grid.spacing])
    if box is None:
        return None, None, None
    sl, dz, dy, dx = box
    u = [rot[i, 0] * dx + rot[i, 1] * dy + rot[i, 2] * dz for i in range(3)]
    q = sum((u[i] / semi[i]) ** 2 for i in range(3))
    k = rng.normal(size=3) * 2 * math.pi / max(radius, 1.0)
    q = q / (1 + 0.08 * np.sin(k[0] * dx + k[1] * dy + k[2] * dz + rng.uniform(0, 6.3))) ** 2
    mask = q <= 1
    for o, r in lobes:
        mask |= (dx - o[0]) ** 2 + (dy - o[1]) ** 2 + (dz - o[2]) ** 2 <= r * r
    return sl, mask, q <= 0.3


def _distinct(value, taken, step):
    """Move ``value`` in steps of ``step`` until it is >= 5 HU from every ``taken``."""
    while any(abs(value - t) < 5 for t in taken):
        value += step
    return float(value)


def _place_lesions(tissue, image, grid, hu, n, rng):
    """Paint ``n`` lesions into ``image``; return the lesion-id map and their records."""
    ids = np.zeros(tissue.shape, np.uint8)
    lesions = []
    names = list(LESION_HOSTS)
    weights = np.array([LESION_HOSTS[h][1] for h in names])
    hosts = {}
    for h in names:
        allowed = np.zeros(256, dtype=bool)
        allowed[[TISSUE[t] for t in LESION_HOSTS[h][0]]] = True
        hosts[h] = [allowed, None]
    cube = np.ones((3, 3, 3), dtype=bool)
    for lesion_id in range(1, n + 1):
        for attempt in range(80):
            host = names[rng.choice(len(names), p=weights / weights.sum())]
            allowed, voxels = hosts[host]
            if voxels is None:
                voxels = hosts[host][1] = np.flatnonzero(allowed[tissue])
            if voxels.size < 8:
                continue
            dmin, dmax = LESION_HOSTS[host][2]
            radius = 0.5 * math.exp(rng.uniform(math.log(dmin), math.log(dmax)))
            radius *= 0.8 ** (attempt // 10)
            iz, iy, ix = np.unravel_index(voxels[rng.integers(voxels.size)], tissue.shape)
            jitter = rng.uniform(-0.5, 0.5, size=3) * grid.spacing
            centre = (grid.X[ix] + jitter[0], grid.Y[iy] + jitter[1], grid.Z[iz] + jitter[2])
            sl, mask, core = _lesion_shape(grid, centre, radius, rng)
            if sl is None or not mask.any():
                continue
            inside = mask & allowed[tissue[sl]]
            if inside.sum() < 0.7 * mask.sum():
                continue
            inside = _largest_component(inside)
            if (ndimage.binary_dilation(inside, cube) & (ids[sl] > 0)).any():
                continue  # keep lesions apart so each is its own component
            break
        else:
            log.warning("placed %d of %d lesions: no room left in any host organ",
                        lesion_id - 1, n)
            break
        host_hu = [hu[t] for t in LESION_HOSTS[host][0]]
        if host == "lymph_node":  # soft tissue in fat, not a shade of fat
            value = float(rng.integers(20, 61))
        else:
            value = host_hu[0] + float(rng.integers(15, 81)) * (-1 if rng.random() < 0.7 else 1)
        value = _distinct(value, host_hu, 10 if value > host_hu[0] else -10)
        core_hu = None
        if radius >= 10 and rng.random() < 0.3:
            core_hu = _distinct(value - float(rng.integers(15, 41)), host_hu, -10)
        ids[sl][inside] = lesion_id
        image[sl][inside] = value
        if core_hu is not None:
            image[sl][inside & core] = core_hu
        zyx = np.argwhere(inside).mean(axis=0) + [s.start for s in sl]
        index = (float(zyx[2]), float(zyx[1]), float(zyx[0]))
        count = int(inside.sum())
        lesions.append(Lesion(
            id=lesion_id, host=host, centre_index=index, centre_mm=(0.0, 0.0, 0.0),
            radius_mm=round(radius, 2),
            diameter_mm=round((6 * count * float(np.prod(grid.spacing)) / math.pi) ** (1 / 3), 2),
            hu=value, contrast_hu=value - host_hu[0], voxels=count, necrotic_core_hu=core_hu))
    return ids, lesions


def _f32(value):
    """Round to what a NIfTI header (float32) stores, so headers round-trip exactly."""
    return float(np.float32(value))


def make_phantom(shape_xyz=(512, 512, 100), spacing_xyz=(0.8, 0.8, 3.0), seed=0, *,
                 n_lesions=None, healthy=False, orientation="LPS", dtype="int16",
                 fov_padding=False, noise=True, blur=True) -> Phantom:
    """One synthetic abdominal CT case.

    ``seed`` is an int or a sequence of ints; the same arguments give identical arrays.
    ``n_lesions=None`` draws 1-5 lesions (0 when ``healthy``); fewer are placed, with a
    warning, when the field of view holds no room for them. ``fov_padding`` sets voxels
    outside the scanner's circular field of view to -3024. ``noise=False, blur=False``
    gives the painted image, which differs from :meth:`Phantom.background` exactly on
    the lesion voxels. Anatomy and lesions do not depend on ``noise``/``blur``/``dtype``/
    ``orientation``/``fov_padding`` (except where padding hides a host organ).
    """
    shape_xyz = tuple(int(v) for v in shape_xyz)
    spacing_xyz = tuple(_f32(v) for v in spacing_xyz)
    if len(shape_xyz) != 3 or min(shape_xyz) < 1:
        raise ValueError(f"shape_xyz must be three sizes >= 1, got {shape_xyz}")
    if len(spacing_xyz) != 3 or not min(spacing_xyz) > 0:
        raise ValueError(f"spacing_xyz must be three spacings > 0 mm, got {spacing_xyz}")
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if healthy and n_lesions:
        raise ValueError("a healthy phantom has no lesions; leave n_lesions unset")
    if n_lesions is not None and not 0 <= n_lesions <= 255:
        raise ValueError(f"n_lesions must be in 0..255, got {n_lesions}")
    rng_geo, rng_anat, rng_les, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    (nx, ny, _), (sx, sy, _) = shape_xyz, spacing_xyz
    origin = (round(-(nx - 1) * sx / 2 + rng_geo.uniform(-5, 5), 3),
              round(-(ny - 1) * sy / 2 + rng_geo.uniform(-5, 5), 3),
              round(rng_geo.uniform(-700, -100), 3))
    origin = tuple(_f32(round(o * 64) / 64) for o in origin)
    grid = _Grid(shape_xyz, spacing_xyz, origin,
                 body_xy=(rng_geo.uniform(-10, 10), rng_geo.uniform(-20, 10)),
                 z_centre=rng_geo.uniform(170, 280))
    hu = {t: float(rng_geo.integers(lo, hi + 1)) for t, (lo, hi) in HU_RANGES.items()}
    noise_sd, blur_sigma = rng_noise.uniform(10, 25), rng_noise.uniform(0.5, 1.0)

    tissue = _build_anatomy(grid, rng_anat)
    outside = None
    if fov_padding:
        r2 = (((np.arange(nx) - (nx - 1) / 2) * sx)[None, :] ** 2
              + ((np.arange(ny) - (ny - 1) / 2) * sy)[:, None] ** 2)
        outside = r2 > (min(nx * sx, ny * sy) / 2) ** 2
        tissue[:, outside] = TISSUE["fov_padding"]
    lut = np.array([hu[t] for t in TISSUES], dtype=np.float32)
    lut[TISSUE["fov_padding"]] = hu["air"]  # set after blur and noise, as a scanner does
    image = lut[tissue]
    n = 0 if healthy else int(rng_les.integers(1, 6)) if n_lesions is None else n_lesions
    ids, lesions = _place_lesions(tissue, image, grid, hu, n, rng_les)
    if blur:
        image = ndimage.gaussian_filter(image, sigma=(0, blur_sigma, blur_sigma), truncate=3.0)
    if noise:
        image += rng_noise.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_sd)
    np.maximum(image, HU_FLOOR, out=image)
    if outside is not None:
        image[:, outside] = PADDING_HU
    # Whole HU, as scanners store them (float32 too: keeps files small and fast to write).
    image = np.rint(image, out=image)
    if dtype != "float32":
        image = image.astype(dtype)

    for les in lesions:
        les.centre_mm = tuple(o + s * i for o, s, i in zip(origin, spacing_xyz, les.centre_index))
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    if orientation == "RAS":
        flip = (slice(None), slice(None, None, -1), slice(None, None, -1))
        image, ids, tissue = (np.ascontiguousarray(a[flip]) for a in (image, ids, tissue))
        origin = (_f32(origin[0] + sx * (nx - 1)), _f32(origin[1] + sy * (ny - 1)), origin[2])
        direction = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        for les in lesions:
            x, y, z = les.centre_index
            les.centre_index = (nx - 1 - x, ny - 1 - y, z)
    return Phantom(image=image, label=(ids > 0).view(np.uint8), lesion_ids=ids, tissue=tissue,
                   lesions=lesions, spacing=spacing_xyz, origin=origin, direction=direction,
                   orientation=orientation, tissue_hu=hu, noise_sd=round(noise_sd, 2),
                   blur_sigma=round(blur_sigma, 3))


@dataclass(frozen=True)
class CaseSpec:
    """What one dataset case will be; drawn from (seed, stream, index) only."""

    case_id: str
    labelled: bool
    seed: tuple[int, ...]
    shape_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    healthy: bool
    orientation: str
    dtype: str
    fov_padding: bool


def _spread(index, seed, step, fraction):
    """True for about ``fraction`` of indices, evenly spread and independent of N."""
    return (index * step + (seed * 0.5698402909980532) % 1.0) % 1.0 < fraction


def plan_cases(n, *, seed=0, shape_xyz=None, spacing_xyz=None, healthy_fraction=0.2,
               orientation=None, dtype=None, fov_padding_fraction=0.1, n_unlabelled=0,
               prefix="phantom") -> list[CaseSpec]:
    """Case parameters: ``n`` labelled then ``n_unlabelled`` unlabelled cases.

    ``None`` for shape, spacing, orientation or dtype draws them per case: 512x512 in
    plane with 120-350 mm along z, in-plane spacing 0.6-1.0 mm, slices 1-5 mm; dtype
    int16/int32/float32 with weights ``DTYPE_WEIGHTS``; orientation LPS or RAS.
    """
    width = max(3, len(str(max(n, n_unlabelled, 1) - 1)))
    specs = []
    for stream, count in ((0, n), (1, n_unlabelled)):
        for i in range(count):
            rng = np.random.default_rng([seed, stream, i, 1])
            if spacing_xyz is None:
                inplane = int(rng.integers(307, 513)) / 512  # dyadic: exact in float32
                thick = float(rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 3.0, 5.0]))
                spacing = (inplane, inplane, thick)
            else:
                spacing = tuple(float(v) for v in spacing_xyz)
            if shape_xyz is None:
                nz = int(np.clip(round(rng.uniform(120, 350) / spacing[2]), 16, 300))
                shape = (512, 512, nz)
            else:
                shape = tuple(int(v) for v in shape_xyz)
            specs.append(CaseSpec(
                case_id=f"{prefix}_{'u' if stream else ''}{i:0{width}d}",
                labelled=stream == 0, seed=(seed, stream, i), shape_xyz=shape,
                spacing_xyz=spacing,
                healthy=_spread(i + 0.5 * stream, seed, 0.6180339887498949, healthy_fraction),
                orientation=orientation or ORIENTATIONS[int(rng.integers(2))],
                dtype=dtype or DTYPES[int(rng.choice(3, p=DTYPE_WEIGHTS))],
                fov_padding=_spread(i + 0.5 * stream, seed + 1, 0.7548776662466927,
                                    fov_padding_fraction)))
    return specs


def write_dataset(out_dir, n, *, seed=0, shape_xyz=None, spacing_xyz=None,
                  healthy_fraction=0.2, partial=False, n_unlabelled=0, prefix="phantom",
                  orientation=None, dtype=None, fov_padding_fraction=0.1,
                  progress=True) -> list[str]:
    """Write a FLARE-style dataset and ``dataset.json``; return the labelled case ids.

    Layout: ``imagesTr/<id>_0000.nii.gz``, ``labelsTr/<id>.nii.gz`` (uint8 {0,1}; only
    the largest lesion when ``partial``), ``imagesUnlabelled/<id>_0000.nii.gz``.
    Each case depends only on (seed, its index), not on ``n``.
    """
    specs = plan_cases(n, seed=seed, shape_xyz=shape_xyz, spacing_xyz=spacing_xyz,
                       healthy_fraction=healthy_fraction, orientation=orientation,
                       dtype=dtype, fov_padding_fraction=fov_padding_fraction,
                       n_unlabelled=n_unlabelled, prefix=prefix)
    folders = {"imagesTr": n > 0, "labelsTr": n > 0, "imagesUnlabelled": n_unlabelled > 0}
    for sub, needed in folders.items():
        if needed:
            os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    entries = {True: [], False: []}
    for spec in tqdm(specs, desc="phantoms", unit="case", disable=not progress):
        ph = make_phantom(spec.shape_xyz, spec.spacing_xyz, spec.seed, healthy=spec.healthy,
                          orientation=spec.orientation, dtype=spec.dtype,
                          fov_padding=spec.fov_padding)
        folder = "imagesTr" if spec.labelled else "imagesUnlabelled"
        image = f"{folder}/{spec.case_id}_0000.nii.gz"
        label = f"labelsTr/{spec.case_id}.nii.gz" if spec.labelled else None
        ph.write(os.path.join(out_dir, image),
                 label and os.path.join(out_dir, label), partial=partial)
        largest = max(ph.lesions, key=lambda les: les.voxels).id if ph.lesions else None
        lesions = []
        for les in ph.lesions:
            rec = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(les).items()}
            rec["labelled"] = spec.labelled and (not partial or les.id == largest)
            lesions.append(rec)
        entries[spec.labelled].append({
            "id": spec.case_id, "image": image, **({"label": label} if label else {}),
            "seed": list(spec.seed), "shape": list(spec.shape_xyz),
            "spacing": list(ph.spacing), "origin": list(ph.origin),
            "direction": list(ph.direction), "orientation": ph.orientation,
            "dtype": spec.dtype, "healthy": spec.healthy, "fov_padding": spec.fov_padding,
            "noise_sd": ph.noise_sd, "n_lesions": len(ph.lesions),
            "n_labelled_lesions": sum(rec["labelled"] for rec in lesions), "lesions": lesions,
        })
        log.debug("%s: %d lesions, %s %s", spec.case_id, len(ph.lesions), spec.dtype,
                  spec.orientation)
    meta = {
        "name": "phantoms",
        "description": "synthetic abdominal CT with lesions (training.phantoms)",
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
        "file_ending": ".nii.gz", "numTraining": n, "numUnlabelled": n_unlabelled,
        "partial_labels": partial, "seed": seed,
        "training": entries[True], "unlabelled": entries[False],
    }
    write_text_atomically(os.path.join(out_dir, "dataset.json"), json.dumps(meta, indent=1))
    return [e["id"] for e in entries[True]]


def _parser():
    p = argparse.ArgumentParser(
        prog="python -m training.phantoms",
        description="Write a FLARE-style dataset of synthetic abdominal CT phantoms with lesions.")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="dataset folder")
    p.add_argument("-n", "--num-cases", type=int, default=10, metavar="N",
                   help="labelled cases (default 10)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="voxels per axis (default: 512x512, z drawn per case)")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"),
                   help="mm per voxel (default: 0.6-1.0 in plane, 1-5 slices, per case)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed, >= 0 (default 0)")
    p.add_argument("--healthy-fraction", type=float, default=0.2, metavar="F",
                   help="fraction of cases with no lesion (default 0.2)")
    p.add_argument("--partial", action="store_true",
                   help="label only the largest lesion of each case (FLARE partial labels)")
    p.add_argument("--unlabelled", type=int, default=0, metavar="M",
                   help="also write M unlabelled cases to imagesUnlabelled (default 0)")
    p.add_argument("--prefix", default="phantom", metavar="NAME", help="case id prefix")
    p.add_argument("--orientation", choices=(*ORIENTATIONS, "random"), default="random")
    p.add_argument("--dtype", choices=(*DTYPES, "random"), default="random")
    p.add_argument("--fov-padding-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of cases padded with -3024 outside the scan circle "
                        "(default 0.1)")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--disable-progress-bar", action="store_true")
    return p


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.num_cases < 0 or args.unlabelled < 0:
        parser.error("-n and --unlabelled must be >= 0")
    if args.num_cases + args.unlabelled == 0:
        parser.error("nothing to write: give -n or --unlabelled greater than 0")
    if args.shape is not None and min(args.shape) < 1:
        parser.error(f"--shape sizes must be >= 1, got {args.shape}")
    if args.spacing is not None and not all(s > 0 and math.isfinite(s) for s in args.spacing):
        parser.error(f"--spacing values must be finite and > 0 mm, got {args.spacing}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    for flag, value in (("--healthy-fraction", args.healthy_fraction),
                        ("--fov-padding-fraction", args.fov_padding_fraction)):
        if not 0.0 <= value <= 1.0:
            parser.error(f"{flag} must be in [0, 1], got {value}")
    if not args.prefix or any(c in args.prefix for c in "/\\") or args.prefix.startswith("."):
        parser.error(f"--prefix must be a plain file-name stem, got {args.prefix!r}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        write_dataset(args.output, args.num_cases, seed=args.seed, shape_xyz=args.shape,
                      spacing_xyz=args.spacing, healthy_fraction=args.healthy_fraction,
                      partial=args.partial, n_unlabelled=args.unlabelled, prefix=args.prefix,
                      orientation=None if args.orientation == "random" else args.orientation,
                      dtype=None if args.dtype == "random" else args.dtype,
                      fov_padding_fraction=args.fov_padding_fraction,
                      progress=not (args.disable_progress_bar or args.quiet))
    except OSError as e:
        log.error("cannot write to %s: %s; choose a writable -o folder", args.output,
                  e.strerror or e)
        return 1
    log.info("wrote %d labelled and %d unlabelled cases to %s in %.1f s", args.num_cases,
             args.unlabelled, args.output, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
