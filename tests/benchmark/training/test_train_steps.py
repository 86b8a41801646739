"""The training-step profile on the CPU: every piece timed, the JSON written."""

import json

from benchmark.training.train_steps import main, synthetic_batch


def test_synthetic_batch_has_the_samplers_shapes_and_lesions_in_every_other_sample():
    import torch

    image, label, partial = synthetic_batch(4, 3, (96, 80), torch.Generator().manual_seed(0))
    assert image.shape == (4, 3, 96, 80) and label.shape == (4, 96, 80)
    assert [int(label[i].sum() > 0) for i in range(4)] == [1, 0, 1, 0]
    assert not partial.any()


def test_profile_times_each_piece_and_writes_json(tmp_path, capsys):
    out = tmp_path / "steps.json"
    assert main(["--device", "cpu", "--batch", "2", "--steps", "2", "--warmup", "1",
                 "--modes", "grouped/off", "branches/off", "-o", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["form"] for r in results] == ["grouped", "branches"]
    for r in results:
        assert r["amp"] == "fp32"
        assert set(r["pieces_ms"]) == {"to_device", "augment", "forward", "loss", "backward",
                                       "optimiser"}
        assert r["pieces_ms"]["forward"] > 0 and r["pieces_ms"]["backward"] > 0
        assert r["free_running_step_ms"] > 0
        assert "kernels_per_step" not in r  # the profiler runs on CUDA only
    assert capsys.readouterr().out.count('"form"') == 2
