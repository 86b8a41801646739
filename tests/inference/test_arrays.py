"""The array operations give the same answer on numpy arrays and torch tensors."""

import numpy as np
import pytest
import torch

from inference.arrays import NumpyOps, TorchOps, array_ops
from inference.resample import resize_plane


@pytest.fixture
def pair():
    a = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    return a, torch.from_numpy(a.copy())


def test_array_ops_follows_the_arrays_kind(pair):
    a, t = pair
    assert isinstance(array_ops(a), NumpyOps) and isinstance(array_ops(t), TorchOps)


@pytest.mark.parametrize("op", [
    lambda ops, a: ops.box_sum(a, 1, 2),
    lambda ops, a: ops.take(a, np.array([4, 0, 0, 2]), 2),
    lambda ops, a: ops.permute_flip(a, (2, 0, 1), (True, False, True)),
    lambda ops, a: resize_plane(a, (9, 4)),  # inference.resample's, on either
    lambda ops, a: ops.pad_inplane(a, 2, 1, -3.0),
    lambda ops, a: ops.clip_(a, -0.5, 0.5),
    lambda ops, a: ops.concat([a[:2], a[2:]]),
    lambda ops, a: ops.divide_(a, ops.from_host_like(np.full((1, 6, 1), 2.0, np.float32), a)),
], ids=["box_sum", "take", "permute_flip", "resize_plane", "pad_inplane", "clip_", "concat",
        "divide_"])
def test_each_operation_agrees(pair, op):
    a, t = pair
    got_numpy = np.asarray(op(array_ops(a), a))
    got_torch = array_ops(t).to_host(op(array_ops(t), t))
    np.testing.assert_allclose(got_torch, got_numpy, atol=1e-5)


def test_nonzero_along_finds_the_same_planes(pair):
    a, t = pair
    for axis in range(3):
        np.testing.assert_array_equal(array_ops(a).nonzero_along(a > 1.5, axis),
                                      array_ops(t).nonzero_along(t > 1.5, axis))
