"""The GPU budget's accounting, on numbers alone: batch, blending, CUDA-graph pools."""

import pytest

from inference import budget
from inference.model import tile_activation_bytes
from inference.network_config import get_config

MiB = 2**20


def test_the_allocator_gets_the_budget_less_the_cuda_context_never_too_little():
    assert budget.allocator_bytes(1200) == 500 * MiB
    assert budget.allocator_bytes(800) == budget.MIN_ALLOCATOR_MB * MiB


@pytest.mark.parametrize("preset, expected", [("fast", 16), ("tiny", 64)])
def test_a_batch_of_activations_fits_the_network_share(preset, expected):
    per_tile = tile_activation_bytes(get_config(preset), bytes_per_value=2)
    allocator = budget.allocator_bytes(budget.DEFAULT_GPU_MEMORY_MB)
    batch = budget.tiles_per_batch(allocator, per_tile)
    assert batch == expected
    assert batch * per_tile <= budget.NETWORK_SHARE * allocator
    assert budget.tiles_per_batch(allocator, allocator) == 1  # never none


def test_blending_keeps_a_slab_and_the_probability_within_their_shares():
    allocator = 500 * MiB
    slab, to_host = budget.blending(allocator, (300, 250, 250))
    plane = 4 * 250 * 250
    assert slab == 64 and 2 * slab * plane <= budget.BLEND_SHARE * allocator
    assert to_host  # 300 planes are more than the share
    assert budget.blending(allocator, (100, 250, 250)) == (64, False)
    assert budget.blending(allocator, (10, 4000, 4000))[0] == 1


def test_a_cuda_graph_is_captured_only_where_its_pool_fits_under_the_limit():
    # The failure this accounting prevents: 500 MiB allowed, a graph of 16 `fast` tiles
    # (a forward of about 245 MiB) kept in its pool while a 554-slice case was preprocessed.
    limit, forward = 500 * MiB, 245 * MiB
    assert budget.graph_fits(limit, 60 * MiB, forward)  # the volume and accumulators held
    assert not budget.graph_fits(limit, 250 * MiB, forward)  # runs eagerly instead
    assert not budget.graph_fits(limit, 0, limit)  # the pool's margin counts too
