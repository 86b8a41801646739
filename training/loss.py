"""Dice + cross-entropy with deep supervision, and what to do with partial labels.

Deep supervision: the network's outputs (full resolution first) are each compared
with the label downsampled to their size (nearest), weighted 1, 1/2, 1/4, ...
normalised to sum to one (``"halving"``); ``"nnunet"`` also gives the coarsest output
weight 0, as nnU-Net does: nearest downsampling to its few pixels drops a small lesion
from the label, so that head learns that small lesions are background.

Partial labels (FLARE: often only the main lesion of a scan is marked). The paper
trained on them as if complete, which teaches the network that every unmarked lesion
is background. ``partial_mode="ignore"`` (our default) instead, in cases flagged
partial, leaves out of both loss terms the background voxels that are

  * farther than ``margin`` voxels from every labelled lesion voxel of the sample, and
  * predicted lesion by the current network (p > 0.5, no gradient through the choice).

So a confident lesion-like prediction away from the marked lesion costs nothing (it may
be an unmarked lesion), while the marked lesion, its surroundings (where boundary errors
live) and every voxel the network calls background still train as usual; the network
is never pushed towards lesions by this, only not pushed away from them.
``partial_mode="plain"`` is the paper's behaviour. Fully labelled cases are unaffected.

How it is computed (``kernels``): ``"per-level"`` runs Dice + CE on each output in turn,
a few dozen small operations per level; ``"batched"`` flattens every level into one
tensor and does the same arithmetic once, with one sum per level for the reductions: the
same loss (up to the order of float sums) in a fraction of the operations, and so of the
kernel launches on a GPU. It also never asks the device a question (the partial mask is
computed whether or not a sample is partial), so a step can run ahead of the device or be
captured as a CUDA graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.settings import DEEP_SUPERVISION, DICE_MODES, LOSS_KERNELS, PARTIAL_MODES


def deep_supervision_weights(n: int, scheme: str = "halving") -> list[float]:
    """Loss weight of each of ``n`` outputs (full resolution first), summing to one."""
    if scheme not in DEEP_SUPERVISION:
        raise ValueError(f"deep supervision must be one of {DEEP_SUPERVISION}, got {scheme!r}")
    w = [0.5 ** i for i in range(n)]
    if scheme == "nnunet" and n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [v / total for v in w]


def partial_ignore_mask(logits, label, partial, margin: int = 8):
    """Boolean (B, H, W): voxels to leave out for partially labelled samples (see module)."""
    with torch.no_grad():
        lesion_like = (logits[:, 1] - logits[:, 0]) > 0  # softmax p(lesion) > 0.5
        fg = label.float()[:, None]
        # a square maximum is a row maximum of column maxima: 2k+1 reads a voxel, not (2k+1)^2
        near = F.max_pool2d(F.max_pool2d(fg, (2 * margin + 1, 1), stride=1, padding=(margin, 0)),
                            (1, 2 * margin + 1), stride=1, padding=(0, margin))[:, 0] > 0
        far_background = (label == 0) & ~near
        return far_background & lesion_like & partial.view(-1, 1, 1).to(label.device)


def dice_ce(logits, label, valid=None, smooth: float = 1e-5, dice: str = "batch"):
    """Soft Dice of the lesion channel + cross-entropy, on ``valid`` voxels.

    ``dice="batch"`` pools the batch into one Dice (nnU-Net's 2D default); ``"sample"``
    averages the Dice of each sample that holds lesion voxels, so a small lesion's patch
    weighs as much as a large one's instead of vanishing beside it (a batch without
    lesion voxels then has no Dice term; cross-entropy still trains its background).
    """
    if dice not in DICE_MODES:
        raise ValueError(f"dice must be one of {DICE_MODES}, got {dice!r}")
    logits = logits.float()
    target = label.long()
    weight = torch.ones_like(label, dtype=torch.float32) if valid is None else valid.float()
    ce = F.cross_entropy(logits, target, reduction="none")
    ce = (ce * weight).sum() / weight.sum().clamp_min(1.0)
    p = torch.softmax(logits, dim=1)[:, 1] * weight
    t = (target == 1).float() * weight
    if dice == "batch":
        score = (2 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)
        return ce + (1 - score)
    dims = tuple(range(1, p.dim()))
    has_lesion = (t.sum(dims) > 0).float()
    score = (2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    # A masked mean, not a branch on the mask: no host-device sync in the training loop.
    return ce + ((1 - score) * has_lesion).sum() / has_lesion.sum().clamp_min(1.0)


class DeepSupervisionLoss(torch.nn.Module):
    def __init__(self, partial_mode: str = "ignore", margin: int = 8, dice: str = "batch",
                 deep_supervision: str = "halving", kernels: str = "per-level"):
        super().__init__()
        if partial_mode not in PARTIAL_MODES:
            raise ValueError(f"partial_mode must be one of {PARTIAL_MODES}, got {partial_mode!r}")
        if dice not in DICE_MODES:
            raise ValueError(f"dice must be one of {DICE_MODES}, got {dice!r}")
        if kernels not in LOSS_KERNELS:
            raise ValueError(f"kernels must be one of {LOSS_KERNELS}, got {kernels!r}")
        deep_supervision_weights(1, deep_supervision)  # refuses an unknown scheme now
        self.partial_mode, self.margin, self.dice = partial_mode, margin, dice
        self.deep_supervision, self.kernels = deep_supervision, kernels
        self._level_weights = {}  # (weights, device) -> tensor, made once

    def level_weights(self, weights: list[float], device) -> torch.Tensor:
        """``weights`` as a tensor on ``device``, made on the first call only: a copy from
        the host inside a CUDA graph's capture is not allowed, and each would be one more
        transfer per step."""
        key = (tuple(weights), str(device))
        if key not in self._level_weights:
            self._level_weights[key] = torch.tensor(weights, device=device)
        return self._level_weights[key]

    def forward(self, outputs, label, partial=None):
        if torch.is_tensor(outputs):
            outputs = [outputs]
        weights = deep_supervision_weights(len(outputs), self.deep_supervision)
        if self.kernels == "batched" and _halvings(outputs, label) is not None:
            ignore = None
            if self.partial_mode == "ignore" and partial is not None:
                ignore = partial_ignore_mask(outputs[0], label, partial, self.margin)
            return batched_dice_ce(outputs, label, self.level_weights(weights, label.device),
                                   ignore, dice=self.dice)
        ignore = None
        if self.partial_mode == "ignore" and partial is not None and bool(partial.any()):
            ignore = partial_ignore_mask(outputs[0], label, partial, self.margin)
        total = 0.0
        # A weight-0 head stays in the graph (zero gradients): DDP expects every parameter
        # to receive one.
        for w, logits in zip(weights, outputs):
            size = logits.shape[-2:]
            target = label if label.shape[-2:] == size else \
                F.interpolate(label[:, None].float(), size=size, mode="nearest")[:, 0]
            valid = None
            if ignore is not None:
                valid = ~ignore if ignore.shape[-2:] == size else \
                    F.interpolate(ignore[:, None].float(), size=size, mode="nearest")[:, 0] < 0.5
            total = total + w * dice_ce(logits, target, valid, dice=self.dice)
        return total


def _halvings(outputs, label) -> list[int] | None:
    """Each output's downsampling factor from the label, or None unless every one is a whole
    number in both axes (nearest downsampling is then a strided slice)."""
    height, width = label.shape[-2:]
    factors = []
    for logits in outputs:
        h, w = logits.shape[-2:]
        if height % h or width % w or height // h != width // w:
            return None
        factors.append(height // h)
    return factors


def batched_dice_ce(outputs, label, weights: torch.Tensor, ignore=None, smooth: float = 1e-5,
                    dice: str = "batch"):
    """``sum_l weights[l] * dice_ce(outputs[l], label at that level, ...)`` in one pass
    (``weights`` a tensor on the outputs' device).

    Every level's logits go into one (B, 2, N) tensor and its label (nearest-downsampled,
    a strided slice) into one (B, N); cross-entropy, softmax and the products run once,
    and the five sums each level needs (CE, its weight, p*t, p, t) come from one stacked
    tensor, one sum per level.
    """
    factors = _halvings(outputs, label)
    logits = torch.cat([o.flatten(2) for o in outputs], dim=2).float()
    target = torch.cat([label[:, ::f, ::f].flatten(1) for f in factors], dim=1).long()
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.softmax(logits, dim=1)[:, 1]
    t = (target == 1).float()
    if ignore is None:
        weight = torch.ones_like(t)
    else:
        weight = torch.cat([~ignore[:, ::f, ::f].flatten(1) for f in factors], dim=1).float()
    p, t = p * weight, t * weight
    stacked = torch.stack([ce * weight, weight, p * t, p, t])  # (5, B, N)
    sizes = [o.shape[-2] * o.shape[-1] for o in outputs]
    # (5, B, L): one sum per level over its own voxels, as dice_ce sums each level
    sums = torch.stack([part.sum(dim=2) for part in stacked.split(sizes, dim=2)], dim=2)
    ce_term = sums[0].sum(0) / sums[1].sum(0).clamp_min(1.0)
    if dice == "batch":
        whole = sums[2:].sum(1)
        dice_term = 1 - (2 * whole[0] + smooth) / (whole[1] + whole[2] + smooth)
    else:
        score = (2 * sums[2] + smooth) / (sums[3] + sums[4] + smooth)
        has_lesion = (sums[4] > 0).float()
        dice_term = ((1 - score) * has_lesion).sum(0) / has_lesion.sum(0).clamp_min(1.0)
    return (weights * (ce_term + dice_term)).sum()
