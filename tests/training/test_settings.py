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


def test_the_command_line_builds_the_settings_once_with_the_settings_defaults():
    from training.__main__ import parser
    from training.settings import StepOptions, TrainSettings

    args = parser().parse_args(["train", "-p", "plans.json", "-c", "cache", "-o", "run"])
    settings = TrainSettings.from_args(args)
    assert settings == TrainSettings(Path("plans.json"), Path("cache"), Path("run"))
    argv = ["train", "-p", "p", "-c", "c", "-o", "o", "--no-augment", "--val-cases", "a", "b",
            "--adam", "fused", "--disable-progress-bar", "--init-weights", "w.pt"]
    settings = TrainSettings.from_args(parser().parse_args(argv))
    assert settings.augmentation == "none" and settings.val_cases == ("a", "b")
    assert settings.step == StepOptions(adam="fused") and not settings.show_progress
    assert settings.init_weights == Path("w.pt")


def test_settings_made_in_code_are_checked_in_one_line():
    import dataclasses

    import pytest

    from training.settings import TrainSettings

    settings = TrainSettings(Path("p"), Path("c"), Path("o"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.epochs = 3
    with pytest.raises(ValueError, match="dice must be one of batch, sample, got 'voxel'"):
        TrainSettings(Path("p"), Path("c"), Path("o"), dice="voxel")
