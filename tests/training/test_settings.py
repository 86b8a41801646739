"""training.settings: the values each training option may take, defined once."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_line_offers_its_choices_without_importing_torch():
    code = ("import sys; from training.__main__ import parser; parser().parse_args("
            "['plan', '-d', 'x', '-o', 'y']); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "False"


def test_every_augmentation_name_has_its_ranges():
    from training.augment import AUGMENTATIONS
    from training.settings import AUGMENTATION_NAMES

    assert tuple(AUGMENTATIONS) == AUGMENTATION_NAMES


def test_the_choices_are_the_ones_the_modules_check():
    import pytest

    from training.loss import DeepSupervisionLoss
    from training.settings import DICE_MODES, LOSS_KERNELS, PARTIAL_MODES

    for partial in PARTIAL_MODES:
        for dice in DICE_MODES:
            for kernels in LOSS_KERNELS:
                DeepSupervisionLoss(partial_mode=partial, dice=dice, kernels=kernels)
    with pytest.raises(ValueError, match="dice must be one of"):
        DeepSupervisionLoss(dice="voxel")
