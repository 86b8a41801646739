"""SAM branch kinds: trained from scratch (vit), pretrained and frozen (sam_vit_b), none.

No weights can be downloaded: checkpoints are made by building the registry models
without weights and saving their state dicts, so key names and shapes are the real ones.
"""

import json
import subprocess
import sys

import pytest
import torch

from inference.model import NnSam
from inference.network_config import get_config, with_sam
from inference.plans import Plan
from training.__main__ import main

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _plan(dataset, out, *extra):
    return main(["plan", "-d", str(dataset), "-o", str(out), "--preset", "tiny", "--patch",
                 "64", "64", "--target-spacing", "2.5", "2.5", "4.0", "--quiet",
                 "--disable-progress-bar", *extra])


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()  # no checkpoint: random weights, the real keys
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b.pth"
    torch.save({k: v for k, v in sam.state_dict().items() if k.startswith("image_encoder.")},
               path)
    return path


def test_sam_vit_b_plan_accepts_a_vit_b_checkpoint(dataset, tmp_path, vit_b_checkpoint):
    assert _plan(dataset, tmp_path / "plans.json", "--sam", "sam_vit_b", "--sam-checkpoint",
                 str(vit_b_checkpoint)) == 0
    plan = Plan.load(tmp_path / "plans.json")
    net = plan.network
    assert (net.sam_kind, net.sam_frozen, net.sam_input, net.sam_image_size,
            net.sam_embed_dim, net.sam_depth) == ("sam_vit_b", True, "centre", 1024, 768, 12)
    assert plan.sam_checkpoint == str(vit_b_checkpoint.resolve())
    network = NnSam(net)
    assert not any(p.requires_grad for p in network.sam.parameters())
    assert any(p.requires_grad for p in network.encoder.parameters())


@pytest.mark.parametrize("which", ["missing", "wrong", "unreadable"])
def test_a_pretrained_kind_without_its_checkpoint_is_one_line(dataset, tmp_path, which,
                                                               capsys):
    extra = ["--sam", "sam_vit_b"]
    if which == "wrong":  # the tiny preset's own encoder: every shape differs
        wrong = tmp_path / "tiny_encoder.pth"
        torch.save({f"image_encoder.{k}": v for k, v in
                    NnSam(get_config("tiny")).sam.encoder.state_dict().items()}, wrong)
        extra += ["--sam-checkpoint", str(wrong)]
    elif which == "unreadable":
        bad = tmp_path / "bad.pth"
        bad.write_bytes(b"not a checkpoint")
        extra += ["--sam-checkpoint", str(bad)]
    cmd = [sys.executable, "-m", "training", "plan", "-d", str(dataset), "-o",
           str(tmp_path / "plans.json"), "--preset", "tiny", "--patch", "64", "64",
           "--disable-progress-bar", *extra]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    expected = {"missing": "--sam-checkpoint FILE", "wrong": "tiny_encoder.pth: pos_embed",
                "unreadable": "bad.pth: cannot read"}[which]
    assert expected in errors[0], errors[0]
    assert not (tmp_path / "plans.json").exists()


def test_no_sam_branch(dataset, tmp_path):
    assert _plan(dataset, tmp_path / "plans.json", "--sam", "none") == 0
    plan = Plan.load(tmp_path / "plans.json")
    assert not plan.network.sam and NnSam(plan.network).sam is None


def test_a_frozen_encoder_trains_bit_identical_and_reaches_the_weights(planned, cache, tmp_path):
    """Frozen: no gradient, out of the optimiser, unchanged by training, exported as loaded."""
    plan = Plan.load(planned)
    plan.network = with_sam(plan.network, "vit")
    plan.network = type(plan.network)(**{**plan.network.__dict__, "sam_frozen": True})
    torch.manual_seed(5)
    source = {f"image_encoder.{k}": v.clone()
              for k, v in NnSam(plan.network).sam.encoder.state_dict().items()}
    checkpoint = tmp_path / "encoder.pth"
    torch.save(source, checkpoint)
    plan.sam_checkpoint = str(checkpoint)
    plans = plan.save(tmp_path / "plans.json")
    run, weights = tmp_path / "run", tmp_path / "weights"
    assert main(["train", "-p", str(plans), "-c", str(cache), "-o", str(run), "--epochs", "1",
                 "--iterations-per-epoch", "3", "--val-cases", "phantom_000", "--device", "cpu",
                 "--quiet", "--disable-progress-bar"]) == 0
    state = torch.load(run / "checkpoint_last.pt", weights_only=True)
    trained = {k[len("sam.encoder."):]: v for k, v in state["model"].items()
               if k.startswith("sam.encoder.")}
    assert trained and all(torch.equal(trained[k[len("image_encoder."):]], v)
                           for k, v in source.items())
    n_trainable = sum(p.requires_grad for p in NnSam(plan.network).parameters())
    assert len(state["optimizer"]["param_groups"][0]["params"]) == n_trainable
    assert main(["export", "-r", str(run), "-o", str(weights), "--checkpoint", "last",
                 "--quiet", "--disable-progress-bar"]) == 0
    exported = torch.load(weights / "model.pt", weights_only=True)
    assert all(torch.equal(exported[f"sam.encoder.{k[len('image_encoder.'):]}"], v)
               for k, v in source.items())
    saved = json.loads((weights / "plans.json").read_text())
    assert saved["network"]["sam_frozen"] is True


@pytest.mark.parametrize("kind", ["none", "vit"])
def test_every_light_kind_exports_and_runs_in_the_container_without_torch(kind, tmp_path):
    """ONNX parity with torch in fp32 and a CLI run on onnxruntime (the ViT-B kind's
    1024-px export is left to a machine where 972 GFLOPs per tile are affordable)."""
    import numpy as np

    from inference.backends import OnnxBackend
    from inference.model import LesionProbability
    from inference.weights import write_weights
    from tests.inference.conftest import write_phantom_case

    config = with_sam(get_config("tiny"), kind)
    torch.manual_seed(2)
    model = NnSam(config)
    model.set_temperature(1.0)
    folder = write_weights(tmp_path / "w", model, Plan(preset="tiny", patch_size=(64, 64),
                                                       network=config), onnx_batch=2)
    tiles = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = LesionProbability(model.eval())(tiles).numpy()
    assert np.abs(OnnxBackend(folder, "cpu")(tiles.numpy()) - expected).max() <= 1e-3
    write_phantom_case(tmp_path / "in", "a", 1)
    # torch made unimportable: the forked worker inherits it, so importing it fails the run
    code = ("import sys; sys.modules['torch'] = None\nfrom inference.__main__ import main\n"
            "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--weights", str(folder), "--device", "cpu",
                           "--backend", "onnx", "--disable-progress-bar"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.nii.gz").is_file()
