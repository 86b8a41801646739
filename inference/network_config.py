"""The network's configuration: every field that fixes its shape, and the presets.

Kept apart from ``inference.model`` (which needs torch) so that the plan, which stores
the whole configuration, can be read without torch: the onnxruntime path never imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace


class ModelConfigError(ValueError):
    """A user-caused problem with the network's configuration, input or checkpoint."""


DEFAULT_PRESET = "fast"  # the container's network, and a new plan's (PRESETS below)
DEFAULT_PATCH_SIZE = (192, 192)  # the paper's in-plane patch (y, x)
# The dynamic convolution's two exact forms (``inference.model.DynamicConv2d``): the batch
# folded into a grouped convolution, or K convolutions mixed per sample.
DYNAMIC_FORMS = ("grouped", "branches")


@dataclass(frozen=True)
class NetworkConfig:
    """Everything that fixes the network's shape; ``plans.json`` stores all of it."""

    in_channels: int = 3
    num_classes: int = 2
    patch_size: tuple[int, int] = DEFAULT_PATCH_SIZE
    base_features: int = 32
    max_features: int = 512
    n_stages: int = 6
    dynamic: bool = True
    n_kernels: int = 4
    attention_ratio: float = 0.25
    initial_temperature: float = 30.0
    cbam_ratio: int = 16
    sam: bool = True
    sam_image_size: int = 256
    sam_patch_size: int = 16
    sam_embed_dim: int = 768
    sam_depth: int = 12
    sam_heads: int = 12
    sam_out_channels: int = 256
    sam_window_size: int = 0
    sam_global_attention: tuple[int, ...] = field(default_factory=tuple)
    sam_skip_stage: int = 3
    # vit: a ViT trained from scratch with the network (the paper's entry, whose challenge
    # allowed no pretrained model); mobile_sam: MobileSAM's TinyViT image encoder, pretrained
    # and frozen (nnSAM's own choice); sam_vit_b: segment-anything's ViT-B image encoder,
    # pretrained and frozen. The SAM branch is off when ``sam`` is false.
    sam_kind: str = "vit"
    sam_frozen: bool = False
    # which slices the encoder sees: "slices", the 2.5D input's slices as its 3 channels;
    # "centre", the centre slice repeated 3 times (nnSAM's 2D input to a 3-channel encoder)
    sam_input: str = "slices"
    # how the tile is resized to sam_image_size and the embedding back to the skip's size
    sam_resize: str = "bilinear"
    # "none": the encoder sees the network's input, z-scored HU (nnSAM); "sam": the CT window
    # sam_window (in those z-scored units) mapped onto 0..255 and normalised with SAM's pixel
    # mean and std, the way a pretrained encoder saw its training images
    sam_normalization: str = "none"
    sam_window: tuple[float, float] = (-3.0, 3.0)

    @property
    def features(self) -> list[int]:
        return [min(self.base_features * 2**i, self.max_features) for i in range(self.n_stages)]

    @property
    def total_stride(self) -> int:
        return 2 ** (self.n_stages - 1)

    def validate(self) -> None:
        if self.n_stages < 2:
            raise ModelConfigError(f"n_stages must be at least 2, got {self.n_stages}")
        if self.sam and not 0 < self.sam_skip_stage < self.n_stages - 1:
            raise ModelConfigError(
                f"sam_skip_stage {self.sam_skip_stage} must be a skip stage, 1..{self.n_stages - 2}"
            )
        for size in self.patch_size:
            if size % self.total_stride:
                raise ModelConfigError(
                    f"patch size {tuple(self.patch_size)} is not divisible by the network's "
                    f"total stride {self.total_stride}; use a multiple of {self.total_stride}"
                )
        if self.sam and self.sam_image_size % self.sam_patch_size:
            raise ModelConfigError(
                f"sam_image_size {self.sam_image_size} is not a multiple of sam_patch_size "
                f"{self.sam_patch_size}"
            )
        if self.n_kernels < 1:
            raise ModelConfigError(f"n_kernels must be at least 1, got {self.n_kernels}")
        if self.sam_kind not in SAM_KINDS:
            raise ModelConfigError(f"sam_kind must be one of {', '.join(SAM_KINDS)}, got "
                                   f"{self.sam_kind!r}")
        for name, allowed in (("sam_input", SAM_INPUTS), ("sam_resize", SAM_RESIZES),
                              ("sam_normalization", SAM_NORMALIZATIONS)):
            if getattr(self, name) not in allowed:
                raise ModelConfigError(f"{name} must be one of {', '.join(allowed)}, got "
                                       f"{getattr(self, name)!r}")
        low, high = self.sam_window
        if not low < high:
            raise ModelConfigError(f"sam_window {tuple(self.sam_window)} must be (low, high) "
                                   "with low < high")
        if self.sam and self.sam_input == "slices" and self.in_channels != 3 and (
                self.sam_kind != "vit" or self.sam_normalization == "sam"):
            raise ModelConfigError(
                f"sam_input 'slices' gives the encoder {self.in_channels} channels, but "
                f"{'a pretrained encoder' if self.sam_kind != 'vit' else 'SAM normalization'} "
                "takes 3: use sam_input 'centre' or 3 context slices")
        if self.sam and self.sam_kind == "mobile_sam" and (
                self.sam_image_size, self.sam_out_channels) != (1024, 256):
            raise ModelConfigError("mobile_sam's TinyViT takes 1024-px images and gives a "
                                   "256-channel embedding; sam_image_size and sam_out_channels "
                                   f"are {self.sam_image_size} and {self.sam_out_channels}")


SAM_KINDS = ("vit", "mobile_sam", "sam_vit_b")
SAM_INPUTS = ("slices", "centre")
SAM_RESIZES = ("bilinear", "bicubic")
SAM_NORMALIZATIONS = ("none", "sam")
# What ``--sam KIND`` sets: the encoder's own architecture for a pretrained kind (its
# checkpoint must fit), frozen, at its image size, fed the centre slice as nnSAM feeds it.
# TinyViT's own widths and depths are fixed by the kind; the ViT fields do not apply to it.
PRETRAINED = {
    "mobile_sam": dict(sam_image_size=1024, sam_patch_size=16, sam_out_channels=256,
                       sam_frozen=True, sam_input="centre"),
    "sam_vit_b": dict(sam_image_size=1024, sam_patch_size=16, sam_embed_dim=768, sam_depth=12,
                      sam_heads=12, sam_out_channels=256, sam_window_size=14,
                      sam_global_attention=(2, 5, 8, 11), sam_frozen=True,
                      sam_input="centre"),
}


def with_sam(config: NetworkConfig, kind: str) -> NetworkConfig:
    """``config`` with the SAM branch of ``kind`` (``none``: no SAM branch)."""
    if kind == "none":
        return replace(config, sam=False)
    if kind not in SAM_KINDS:
        raise ModelConfigError(f"--sam must be one of none, {', '.join(SAM_KINDS)}; got {kind!r}")
    config = replace(config, sam=True, sam_kind=kind, **PRETRAINED.get(kind, {}))
    config.validate()
    return config


PRESETS: dict[str, NetworkConfig] = {
    # As close to the paper's 74.2M parameters and 15.6 G(multiply-accumulates) per
    # 3x192x192 patch as the architecture allows: nnU-Net 2D widths (32..512, 6 stages)
    # with K=4 dynamic kernels and a ViT-S-sized SAM branch at 256 px.
    "paper": NetworkConfig(
        base_features=32, max_features=512, n_stages=6,
        sam_image_size=256, sam_patch_size=16, sam_embed_dim=400, sam_depth=12,
        sam_heads=8, sam_window_size=0,
    ),
    # The container default: same architecture, narrower and shallower SAM branch,
    # sized for tiles per second on a GPU under 4 GB (benchmark/results/README.md has the
    # measurements).
    "fast": NetworkConfig(
        base_features=16, max_features=256, n_stages=6,
        sam_image_size=128, sam_patch_size=16, sam_embed_dim=192, sam_depth=2,
        sam_heads=3, sam_out_channels=64,
    ),
    # Tests and the CPU demo.
    "tiny": NetworkConfig(
        patch_size=(64, 64), base_features=8, max_features=32, n_stages=5,
        sam_image_size=64, sam_patch_size=16, sam_embed_dim=32, sam_depth=1,
        sam_heads=2, sam_out_channels=16, cbam_ratio=4,
    ),
}


def get_config(preset: str, **overrides) -> NetworkConfig:
    """The preset's configuration with overrides applied, validated."""
    if preset not in PRESETS:
        raise ModelConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    config = replace(PRESETS[preset], **overrides)
    config.validate()
    return config


def config_to_dict(config: NetworkConfig) -> dict:
    """The configuration as plain JSON data (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def config_from_dict(data: dict, source: str = "network") -> NetworkConfig:
    """A configuration from ``config_to_dict``'s data; ModelConfigError names a bad field."""
    if not isinstance(data, dict):
        raise ModelConfigError(f"{source}: expected an object of network fields")
    known = {f.name: f for f in fields(NetworkConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ModelConfigError(f"{source}: unknown network field {unknown[0]!r}")
    values = dict(data)
    for name, kind in (("patch_size", int), ("sam_global_attention", int),
                       ("sam_window", float)):
        if name in values:
            try:
                values[name] = tuple(kind(v) for v in values[name])
            except (TypeError, ValueError):
                raise ModelConfigError(f"{source}: network field {name} must be a list of "
                                       f"{kind.__name__}, got {values[name]!r}") from None
    for name, value in values.items():
        default = getattr(NetworkConfig(), name)
        if isinstance(default, bool) and not isinstance(value, bool) or \
                isinstance(default, int) and not isinstance(default, bool) and \
                (isinstance(value, bool) or not isinstance(value, int)) or \
                isinstance(default, float) and not isinstance(value, (int, float)):
            raise ModelConfigError(f"{source}: network field {name} must be "
                                   f"{type(default).__name__}, got {value!r}")
    config = NetworkConfig(**values)
    try:
        config.validate()
    except ModelConfigError as error:
        raise ModelConfigError(f"{source}: {error}") from None
    return config
