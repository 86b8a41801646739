"""Data augmentation on the whole batch, in torch (on the training device).

Spatial (one affine resampling per sample, image and label through the same grid):
rotation, scaling and mirroring; the sampler cuts a window that holds the patch's
footprint under the worst rotation and zoom-out (``window_for``, as nnU-Net sizes its
initial patch), so the patch is read from its centre and never pulls in padding; the
sampler also keeps a lesion's offset within ``lesion_reach``. Intensity: multiplicative
brightness, contrast, gamma (statistics kept) and Gaussian noise. Probabilities and
ranges follow nnU-Net's 2D defaults; every draw is per sample.

``sync_free``: the same result without ever asking the device which samples drew a
transform (``any()``, ``nonzero()``: each waits for the device to finish all it was given).
Every sample is then transformed and the drawn ones kept, so a GPU never idles while the host
waits; on the CPU the default skips the work no sample drew. Both draw the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentConfig:
    p_rotation: float = 0.2
    rotation_deg: float = 180.0
    p_scale: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_mirror: float = 0.5
    p_brightness: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)


NO_AUGMENT = AugmentConfig(0, 0, 0, (1, 1), 0, 0, (1, 1), 0, (1, 1), 0, (1, 1), 0, (0, 0))
# CT-sized ranges for short runs: patients lie on their back, so large rotations only
# teach poses the scanner never shows, and a small network learns slower under them.
LIGHT = AugmentConfig(rotation_deg=15.0, scale=(0.85, 1.25), brightness=(0.9, 1.1),
                      contrast=(0.9, 1.1), gamma=(0.8, 1.25), noise_variance=(0.0, 0.05))
NNUNET = AugmentConfig()
AUGMENTATIONS = {"nnunet": NNUNET, "light": LIGHT, "none": None}


def _ranges(config: AugmentConfig):
    """Largest rotation (degrees), smallest and largest scale that ``spatial`` can draw."""
    degrees = config.rotation_deg if config.p_rotation > 0 else 0.0
    scales = ([1.0] if config.p_scale < 1 else []) + \
        (list(config.scale) if config.p_scale > 0 else [])
    return degrees, min(scales), max(scales)


def _turned(half, degrees: float) -> tuple[float, float]:
    """Half-sides (y, x) of the box holding a rectangle of half-sides ``half`` (y, x)
    turned by any angle up to ``degrees`` either way."""
    out = []
    for a, b in (tuple(half), tuple(half)[::-1]):
        # a |cos t| + b |sin t| grows until t = atan(b / a), then falls back
        t = min(math.radians(abs(degrees)), math.atan2(b, a))
        out.append(a * math.cos(t) + b * math.sin(t))
    return out[0], out[1]


def window_for(patch, config: AugmentConfig | None) -> tuple[int, int]:
    """Window (wy, wx) to cut around a patch so that ``spatial`` never reads outside it.

    ``spatial`` reads the patch's pixel centres turned by up to ``rotation_deg`` and
    multiplied by the scale, so the largest scale (zoom out) reads the widest footprint.
    The margin is even, so the patch sits exactly centred; ``None``: the patch itself.
    """
    if config is None:
        return tuple(patch)
    degrees, _, zoom_out = _ranges(config)
    half = _turned([(p - 1) / 2 for p in patch], degrees)
    # bilinear reads stay inside while the footprint's half side is at most (w - 1) / 2
    need = [2 * zoom_out * h + 1 for h in half]
    return tuple(p + 2 * max(0, math.ceil((n - p) / 2)) for p, n in zip(patch, need))


def lesion_reach(patch, config: AugmentConfig | None) -> tuple[float, float]:
    """Half-sides (y, x) of the box of offsets from the window's centre whose voxels
    ``spatial`` puts inside the patch under every rotation and scale of ``config``.

    Zooming in (the smallest scale) pushes a voxel furthest out. When the transform
    interpolates, the box keeps one pixel clear of the patch's edge: the label is
    resampled bilinearly, and a voxel just inside the last pixel centres can fall
    between them.
    """
    half = [(p - 1) / 2 for p in patch]
    if config is None:
        return half[0], half[1]
    degrees, zoom_in, zoom_out = _ranges(config)
    if degrees or zoom_in != 1 or zoom_out != 1:
        half = [max(h - 1, 0.0) for h in half]
    turned = _turned(half, degrees)
    # a box shaped as ``half``, turned and then divided by the smallest scale, must fit
    k = min([1.0] + [zoom_in * h / t for h, t in zip(half, turned) if t > 0])
    return k * half[0], k * half[1]


def _uniform(n, low, high, generator, device):
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _chance(n, p, generator, device):
    return torch.rand(n, generator=generator, device=device) < p


def spatial(image, label, patch, config: AugmentConfig, pad_value: float = 0.0,
            generator: torch.Generator | None = None, sync_free: bool = False):
    """Rotate, scale and mirror (B, C, Wy, Wx) images and (B, Wy, Wx) labels into ``patch``.

    Returns (B, C, py, px) and (B, py, px); without any transform drawn this is an
    exact centre crop.
    """
    b, _, wy, wx = image.shape
    py, px = patch
    dev = image.device
    angle = torch.where(_chance(b, config.p_rotation, generator, dev),
                        _uniform(b, -1, 1, generator, dev) * math.radians(config.rotation_deg),
                        torch.zeros(b, device=dev))
    scale = torch.where(_chance(b, config.p_scale, generator, dev),
                        _uniform(b, *config.scale, generator, dev), torch.ones(b, device=dev))
    flip_x = torch.where(_chance(b, config.p_mirror, generator, dev), -1.0, 1.0)
    flip_y = torch.where(_chance(b, config.p_mirror, generator, dev), -1.0, 1.0)
    transformed = (angle != 0) | (scale != 1) | (flip_x < 0) | (flip_y < 0)
    oy, ox = (wy - py) // 2, (wx - px) // 2
    out_image = image[:, :, oy:oy + py, ox:ox + px]
    out_label = label[:, oy:oy + py, ox:ox + px]
    if sync_free:
        moved, moved_label = _resample(image, label, patch, angle, scale, flip_x, flip_y,
                                       pad_value)
        keep = transformed.view(b, 1, 1)
        return (torch.where(keep[:, None], moved.to(image.dtype), out_image),
                torch.where(keep, moved_label.to(label.dtype), out_label))
    out_image, out_label = out_image.clone(), out_label.clone()
    idx = transformed.nonzero().flatten()
    if idx.numel() == 0:
        return out_image, out_label
    moved, moved_label = _resample(image[idx], label[idx], patch, angle[idx], scale[idx],
                                   flip_x[idx], flip_y[idx], pad_value)
    out_image[idx] = moved.to(out_image.dtype)
    out_label[idx] = moved_label.to(out_label.dtype)
    return out_image, out_label


def _resample(image, label, patch, angle, scale, flip_x, flip_y, pad_value: float):
    """The patch of each sample under its own rotation, scale and flips (bilinear; the
    label through the same grid, cut at 0.5)."""
    n, _, wy, wx = image.shape
    py, px = patch
    dev = image.device
    cos, sin = torch.cos(angle), torch.sin(angle)
    # pixel-space map from output offsets to input offsets, then normalised coordinates
    a = torch.stack([torch.stack([cos * scale * flip_x, -sin * scale * flip_y], -1),
                     torch.stack([sin * scale * flip_x, cos * scale * flip_y], -1)], -2)
    to_norm = torch.tensor([[2 / wx, 0], [0, 2 / wy]], device=dev)
    from_norm = torch.tensor([[px / 2, 0], [0, py / 2]], device=dev)
    theta = torch.cat([to_norm @ a @ from_norm, torch.zeros(n, 2, 1, device=dev)], dim=2)
    grid = F.affine_grid(theta, (n, 1, py, px), align_corners=False)
    moved = F.grid_sample(image.float() - pad_value, grid, mode="bilinear",
                          padding_mode="zeros", align_corners=False) + pad_value
    moved_label = F.grid_sample(label[:, None].float(), grid, mode="bilinear",
                                padding_mode="zeros", align_corners=False)[:, 0] >= 0.5
    return moved, moved_label


def intensity(image, config: AugmentConfig, generator: torch.Generator | None = None,
              sync_free: bool = False):
    """Brightness, contrast, gamma and noise, each drawn per sample; returns a new tensor.

    Every draw is made whatever was picked, so both paths (``sync_free``) take the same
    numbers from ``generator``; a sample not picked keeps its values exactly.
    """
    x = image.float().clone()
    b = x.shape[0]
    dev = x.device
    view = (b, 1, 1, 1)

    def drawn(pick):  # whether to compute a transform some sample may have drawn
        return sync_free or bool(pick.any())

    pick = _chance(b, config.p_brightness, generator, dev)
    factor = torch.where(pick, _uniform(b, *config.brightness, generator, dev), 1.0)
    x = x * factor.view(view)
    pick = _chance(b, config.p_contrast, generator, dev)
    factor = _uniform(b, *config.contrast, generator, dev).view(view)
    if drawn(pick):
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        y = torch.maximum(torch.minimum((x - mean) * factor + mean, high), low)
        x = torch.where(pick.view(view), y, x)
    pick = _chance(b, config.p_gamma, generator, dev)
    g = _uniform(b, *config.gamma, generator, dev).view(view)
    if drawn(pick):
        mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        span = (x.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(1e-6)
        y = ((x - low) / span).clamp(0, 1) ** g * span + low
        y = (y - y.mean(dim=(1, 2, 3), keepdim=True)) / \
            y.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * std + mean
        x = torch.where(pick.view(view), y, x)
    pick = _chance(b, config.p_noise, generator, dev)
    sd = _uniform(b, *config.noise_variance, generator, dev).sqrt()
    noise = torch.randn(x.shape, generator=generator, device=dev)
    if drawn(pick):
        x = torch.where(pick.view(view), x + noise * sd.view(view), x)
    return x


def augment(image, label, patch, config: AugmentConfig, pad_value: float = 0.0,
            generator: torch.Generator | None = None, sync_free: bool = False):
    """Spatial then intensity augmentation of one batch (``sync_free``: see the module)."""
    image, label = spatial(image, label, patch, config, pad_value, generator, sync_free)
    return intensity(image, config, generator, sync_free), label
