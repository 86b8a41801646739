"""benchmark.network.launches counts what a GPU would launch; the cuts it measured stay exact."""

import torch

from benchmark.network.launches import count_network, operations
from inference.model import CBAM, build_model


def test_views_are_not_counted_and_computing_operations_are():
    x = torch.randn(4, 6)
    counts = operations(lambda: (x.view(2, 12).t().reshape(24) + 1).sigmoid().sum())
    assert dict(counts) == {"add": 1, "sigmoid": 1, "sum": 1}


def test_cbam_runs_its_shared_mlp_once_and_equals_the_two_call_formula():
    torch.manual_seed(0)
    cbam = CBAM(32, ratio=4).eval()
    x = torch.randn(6, 32, 20, 20)
    with torch.no_grad():
        channel = torch.sigmoid(cbam.mlp(x.mean(dim=(2, 3), keepdim=True))
                                + cbam.mlp(x.amax(dim=(2, 3), keepdim=True)))
        y = x * channel
        spatial = torch.sigmoid(cbam.spatial(torch.cat(
            [y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)))
        assert torch.equal(cbam(x), x * channel * spatial)
    counts = operations(lambda: cbam(x))
    assert counts["conv2d"] == 3  # the MLP's two 1x1 convolutions once, the 7x7 once


def test_a_trained_network_skips_the_temperature_and_gives_the_same_output():
    torch.manual_seed(1)
    network = build_model("tiny").eval()
    network.set_temperature(1.0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        skipped = network(x)
        for conv in network.dynamic_convs():
            conv._unit_temperature = False  # divide by the buffer, T = 1
        divided = network(x)
    assert torch.equal(skipped, divided)
    fresh = build_model("tiny")
    fresh.load_state_dict(network.state_dict())  # the flag follows a loaded temperature
    assert all(conv._unit_temperature for conv in fresh.dynamic_convs())
    fresh.set_temperature(30.0)
    assert not any(conv._unit_temperature for conv in fresh.dynamic_convs())


def test_the_count_does_not_grow_with_the_batch():
    small, large = count_network("tiny", "grouped", 2), count_network("tiny", "grouped", 8)
    assert small["per_batch"] == large["per_batch"] > 100
    assert large["per_tile"] == small["per_tile"] / 4
