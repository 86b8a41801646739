"""The sliding-window engine equals a plain reference implementation."""

import numpy as np
import pytest
import torch

from inference.sliding_window import gaussian_importance, plan_tiles, sliding_window, tile_starts

PATCH = (16, 20)


def fake_network(tiles):
    """Position-sensitive and content-sensitive, so a misplaced tile changes the result."""
    t = tiles if isinstance(tiles, np.ndarray) else tiles.numpy()
    out = 1 / (1 + np.exp(-(t[:, 0] * 0.3 + t[:, 1] - 0.7 * t[:, 2])))
    return out if isinstance(tiles, np.ndarray) else torch.from_numpy(out)


def reference(volume, predict, patch, step, context):
    """One tile at a time, every tile, whole-volume accumulators: the definition."""
    nz, ny, nx = volume.shape
    half = context // 2
    acc = np.zeros(volume.shape, np.float64)
    norm = np.zeros(volume.shape, np.float64)
    g = gaussian_importance(patch).astype(np.float64)
    for z in range(nz):
        idx = np.clip(np.arange(z - half, z + half + 1), 0, nz - 1)
        for y in tile_starts(ny, patch[0], step):
            for x in tile_starts(nx, patch[1], step):
                tile = volume[idx, y:y + patch[0], x:x + patch[1]][None]
                p = predict(tile)[0]
                acc[z, y:y + patch[0], x:x + patch[1]] += p * g
                norm[z, y:y + patch[0], x:x + patch[1]] += g
    return acc / norm


@pytest.fixture
def volume():
    return np.random.default_rng(0).normal(size=(9, 37, 45)).astype(np.float32)


def test_tile_starts_cover_the_axis():
    assert tile_starts(10, 16, 0.5) == [0]
    assert tile_starts(16, 16, 0.5) == [0]
    starts = tile_starts(45, 20, 0.5)
    assert starts[0] == 0 and starts[-1] == 25
    assert all(b - a <= 10 for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("batch,slab", [(1, 1), (4, 3), (7, 32)])
def test_equals_reference(volume, batch, slab):
    expected = reference(volume, fake_network, PATCH, 0.5, 3)
    got = sliding_window(volume, fake_network, PATCH, 0.5, 3, batch_size=batch, slab_slices=slab)
    assert got.shape == volume.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_five_slice_context_and_larger_step(volume):
    expected = reference(volume, fake_network, PATCH, 0.9, 5)
    got = sliding_window(volume, fake_network, PATCH, 0.9, 5, batch_size=5)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_torch_tensor_input_gives_the_same_result(volume):
    expected = sliding_window(volume, fake_network, PATCH, 0.5, 3, batch_size=4)
    got = sliding_window(torch.from_numpy(volume), fake_network, PATCH, 0.5, 3, batch_size=4)
    assert isinstance(got, torch.Tensor)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)


def test_volume_smaller_than_a_patch_is_padded():
    small = np.random.default_rng(1).normal(size=(3, 10, 12)).astype(np.float32)
    padded = np.full((3, 16, 20), -2.0, np.float32)
    padded[:, :10, :12] = small
    expected = reference(padded, fake_network, PATCH, 0.5, 3)[:, :10, :12]
    got = sliding_window(small, fake_network, PATCH, 0.5, 3, pad_value=-2.0)
    assert got.shape == small.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tiles_outside_the_body_are_skipped(volume):
    body = np.zeros(volume.shape, bool)
    body[2:5, 3:12, 4:15] = True
    calls = []

    def counting(tiles):
        calls.append(len(tiles))
        return fake_network(tiles)

    got = sliding_window(volume, counting, PATCH, 0.5, 3, batch_size=64, body=body)
    full = len(plan_tiles(volume.shape, PATCH, 0.5))
    assert sum(calls) == len(plan_tiles(volume.shape, PATCH, 0.5, body)) < full / 3
    assert np.all(got[[0, 1, 5, 6, 7, 8]] == 0)
    # The slices with body are predicted; the tile at the origin covers the body box.
    assert np.all(got[2:5, 3:12, 4:15] > 0)


def test_out_of_memory_halves_the_batch_and_gives_the_same_result(volume):
    class FakeOOM(RuntimeError):
        pass

    sizes = []

    def fragile(tiles):
        sizes.append(len(tiles))
        if len(tiles) > 2:
            raise FakeOOM("out of memory")
        return fake_network(tiles)

    expected = sliding_window(volume, fake_network, PATCH, 0.5, 3, batch_size=8)
    got = sliding_window(volume, fragile, PATCH, 0.5, 3, batch_size=8, oom_errors=(FakeOOM,))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert sizes[:3] == [8, 4, 2] and max(sizes[3:]) <= 2

    def always(tiles):
        raise FakeOOM("out of memory")

    with pytest.raises(FakeOOM):
        sliding_window(volume, always, PATCH, 0.5, 3, batch_size=4, oom_errors=(FakeOOM,))


def test_blending_to_host_slab_by_slab_gives_the_same_result(volume):
    expected = sliding_window(volume, fake_network, PATCH, 0.5, 3, batch_size=4)
    got = sliding_window(torch.from_numpy(volume), fake_network, PATCH, 0.5, 3, batch_size=4,
                         slab_slices=2, to_host=True)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-6)
