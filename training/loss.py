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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PARTIAL_MODES = ("ignore", "plain")
DICE_MODES = ("batch", "sample")
DEEP_SUPERVISION = ("halving", "nnunet")


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
        near = F.max_pool2d(fg, 2 * margin + 1, stride=1, padding=margin)[:, 0] > 0
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
                 deep_supervision: str = "halving"):
        super().__init__()
        if partial_mode not in PARTIAL_MODES:
            raise ValueError(f"partial_mode must be one of {PARTIAL_MODES}, got {partial_mode!r}")
        if dice not in DICE_MODES:
            raise ValueError(f"dice must be one of {DICE_MODES}, got {dice!r}")
        deep_supervision_weights(1, deep_supervision)  # refuses an unknown scheme now
        self.partial_mode, self.margin, self.dice = partial_mode, margin, dice
        self.deep_supervision = deep_supervision

    def forward(self, outputs, label, partial=None):
        if torch.is_tensor(outputs):
            outputs = [outputs]
        weights = deep_supervision_weights(len(outputs), self.deep_supervision)
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
