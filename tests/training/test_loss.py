"""Dice + CE with deep supervision: it trains, and partial labels do not punish far lesions."""

import pytest
import torch

from inference.model import build_model
from training.loss import DeepSupervisionLoss, deep_supervision_weights, dice_ce


def test_deep_supervision_weights_halve_and_sum_to_one():
    w = deep_supervision_weights(4)
    assert abs(sum(w) - 1) < 1e-9 and all(abs(a / b - 2) < 1e-9 for a, b in zip(w, w[1:]))


def test_loss_decreases_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = build_model("tiny")
    model.set_temperature(1.0)
    model.set_dynamic_form("branches")
    model.train()
    x = torch.randn(2, 3, 32, 32)
    y = torch.zeros(2, 32, 32, dtype=torch.uint8)
    y[:, 10:20, 12:22] = 1
    x[:, :, 10:20, 12:22] += 2.0
    loss_fn = DeepSupervisionLoss("plain")
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def _case():
    """A labelled lesion top-left; the network also calls a far region lesion."""
    label = torch.zeros(1, 64, 64, dtype=torch.uint8)
    label[0, 5:15, 5:15] = 1
    logits = torch.zeros(1, 2, 64, 64)
    logits[0, 1, 5:15, 5:15] = 3.0
    logits[0, 1, 45:58, 45:58] = 3.0  # lesion-like, far from the labelled one
    logits[0, 1, 15:18, 5:15] = 3.0  # an over-segmentation right next to the label
    return logits.requires_grad_(True), label


def test_partial_ignore_leaves_far_lesion_like_predictions_unpunished():
    logits, label = _case()
    loss = DeepSupervisionLoss("ignore", margin=8)(logits, label, torch.tensor([True]))
    loss.backward()
    grad = logits.grad.abs().sum(dim=1)[0]
    assert grad[45:58, 45:58].max() == 0  # the far prediction costs nothing
    assert grad[15:18, 5:15].min() > 0  # errors next to the marked lesion still count
    assert grad[5:15, 5:15].min() > 0


def test_plain_mode_and_complete_labels_punish_everywhere():
    for mode, partial in (("plain", True), ("ignore", False)):
        logits, label = _case()
        DeepSupervisionLoss(mode)(logits, label, torch.tensor([partial])).backward()
        assert logits.grad.abs().sum(dim=1)[0, 45:58, 45:58].min() > 0


def test_heads_start_at_the_lesion_prior():
    from training.trainer import init_lesion_prior

    model = build_model("tiny")
    init_lesion_prior(model, 0.01)
    for head in model.heads:
        p = torch.softmax(head.bias.detach(), 0)[1].item()
        assert abs(p - 0.01) < 1e-6


def _big_and_small(background_logit: float = -4.0):
    """Sample 0 holds a 28x28 lesion, sample 1 a 2x2 one; the network calls both background
    with the same confidence."""
    label = torch.zeros(3, 32, 32, dtype=torch.uint8)
    label[0, 2:30, 2:30] = 1
    label[1, 10:12, 10:12] = 1  # sample 2 holds no lesion
    logits = torch.zeros(3, 2, 32, 32)
    logits[:, 1] = background_logit
    return logits.requires_grad_(True), label


def test_sample_dice_weighs_a_small_lesion_like_a_large_one():
    pulls = {}
    for mode in ("batch", "sample"):
        logits, label = _big_and_small()
        ce = torch.nn.functional.cross_entropy(logits, label.long())
        (dice_ce(logits, label, dice=mode) - ce).backward()  # the Dice term alone
        lesion_grad = -logits.grad[:, 1]  # how hard each lesion voxel is pushed up
        pulls[mode] = (lesion_grad[1, 10:12, 10:12].mean()
                       / lesion_grad[0, 2:30, 2:30].mean()).item()
    assert pulls["batch"] == pytest.approx(1.0, rel=1e-4)  # one pooled Dice: same pull per voxel
    assert pulls["sample"] > 20  # its own Dice: the small lesion's voxels pulled far harder


def test_sample_dice_is_the_mean_over_samples_with_lesions():
    logits, label = _big_and_small()
    p = torch.softmax(logits.detach(), 1)[:, 1]
    per_sample = [(2 * (p[i] * label[i]).sum() + 1e-5) / (p[i].sum() + label[i].sum() + 1e-5)
                  for i in (0, 1)]  # sample 2, without a lesion, has no Dice term
    ce = torch.nn.functional.cross_entropy(logits.detach(), label.long())
    expected = ce + 1 - (per_sample[0] + per_sample[1]) / 2
    assert dice_ce(logits.detach(), label, dice="sample").item() == pytest.approx(expected.item(),
                                                                                   rel=1e-5)
    no_lesion = torch.zeros_like(label)
    assert dice_ce(logits.detach(), no_lesion, dice="sample").item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.detach(), no_lesion.long()).item(), rel=1e-6)
    with pytest.raises(ValueError, match="dice must be one of"):
        DeepSupervisionLoss(dice="lesion")


def test_nnunet_deep_supervision_leaves_the_coarsest_output_out():
    w = deep_supervision_weights(4, "nnunet")
    assert w[-1] == 0 and abs(sum(w) - 1) < 1e-9 and abs(w[0] / w[1] - 2) < 1e-9
    assert deep_supervision_weights(1, "nnunet") == [1.0]
    with pytest.raises(ValueError, match="deep supervision"):
        DeepSupervisionLoss(deep_supervision="all")
    # a small lesion that nearest downsampling keeps only in the finer labels: whatever the
    # coarsest head says costs nothing under "nnunet", and the head still gets a gradient
    torch.manual_seed(0)
    label = torch.zeros(1, 16, 16, dtype=torch.uint8)
    label[0, 5, 5] = 1
    outputs = [torch.randn(1, 2, s, s, requires_grad=True) for s in (16, 8, 4)]
    fire = [o.detach().clone().requires_grad_() for o in outputs]
    with torch.no_grad():
        fire[-1][:, 1] += 20  # the coarsest head calls everything lesion
    plain = DeepSupervisionLoss("plain", deep_supervision="nnunet")
    assert abs(plain(outputs, label).item() - plain(fire, label).item()) < 1e-6
    plain(outputs, label).backward()
    assert outputs[-1].grad is not None and float(outputs[-1].grad.abs().sum()) == 0
    halving = DeepSupervisionLoss("plain")
    assert halving(fire, label).item() > halving(outputs, label).item()
