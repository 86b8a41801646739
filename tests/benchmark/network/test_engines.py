"""Our sliding window against MONAI's on the same tiny network and volume."""

import numpy as np
import pytest

from benchmark.network import engine_process, inferers

monai = pytest.importorskip("monai", reason="MONAI is a benchmark-only dependency")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def setup():
    volume, body = inferers.make_input((5, 96, 96), preset="tiny", seed=1)
    model = inferers.make_network("tiny", seed=0)
    return torch.from_numpy(volume), body, model


def _run(fn, *args, **kwargs):
    with torch.inference_mode():
        return fn(*args, **kwargs).numpy()


def test_same_network_from_the_same_seed():
    a, b = inferers.make_network("tiny", seed=0), inferers.make_network("tiny", seed=0)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_monai_with_our_weight_map_equals_ours(setup):
    from inference.sliding_window import gaussian_importance

    volume, _, model = setup
    ours = _run(inferers.ours_engine, volume, model, (64, 64), 0.5, 8)
    theirs = _run(inferers.monai_engine, volume, model, (64, 64), 0.5, 8,
                  weight_map=torch.from_numpy(gaussian_importance((64, 64))))
    assert ours.shape == theirs.shape == (5, 96, 96)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)


def test_monai_gaussian_differs_only_slightly(setup):
    volume, _, model = setup
    ours = _run(inferers.ours_engine, volume, model, (64, 64), 0.5, 8)
    theirs = _run(inferers.monai_engine, volume, model, (64, 64), 0.5, 8)
    # MONAI lifts rim weights below 1e-3; only voxels where tiles overlap can move.
    assert np.abs(theirs - ours).mean() < 1e-2


def test_body_skipping_keeps_the_body(setup):
    volume, body, model = setup
    full = _run(inferers.ours_engine, volume, model, (64, 64), 0.5, 8)
    skipped = _run(inferers.ours_engine, volume, model, (64, 64), 0.5, 8, body=body)
    np.testing.assert_allclose(skipped[body], full[body], atol=1e-6)


def test_tile_placements():
    same = inferers.tile_placements((4, 96, 96), (64, 64), 0.5)
    assert same["same"] and same["y"]["ours"] == same["y"]["monai"] == [0, 32]
    differ = inferers.tile_placements((4, 200, 96), (64, 64), 0.5)
    assert not differ["same"]
    assert differ["y"]["ours"] == [0, 27, 54, 82, 109, 136]
    assert differ["y"]["monai"] == [0, 32, 64, 96, 128, 136]
    assert not inferers.tile_placements((4, 50, 96), (64, 64), 0.5)["same"]  # padded


def test_context_stack_replicates_edges():
    v = torch.arange(4.0)[:, None, None].expand(4, 2, 2)
    stack = inferers.context_stack(v)
    assert stack.shape == (4, 3, 2, 2)
    assert stack[0, :, 0, 0].tolist() == [0, 0, 1] and stack[3, :, 0, 0].tolist() == [2, 3, 3]


def test_engine_process_times_and_measures_in_its_own_process(tmp_path):
    volume, body = inferers.make_input((3, 64, 64), preset="tiny", seed=1)
    np.save(tmp_path / "v.npy", volume)
    np.save(tmp_path / "b.npy", body)
    task = {"preset": "tiny", "seed": 0, "device": "cpu", "patch": (64, 64), "overlap": 0.5,
            "batch_size": 4, "pad_value": 0.0, "volume": str(tmp_path / "v.npy"),
            "body": str(tmp_path / "b.npy")}
    engine = engine_process.EngineProcess("ours_body", task)
    wall, cpu = engine.run()
    result = engine.finish(str(tmp_path / "out.npy"))
    assert wall > 0 and cpu > 0
    assert result["peak_mb"] >= 0 and result["memory_method"]
    assert np.load(tmp_path / "out.npy").shape == (3, 64, 64)


def test_engine_overhead_times_each_engine():
    volume, body = inferers.make_input((3, 96, 96), preset="tiny", seed=1)
    best = inferers.engine_overhead(volume, body, (64, 64), 0.5, 8, 0.0, repeats=1)
    assert set(best) == {"ours", "ours_body", "monai"}
    assert all(0 < t < 60 for t in best.values())
