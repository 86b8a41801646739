"""SAM branch kinds: trained from scratch (vit), pretrained and frozen (mobile_sam,
sam_vit_b), none.

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
from inference.sam_encoders import load_sam_checkpoint, tiny_vit_encoder
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


@pytest.fixture(scope="module")
def mobile_sam_checkpoint(tmp_path_factory):
    tiny_vit_encoder()  # TinyViT in place, so that the package imports without timm
    from mobile_sam import sam_model_registry

    torch.manual_seed(1)
    sam = sam_model_registry["vit_t"]()  # no checkpoint: random weights, the real keys
    # BatchNorm running statistics as a trained checkpoint has them, not the fresh 0 and 1
    for name, value in sam.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            value.copy_(torch.rand_like(value) + (0.5 if name.endswith("var") else -0.5))
    path = tmp_path_factory.mktemp("sam") / "mobile_sam.pt"
    torch.save(sam.state_dict(), path)  # the whole model, as MobileSAM ships it
    return path, sam.image_encoder.eval()


def test_mobile_sam_is_nnsams_encoder_with_the_checkpoints_weights(mobile_sam_checkpoint):
    """Loaded into the branch, the embedding is MobileSAM's own for the same image."""
    path, reference = mobile_sam_checkpoint
    network = NnSam(with_sam(get_config("tiny"), "mobile_sam"))
    load_sam_checkpoint(network, path)
    network.eval()
    tiles = torch.randn(2, 3, 64, 64)
    centre = torch.nn.functional.interpolate(tiles[:, 1:2], size=(1024, 1024),
                                             mode="bilinear", align_corners=False)
    with torch.no_grad():
        expected = reference(centre.expand(-1, 3, -1, -1))
        got = network.sam.encoder(network.sam._resized(tiles[:, 1:2], (1024, 1024))
                                  .expand(-1, 3, -1, -1))
    assert expected.shape == (2, 256, 64, 64)
    assert torch.equal(got, expected)


def test_a_frozen_mobile_sam_stays_bit_identical_through_training_steps(
        mobile_sam_checkpoint):
    """No gradient, out of the optimiser, batch-norm statistics untouched in train mode."""
    path, _ = mobile_sam_checkpoint
    network = NnSam(with_sam(get_config("tiny"), "mobile_sam"))
    load_sam_checkpoint(network, path)
    before = {k: v.clone() for k, v in network.sam.state_dict().items()}
    network.train()
    assert not network.sam.training and network.encoder.training
    optimizer = torch.optim.SGD([p for p in network.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        outputs = network(torch.randn(2, 3, 64, 64))
        optimizer.zero_grad()
        sum(o.square().mean() for o in outputs).backward()
        optimizer.step()
    assert all(p.grad is None for p in network.sam.parameters())
    assert any(p.grad is not None for p in network.encoder.parameters())
    after = network.sam.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_mobile_sam_plan_accepts_a_mobile_sam_checkpoint(dataset, tmp_path,
                                                         mobile_sam_checkpoint):
    path, _ = mobile_sam_checkpoint
    assert _plan(dataset, tmp_path / "plans.json", "--sam", "mobile_sam", "--sam-checkpoint",
                 str(path), "--sam-normalization", "sam", "--sam-resize", "bicubic") == 0
    plan = Plan.load(tmp_path / "plans.json")
    net = plan.network
    assert (net.sam_kind, net.sam_frozen, net.sam_input, net.sam_image_size,
            net.sam_resize, net.sam_normalization) == ("mobile_sam", True, "centre", 1024,
                                                       "bicubic", "sam")
    norm = plan.normalization
    assert net.sam_window == pytest.approx(((norm.clip_low - norm.mean) / norm.std,
                                            (norm.clip_high - norm.mean) / norm.std), abs=1e-4)


def test_sam_normalization_maps_the_ct_window_onto_sams_pixels():
    """The plan's window ends become SAM's 0 and 255, then SAM's pixel mean and std."""
    from inference.sam_encoders import SAM_PIXEL_MEAN, SAM_PIXEL_STD

    config = with_sam(get_config("tiny"), "vit")
    config = type(config)(**{**config.__dict__, "sam_normalization": "sam",
                             "sam_window": (-2.0, 3.0)})
    branch = NnSam(config).sam
    ends = torch.tensor([-2.0, 3.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    mapped = ends * branch.pixel_scale + branch.pixel_shift
    mean, std = torch.tensor(SAM_PIXEL_MEAN).view(3, 1), torch.tensor(SAM_PIXEL_STD).view(3, 1)
    expected = (torch.tensor([[0.0, 255.0]]) - mean) / std
    assert torch.allclose(mapped[0, :, 0], expected, atol=1e-5)


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


@pytest.mark.parametrize("which", ["missing", "wrong", "unreadable", "other kind"])
def test_a_pretrained_kind_without_its_checkpoint_is_one_line(dataset, tmp_path, which,
                                                               vit_b_checkpoint):
    extra = ["--sam", "sam_vit_b"]
    if which == "wrong":  # the tiny preset's own encoder: every shape differs
        wrong = tmp_path / "tiny_encoder.pth"
        torch.save({f"image_encoder.{k}": v for k, v in
                    NnSam(get_config("tiny")).sam.encoder.state_dict().items()}, wrong)
        extra += ["--sam-checkpoint", str(wrong)]
    elif which == "other kind":  # a ViT-B checkpoint for TinyViT
        extra = ["--sam", "mobile_sam", "--sam-checkpoint", str(vit_b_checkpoint)]
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
                "unreadable": "bad.pth: cannot read",
                "other kind": "sam_vit_b.pth: unexpected tensor pos_embed"}[which]
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


@pytest.mark.parametrize("kind", ["none", "vit", "mobile_sam", "sam_vit_b"])
def test_every_kind_exports_and_runs_in_the_container_without_torch(kind, tmp_path):
    """ONNX parity with torch in fp32 and a CLI run on onnxruntime (the 1024-px pretrained
    encoders on a case of a few tiles: each tile takes seconds on a CPU)."""
    import numpy as np

    from inference.backends import OnnxBackend
    from inference.model import LesionProbability
    from inference.weights import write_weights
    from tests.inference.conftest import write_phantom_case

    config = with_sam(get_config("tiny"), kind)
    small = kind in ("mobile_sam", "sam_vit_b")  # one tile per batch, a few tiles per case
    torch.manual_seed(2)
    model = NnSam(config)
    model.set_temperature(1.0)
    plan = Plan(preset="tiny", patch_size=(64, 64), network=config)
    folder = write_weights(tmp_path / "w", model, plan, onnx_batch=1 if small else 2)
    tiles = torch.randn(1 if small else 2, 3, 64, 64)
    with torch.no_grad():
        expected = LesionProbability(model.eval())(tiles).numpy()
    assert np.abs(OnnxBackend(folder, "cpu")(tiles.numpy()) - expected).max() <= 1e-3
    write_phantom_case(tmp_path / "in", "a", 1,
                       **(dict(shape=(56, 48, 3), spacing=(2.0, 2.0, 3.0)) if small else {}))
    # torch made unimportable: the forked worker inherits it, so importing it fails the run
    code = ("import sys; sys.modules['torch'] = None\nfrom inference.__main__ import main\n"
            "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "-i", str(tmp_path / "in"), "-o",
                           str(tmp_path / "out"), "--weights", str(folder), "--device", "cpu",
                           "--backend", "onnx", "--disable-progress-bar"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "a.nii.gz").is_file()


def test_the_sam_input_options_export_with_parity(tmp_path):
    """Bicubic resizing and SAM's pixel normalisation reach the ONNX graph unchanged."""
    import numpy as np

    from inference.backends import OnnxBackend
    from inference.model import LesionProbability
    from inference.weights import write_weights

    config = with_sam(get_config("tiny"), "vit")
    config = type(config)(**{**config.__dict__, "sam_resize": "bicubic",
                             "sam_normalization": "sam", "sam_window": (-1.5, 2.5)})
    torch.manual_seed(3)
    model = NnSam(config)
    model.set_temperature(1.0)
    folder = write_weights(tmp_path / "w", model, Plan(preset="tiny", patch_size=(64, 64),
                                                       network=config), onnx_batch=2)
    tiles = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = LesionProbability(model.eval())(tiles).numpy()
    assert Plan.load(folder / "plans.json").network.sam_resize == "bicubic"
    assert np.abs(OnnxBackend(folder, "cpu")(tiles.numpy()) - expected).max() <= 1e-3


def test_ddp_all_reduces_only_the_trainable_tensors():
    """DistributedDataParallel (as the trainer wraps the network) buckets no frozen tensor."""
    import os
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        config = with_sam(get_config("tiny"), "vit")
        network = NnSam(type(config)(**{**config.__dict__, "sam_frozen": True}))
        trainable = [p for p in network.parameters() if p.requires_grad]
        assert 0 < len(trainable) < len(list(network.parameters()))
        logged = torch.nn.parallel.DistributedDataParallel(network)._get_ddp_logging_data()
        assert logged["num_parameter_tensors"] == len(trainable)
        assert logged["total_parameter_size_bytes"] == sum(4 * p.numel() for p in trainable)
    finally:
        dist.destroy_process_group()
