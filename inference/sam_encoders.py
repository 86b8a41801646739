"""The SAM branch: pretrained or scratch SAM image encoders and their checkpoints.

Three encoders: segment-anything's ``ImageEncoderViT`` trained with the network (``vit``)
or at ViT-B's size for its pretrained weights (``sam_vit_b``), and MobileSAM's TinyViT
(``mobile_sam``, as nnSAM uses it). The packages' encoder modules are loaded alone, without
their packages' ``__init__`` (which import torchvision) or the timm that TinyViT imports.
"""

from __future__ import annotations

import functools
import importlib.util
import pickle
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from inference.network_config import ModelConfigError, NetworkConfig


def _load_alone(package: str, module: str, stand_ins: dict[str, types.ModuleType]):
    """Import ``package.module`` without running ``package``'s ``__init__``.

    The package and its parents stand in as bare namespaces with their real paths, and
    ``stand_ins`` replace modules it imports that are not installed or not wanted; all are
    dropped again afterwards, so a later full ``import package`` runs normally and finds
    this same module in ``sys.modules``.
    """
    name = f"{package}.{module}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    namespaces = {}
    parts = name.split(".")[:-1]
    for depth in range(1, len(parts) + 1):
        namespace = types.ModuleType(".".join(parts[:depth]))
        namespace.__path__ = [str(root.joinpath(*parts[1:depth]))]
        namespaces[namespace.__name__] = namespace
    added = []
    for key, stand_in in {**namespaces, **stand_ins}.items():
        if key not in sys.modules:
            sys.modules[key] = stand_in
            added.append(key)
    try:
        return importlib.import_module(name)
    finally:
        for key in added:
            del sys.modules[key]


def sam_image_encoder() -> type:
    """segment_anything's ``ImageEncoderViT`` class, without importing torchvision.

    ``import segment_anything`` runs the package's ``__init__``, which imports its
    predictor and mask generator and through them torchvision: seconds of start-up on
    every case the container runs, for code inference never calls. The encoder's own
    module needs only torch.
    """
    module = _load_alone("segment_anything", "modeling.image_encoder", {})
    if module is None:
        raise ModelConfigError("the SAM branch needs the segment-anything package "
                               "(pip install segment-anything)")
    return module.ImageEncoderViT


class _DropPath(nn.Module):
    """Stochastic depth: each sample's residual branch dropped with probability ``p``."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = float(drop_prob or 0.0)

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _timm_stand_ins() -> dict[str, types.ModuleType]:
    """The four names MobileSAM's ``tiny_vit_sam`` takes from timm.

    ``timm`` is not a declared dependency of MobileSAM, and importing it takes seconds,
    imports torchvision and huggingface_hub and prints deprecation warnings, for a drop
    path (inactive at rate 0, which MobileSAM builds with), a pair helper, an initialiser
    and a registry decorator.
    """
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = _DropPath
    layers.to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    timm, models = types.ModuleType("timm"), types.ModuleType("timm.models")
    timm.__path__, models.__path__ = [], []
    timm.models, models.layers, models.registry = models, layers, registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers,
            "timm.models.registry": registry}


def tiny_vit_encoder() -> type:
    """MobileSAM's ``TinyViT`` class (``mobilesam-mirror``), without timm or torchvision."""
    stand_ins = {} if "timm" in sys.modules else _timm_stand_ins()
    module = _load_alone("mobile_sam", "modeling.tiny_vit_sam", stand_ins)
    if module is None:
        raise ModelConfigError("the mobile_sam SAM branch needs MobileSAM's TinyViT "
                               "(pip install mobilesam-mirror)")
    return module.TinyViT


# SAM's pixel statistics (0..255 RGB), which its encoders were trained to see.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


class SamBranch(nn.Module):
    """A SAM image encoder on the tile resized to its image size.

    ``vit`` is segment-anything's ``ImageEncoderViT`` trained with the network from
    scratch; ``sam_vit_b`` is the ViT-B architecture (LayerNorm eps 1e-6, as SAM builds it)
    and ``mobile_sam`` MobileSAM's TinyViT (as ``sam_model_registry["vit_t"]`` builds it),
    both for pretrained weights (``load_sam_checkpoint``), frozen when ``sam_frozen``.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        self.image_size = config.sam_image_size
        self.centre = config.sam_input == "centre"
        self.resize = config.sam_resize
        channels = 3 if self.centre else config.in_channels
        if config.sam_kind == "mobile_sam":
            self.encoder = tiny_vit_encoder()(
                img_size=1024, in_chans=channels, num_classes=1000,
                embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
                window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0,
                use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                layer_lr_decay=0.8)
        else:
            extra = {"norm_layer": functools.partial(nn.LayerNorm, eps=1e-6)} \
                if config.sam_kind == "sam_vit_b" else {}
            self.encoder = sam_image_encoder()(
                img_size=config.sam_image_size, patch_size=config.sam_patch_size,
                in_chans=channels, embed_dim=config.sam_embed_dim, depth=config.sam_depth,
                num_heads=config.sam_heads, mlp_ratio=4.0, out_chans=config.sam_out_channels,
                qkv_bias=True,
                use_rel_pos=config.sam_window_size > 0 or bool(config.sam_global_attention),
                window_size=config.sam_window_size,
                global_attn_indexes=tuple(config.sam_global_attention), **extra,
            )
        if config.sam_kind == "vit":
            # SAM initialises the absolute position embedding to zeros; from scratch a small
            # random start gives the tokens distinct positions from the first step.
            nn.init.trunc_normal_(self.encoder.pos_embed, std=0.02)
        self.normalize = config.sam_normalization == "sam"
        if self.normalize:
            # x (z-scored) -> (x - low) / (high - low) * 255 -> (. - mean_c) / std_c, folded
            # into one scale and one shift per channel
            low, high = config.sam_window
            mean, std = torch.tensor(SAM_PIXEL_MEAN), torch.tensor(SAM_PIXEL_STD)
            scale = 255.0 / (high - low) / std
            self.register_buffer("pixel_scale", scale.view(1, 3, 1, 1), persistent=False)
            self.register_buffer("pixel_shift", (-low * 255.0 / (high - low) - mean).div(std)
                                 .view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if self.centre:  # the centre slice, resized once and then repeated as 3 channels
            middle = x.shape[1] // 2
            x = x[:, middle:middle + 1]
        x = self._resized(x, (self.image_size, self.image_size))
        if self.centre:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = x * self.pixel_scale + self.pixel_shift
        return self._resized(self.encoder(x), tuple(size))

    def _resized(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=self.resize, align_corners=False)


def load_sam_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load SAM image-encoder weights from a SAM checkpoint into ``model`` (an ``NnSam``).

    Position embeddings are resized to this preset's token grid; any other shape
    difference is a ModelConfigError naming the file and the tensor.
    """
    if model.sam is None:
        raise ModelConfigError("this network has no SAM branch (sam=False)")
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as error:
        reason = next((line.strip() for line in str(error).splitlines() if line.strip()),
                      type(error).__name__)
        raise ModelConfigError(f"{path}: cannot read the SAM checkpoint ({reason[:160]})") \
            from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    prefix = "image_encoder."
    encoder_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not encoder_state:
        raise ModelConfigError(f"{path}: no 'image_encoder.*' tensors; not a SAM checkpoint")
    target = model.sam.encoder.state_dict()
    for key, value in list(encoder_state.items()):
        if key not in target:
            raise ModelConfigError(f"{path}: unexpected tensor {key} for the "
                                   f"{model.config.sam_kind} SAM encoder; is it a checkpoint "
                                   "of another --sam kind?")
        want = target[key].shape
        if value.shape == want:
            continue
        if key == "pos_embed" and value.ndim == 4 and value.shape[-1] == want[-1]:
            encoder_state[key] = F.interpolate(
                value.permute(0, 3, 1, 2), size=tuple(want[1:3]), mode="bicubic",
                align_corners=False).permute(0, 2, 3, 1)
        elif ".rel_pos_" in key and value.ndim == 2 and value.shape[1] == want[1]:
            encoder_state[key] = F.interpolate(
                value.T[None], size=want[0], mode="linear", align_corners=False)[0].T
        else:
            raise ModelConfigError(
                f"{path}: {key} has shape {tuple(value.shape)} but the {model.config.sam_kind} "
                f"SAM encoder needs {tuple(want)}; is it a checkpoint of another --sam kind?")
    missing = sorted(set(target) - set(encoder_state))
    if missing:
        raise ModelConfigError(f"{path}: missing SAM encoder tensors, e.g. {missing[0]}")
    model.sam.encoder.load_state_dict(encoder_state)
    model.train(model.training)  # TinyViT's cached attention biases from the loaded weights
