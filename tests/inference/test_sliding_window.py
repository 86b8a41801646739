"""The sliding-window engine equals a plain reference implementation."""

import numpy as np
import pytest
import torch

from inference.sliding_window import (
    gaussian_importance,
    plan_tiles,
    sliding_window,
    tile_starts,
    weight_sum_plane,
)

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


def per_tile_formula(volume, predict, patch, step, context, batch_size, slab_slices, body=None):
    """The engine's earlier blending: weight summed tile by tile, masked division per slab.

    float32 throughout and in the engine's tile order, so the engine must match it bit
    for bit, not just within a tolerance.
    """
    nz, ny, nx = volume.shape
    half = context // 2
    g = gaussian_importance(patch)
    out = np.zeros(volume.shape, np.float32)
    tiles = plan_tiles(volume.shape, patch, step, body)
    for z0 in range(0, nz, slab_slices):
        slab = [t for t in tiles if z0 <= t.z < z0 + slab_slices]
        acc = np.zeros((min(slab_slices, nz - z0), ny, nx), np.float32)
        norm = np.zeros_like(acc)
        for b in range(0, len(slab), batch_size):
            chunk = slab[b:b + batch_size]
            batch = np.stack([volume[np.clip(np.arange(t.z - half, t.z + half + 1), 0, nz - 1),
                                     t.y:t.y + patch[0], t.x:t.x + patch[1]] for t in chunk])
            for t, p in zip(chunk, predict(batch)):
                region = (t.z - z0, slice(t.y, t.y + patch[0]), slice(t.x, t.x + patch[1]))
                acc[region] += p * g
                norm[region] += g
        covered = norm > 0
        acc[covered] /= norm[covered]
        out[z0:z0 + len(acc)] = acc
    return out


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


def body_with_changing_extent(shape):
    """A body whose box differs from slice to slice, so slices get different tile layouts."""
    body = np.zeros(shape, bool)
    body[1:3, 2:10, 3:12] = True
    body[3:6, 20:35, 25:44] = True
    body[6:8, 5:30, 2:40] = True
    return body


@pytest.mark.parametrize("batch,slab,with_body", [(1, 1, False), (4, 3, True), (7, 32, True),
                                                  (64, 4, False)])
def test_precomputed_normaliser_equals_the_per_tile_sum_bit_for_bit(volume, batch, slab,
                                                                     with_body):
    body = body_with_changing_extent(volume.shape) if with_body else None
    if with_body:  # several layouts, and slices without any tile
        layouts = {tuple((t.y, t.x) for t in plan_tiles(volume.shape, PATCH, 0.5, body)
                         if t.z == z) for z in range(volume.shape[0])}
        assert len(layouts) >= 3
    expected = per_tile_formula(volume, fake_network, PATCH, 0.5, 3, batch, slab, body)
    got = sliding_window(volume, fake_network, PATCH, 0.5, 3, batch_size=batch,
                         slab_slices=slab, body=body)
    np.testing.assert_array_equal(got, expected)
    got_torch = sliding_window(torch.from_numpy(volume), fake_network, PATCH, 0.5, 3,
                               batch_size=batch, slab_slices=slab, body=body)
    np.testing.assert_array_equal(got_torch.numpy(), expected)
    got_host = sliding_window(torch.from_numpy(volume), fake_network, PATCH, 0.5, 3,
                              batch_size=batch, slab_slices=slab, body=body, to_host=True)
    np.testing.assert_array_equal(got_host, expected)


def test_weight_sum_plane_is_the_weights_added_tile_by_tile():
    g = gaussian_importance(PATCH)
    starts = [(y, x) for y in tile_starts(37, PATCH[0], 0.5)
              for x in tile_starts(45, PATCH[1], 0.5)]
    expected = np.zeros((37, 45), np.float32)
    for y, x in starts:
        expected[y:y + PATCH[0], x:x + PATCH[1]] += g
    np.testing.assert_array_equal(weight_sum_plane(starts, (37, 45), g), expected)
    # Where no tile lies the map is 1, so dividing the (zero) accumulator keeps zero.
    partial = weight_sum_plane([(0, 0)], (37, 45), g)
    assert np.all(partial[PATCH[0]:, :] == 1) and np.all(partial[:, PATCH[1]:] == 1)

