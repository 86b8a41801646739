"""The SAM encoders: checkpoints, and loading the packages' encoders without their baggage."""

import subprocess
import sys

import pytest
import torch

from inference.model import ModelConfigError, build_model
from inference.sam_encoders import load_sam_checkpoint


def _sam_checkpoint(path, encoder_state):
    state = {f"image_encoder.{k}": v.clone() for k, v in encoder_state.items()}
    state["mask_decoder.some.weight"] = torch.zeros(3)
    torch.save(state, path)


def test_sam_checkpoint_loads_and_resizes_position_embedding(tmp_path):
    donor = build_model("tiny", sam_image_size=128)
    model = build_model("tiny")
    _sam_checkpoint(tmp_path / "sam.pth", donor.sam.encoder.state_dict())
    load_sam_checkpoint(model, tmp_path / "sam.pth")
    got, want = model.sam.encoder.state_dict(), donor.sam.encoder.state_dict()
    assert torch.equal(got["blocks.0.attn.qkv.weight"], want["blocks.0.attn.qkv.weight"])
    assert got["pos_embed"].shape == (1, 4, 4, 32) and want["pos_embed"].shape == (1, 8, 8, 32)


def test_sam_checkpoint_of_wrong_shape_is_one_clear_line(tmp_path):
    donor = build_model("tiny", sam_embed_dim=64)
    _sam_checkpoint(tmp_path / "vit_h.pth", donor.sam.encoder.state_dict())
    with pytest.raises(ModelConfigError) as info:
        load_sam_checkpoint(build_model("tiny"), tmp_path / "vit_h.pth")
    message = str(info.value)
    assert "\n" not in message and "vit_h.pth" in message and "(1, 4, 4, 64)" in message


def test_not_a_sam_checkpoint(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelConfigError, match="not a SAM checkpoint"):
        load_sam_checkpoint(build_model("tiny"), tmp_path / "other.pth")


def test_sam_branch_loads_without_torchvision_and_stays_compatible():
    """Building a model must not import torchvision (seconds of container start-up); a
    later full ``import segment_anything`` still works and shares the encoder class."""
    code = (
        "import sys\n"
        "from inference.model import build_model\n"
        "build_model('tiny')\n"
        "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
        "assert 'segment_anything' not in sys.modules, 'stand-in package left behind'\n"
        "import segment_anything\n"
        "from segment_anything.modeling import ImageEncoderViT\n"
        "from inference.sam_encoders import sam_image_encoder\n"
        "assert ImageEncoderViT is sam_image_encoder()\n"
        "assert hasattr(segment_anything, 'sam_model_registry')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_tiny_vit_loads_without_timm_or_torchvision_and_stays_compatible():
    """MobileSAM's TinyViT without the timm it imports (2 s, torchvision, warnings); the
    full ``mobile_sam`` package still imports afterwards and shares the class."""
    code = (
        "import sys, warnings\n"
        "warnings.simplefilter('error')\n"
        "from inference.model import NnSam\n"
        "from inference.network_config import get_config, with_sam\n"
        "model = NnSam(with_sam(get_config('tiny'), 'mobile_sam'))\n"
        "assert type(model.sam.encoder).__name__ == 'TinyViT'\n"
        "for name in ('timm', 'torchvision', 'mobile_sam'):\n"
        "    assert name not in sys.modules, name\n"
        "from mobile_sam import sam_model_registry\n"
        "from mobile_sam.modeling import TinyViT\n"
        "assert type(model.sam.encoder) is TinyViT\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
