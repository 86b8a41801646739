"""2.5D sampler oversampling and augmentation that keeps image and label aligned."""

import numpy as np
import torch

from training.augment import NO_AUGMENT, AugmentConfig, augment, spatial
from training.preprocessing import cached_cases
from training.sampling import PatchSampler, load_cases


def test_about_one_third_of_samples_are_centred_on_a_lesion(cache):
    cases = load_cases(cache, cached_cases(cache))
    sampler = PatchSampler(cases, (64, 64), 3)
    rng = np.random.default_rng(0)
    samples = [sampler.sample(rng) for _ in range(600)]
    flags = np.array([s[3] for s in samples])
    assert abs(flags.mean() - 1 / 3) < 0.06
    # a foreground sample holds lesion voxels inside its central patch
    wy, wx = sampler.window
    centre = (slice((wy - 64) // 2, (wy + 64) // 2), slice((wx - 64) // 2, (wx + 64) // 2))
    hits = [s[1][centre].any() for s in samples if s[3]]
    assert np.mean(hits) == 1.0
    image, label, _, _ = samples[0]
    assert image.shape == (3, wy, wx) and label.shape == (wy, wx)


def _pattern(b=6, size=96):
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(b, size, size, dtype=torch.uint8)
    for i in range(b):
        y, x = torch.randint(20, 60, (2,), generator=g).tolist()
        label[i, y:y + 18, x:x + 9] = 1  # asymmetric, so a wrong flip or turn shows
        label[i, 30:34, 10:70] = 1
    image = label[:, None].float().repeat(1, 3, 1, 1) * 5 - 2
    return image, label


def test_spatial_augmentation_moves_image_and_label_together():
    image, label = _pattern()
    config = AugmentConfig(p_rotation=1.0, p_scale=1.0, p_mirror=0.5)
    out_image, out_label = spatial(image, label, (64, 64), config, pad_value=-2.0,
                                   generator=torch.Generator().manual_seed(1))
    assert out_image.shape == (6, 3, 64, 64) and out_label.shape == (6, 64, 64)
    bright = out_image[:, 1] > 0.5
    agree = (bright == out_label.bool()).float().mean().item()
    assert agree > 0.99
    assert not torch.equal(out_label, label[:, 16:80, 16:80])  # something did move


def test_no_augmentation_is_an_exact_centre_crop():
    image, label = _pattern()
    out_image, out_label = augment(image, label, (64, 64), NO_AUGMENT)
    assert torch.equal(out_image, image[:, :, 16:80, 16:80])
    assert torch.equal(out_label, label[:, 16:80, 16:80])


def test_intensity_augmentation_changes_values_not_shape():
    image, label = _pattern()
    config = AugmentConfig(p_rotation=0, p_scale=0, p_mirror=0, p_brightness=1, p_contrast=1,
                           p_gamma=1, p_noise=1)
    out_image, out_label = augment(image, label, (64, 64), config,
                                   generator=torch.Generator().manual_seed(2))
    assert out_image.shape == (6, 3, 64, 64) and torch.isfinite(out_image).all()
    assert not torch.allclose(out_image, image[:, :, 16:80, 16:80])
    assert torch.equal(out_label, label[:, 16:80, 16:80])


def _two_lesion_case():
    """One case: a 20x20x4-voxel lesion and a single-voxel one, far apart."""
    from training.sampling import CachedCase, lesion_components

    label = np.zeros((8, 96, 96), np.uint8)
    label[2:6, 10:30, 10:30] = 1
    label[4, 80, 80] = 1
    image = np.zeros(label.shape, np.float16)
    coords = np.argwhere(label)
    return CachedCase("two", image, label, coords, False, (4.0, 2.0, 2.0),
                      lesion_components(label))


def test_lesion_components_split_the_label_into_its_lesions():
    case = _two_lesion_case()
    assert sorted(len(c) for c in case.lesions) == [1, 1600]
    assert [tuple(c[0]) for c in case.lesions if len(c) == 1] == [(4, 80, 80)]


def test_lesion_sampling_gives_a_small_lesion_as_many_samples_as_a_large_one():
    case = _two_lesion_case()
    small = []
    for mode in ("voxel", "lesion"):
        sampler = PatchSampler([case], (32, 32), 3, oversample=1.0, lesion_sampling=mode)
        rng = np.random.default_rng(0)
        # the small lesion sits 50 px from the large one: a sample holds only one of them
        hits = [sampler.sample(rng)[1].sum() == 1 for _ in range(400)]
        small.append(np.mean(hits))
    voxel, lesion = small
    assert voxel < 0.02  # 1 of 1601 voxels
    assert 0.4 < lesion < 0.6


def test_unknown_lesion_sampling_is_refused():
    import pytest

    with pytest.raises(ValueError, match="lesion_sampling"):
        PatchSampler([_two_lesion_case()], (32, 32), 3, lesion_sampling="size")


def _case(name, label, image):
    from training.sampling import CachedCase, lesion_components

    return CachedCase(name, image, label, np.argwhere(label), False, (4.0, 2.0, 2.0),
                      lesion_components(label))


def _augmented_batches(sampler, config, seed, n=2000, batch=200):
    """(image, label) of ``n`` sampled then augmented patches; intensity left alone."""
    from dataclasses import replace

    config = replace(config, p_brightness=0, p_contrast=0, p_gamma=0, p_noise=0)
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    for _ in range(n // batch):
        b = sampler.batch(rng, batch)
        yield augment(b["image"], b["label"], sampler.patch, config, sampler.pad_value,
                      generator)


def test_augmentation_never_pulls_padding_into_a_patch_of_body():
    from training.augment import LIGHT, NNUNET

    # body (1) everywhere; samples on the central lesion, so every window lies in the volume
    label = np.zeros((4, 240, 240), np.uint8)
    label[1:3, 115:125, 115:125] = 1
    case = _case("body", label, np.ones(label.shape, np.float16))
    for config in (NNUNET, LIGHT):
        # the default is the nnunet ranges, the trainer's default
        sampler = PatchSampler([case], (32, 32), 3, oversample=1.0, pad_value=0.0,
                               **({} if config is NNUNET else {"augmentation": config}))
        # a pixel touched by padding (0) is no longer body; 2000 samples
        padded = [((image - 1).abs() > 1e-4).float().mean().item()
                  for image, _ in _augmented_batches(sampler, config, seed=0)]
        # before the fix (a 1.5x window), nnunet: 4.0e-4 of the pixels, in 0.95 % of samples
        assert np.mean(padded) == 0.0


def test_the_window_follows_the_augmentation_ranges():
    from training.augment import AUGMENTATIONS

    case = _two_lesion_case()
    windows = {name: PatchSampler([case], (64, 48), 3, augmentation=config).window
               for name, config in AUGMENTATIONS.items()}
    assert windows["none"] == (64, 48)
    # any rotation (nnunet) turns the patch's 79 px diagonal onto each axis; zoom-out 1.4
    assert all(w > 1.4 * 79 for w in windows["nnunet"])
    assert all(none < light < nnunet for none, light, nnunet in
               zip(windows["none"], windows["light"], windows["nnunet"]))


def test_every_lesion_sample_keeps_its_lesion_after_augmentation():
    from training.augment import LIGHT, NNUNET

    rng = np.random.default_rng(4)
    cases = []
    for i in range(12):  # one lesion per case, 3 to 6 voxels a side, anywhere
        label = np.zeros((5, 128, 128), np.uint8)
        (z, y, x), (h, w) = rng.integers((1, 0, 0), (4, 122, 122)), rng.integers(3, 7, 2)
        label[z, y:y + h, x:x + w] = 1
        cases.append(_case(f"c{i}", label, np.zeros(label.shape, np.float16)))
    for config in (NNUNET, LIGHT):
        sampler = PatchSampler(cases, (32, 32), 3, oversample=1.0,
                               **({} if config is NNUNET else {"augmentation": config}))
        kept = [label.flatten(1).any(1).float().mean().item()
                for _, label in _augmented_batches(sampler, config, seed=1)]
        # before the fix (offsets to the patch's edge): 98.75 % (nnunet), 99.55 % (light)
        assert np.mean(kept) == 1.0


def test_augmentation_that_asks_the_device_nothing_gives_the_same_batch():
    """``sync_free`` (a GPU's path) transforms every sample and keeps the drawn ones: the
    same patches, labels and intensities as skipping the samples that drew nothing."""
    from dataclasses import replace

    from training.augment import LIGHT, NNUNET

    image = torch.randn(16, 3, 90, 90)
    label = (torch.rand(16, 90, 90) > 0.7).to(torch.uint8)
    rarely = replace(NNUNET, p_rotation=0.02, p_scale=0.02, p_mirror=0.02, p_contrast=0.02,
                     p_gamma=0.02, p_noise=0.02)  # most batches skip some transform
    for config in (NNUNET, LIGHT, rarely):
        for seed in range(3):
            out = [augment(image, label, (64, 64), config, -1.0,
                           torch.Generator().manual_seed(seed), sync_free=sync_free)
                   for sync_free in (False, True)]
            assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
            assert out[1][1].dtype == torch.uint8 and out[1][0].shape == (16, 3, 64, 64)


def test_batch_stream_is_the_same_with_any_number_of_workers_and_on_resume():
    """Each batch's seed is its own (seed, rank, epoch, number): workers deal the batches
    out in order, and a stream started at epoch 1 (a resumed run) is the tail of one
    started at 0."""
    from training.sampling import BatchStream, batch_loader

    label = np.zeros((6, 80, 80), np.uint8)
    label[2:4, 30:40, 30:40] = 1
    rng = np.random.default_rng(0)
    case = _case("c", label, rng.standard_normal(label.shape).astype(np.float16))
    sampler = PatchSampler([case], (32, 32), 3, oversample=0.5)

    def images(first, workers):
        stream = BatchStream(sampler, 2, 3, 7, 0, first, 3)
        return [b["image"] for b in batch_loader(stream, workers, torch.device("cpu"))]

    alone = images(0, 0)
    assert len(alone) == 9
    for other in (images(0, 2), images(0, 3)):
        assert len(other) == 9 and all(torch.equal(a, b) for a, b in zip(alone, other))
    resumed = images(1, 2)
    assert all(torch.equal(a, b) for a, b in zip(alone[3:], resumed)) and len(resumed) == 6
    assert not torch.equal(alone[0], alone[3])
