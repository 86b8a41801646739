"""The network: nnSAM (2D nnU-Net + SAM image encoder) with dynamic convolution and CBAM.

A 2.5D model: three neighbouring CT slices are the three input channels, two classes
come out (background, lesion). The encoder is nnU-Net-style (two conv -> InstanceNorm ->
LeakyReLU per stage, stride-2 downsampling, features doubling up to a cap) with dynamic
convolutions (Chen et al., CVPR 2020). A SAM image encoder (``inference.sam_encoders``:
a ViT trained with the network, or MobileSAM's TinyViT or SAM's ViT-B, pretrained and
frozen) sees the same patch resized to its image size; its embedding is resized to the
stride-8 skip and concatenated there (as nnSAM does). CBAM (Woo et al., ECCV 2018) gates
every skip.

The preset table (parameters, FLOPs, CPU time per tile):
``python -m benchmark.network.presets``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Re-exported: who builds the network finds its configuration names here too.
from inference.network_config import (  # noqa: F401
    DEFAULT_PRESET,
    DYNAMIC_FORMS,
    PRESETS,
    ModelConfigError,
    NetworkConfig,
    get_config,
)
from inference.sam_encoders import SamBranch


class DynamicConv2d(nn.Module):
    """K kernels mixed per sample by attention: GAP -> FC -> ReLU -> FC(K) -> softmax(z/T).

    Two exact forms of the same function:
    ``grouped``  aggregates each sample's kernel and runs one grouped convolution over
                 the batch (fast; ONNX export needs a fixed batch);
    ``branches`` runs one convolution with K*Cout outputs and mixes them with the
                 attention (K times the FLOPs; exports with a dynamic batch).
    Both equal sum_k a_k (W_k * x + b_k) because convolution is linear.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, n_kernels=4,
                 attention_ratio=0.25, temperature=30.0, bias=True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, kernel_size // 2
        self.n_kernels = n_kernels
        self.form = "grouped"
        hidden = max(int(in_channels * attention_ratio), 4)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, n_kernels)
        self.weight = nn.Parameter(
            torch.empty(n_kernels, out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(n_kernels, out_channels)) if bias else None
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        # The temperature as a Python number too, so that a trained network (T = 1) skips
        # the division (exact: z / 1 == z) without asking the device what T is.
        self._unit_temperature = float(temperature) == 1.0
        self.register_load_state_dict_post_hook(DynamicConv2d._sync_temperature)
        for k in range(n_kernels):
            nn.init.kaiming_uniform_(self.weight[k], a=math.sqrt(5))

    def set_temperature(self, value: float) -> None:
        self.temperature.fill_(float(value))
        self._unit_temperature = float(value) == 1.0

    @staticmethod
    def _sync_temperature(module, _incompatible) -> None:
        module._unit_temperature = float(module.temperature) == 1.0

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3)))))
        return torch.softmax(z if self._unit_temperature else z / self.temperature, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attention(x)
        if self.form == "branches":
            return self._branches(x, a)
        return self._grouped(x, a)

    def _grouped(self, x, a):
        b, c, h, w = x.shape
        k = self.kernel_size
        weight = (a @ self.weight.reshape(self.n_kernels, -1)).reshape(
            b * self.out_channels, c, k, k)
        bias = (a @ self.bias).reshape(-1) if self.bias is not None else None
        y = F.conv2d(x.reshape(1, b * c, h, w), weight.to(x.dtype), bias, self.stride,
                     self.padding, groups=b)
        return y.reshape(b, self.out_channels, y.shape[-2], y.shape[-1])

    def _branches(self, x, a):
        k = self.kernel_size
        weight = self.weight.reshape(self.n_kernels * self.out_channels, self.in_channels, k, k)
        bias = self.bias.reshape(-1) if self.bias is not None else None
        y = F.conv2d(x, weight, bias, self.stride, self.padding)
        y = y.reshape(x.shape[0], self.n_kernels, self.out_channels, y.shape[-2], y.shape[-1])
        return (y * a[:, :, None, None, None].to(y.dtype)).sum(dim=1)


def conv(config: NetworkConfig, cin: int, cout: int, stride: int, dynamic: bool) -> nn.Module:
    if dynamic:
        return DynamicConv2d(cin, cout, 3, stride, config.n_kernels, config.attention_ratio,
                             config.initial_temperature)
    return nn.Conv2d(cin, cout, 3, stride, 1)


class ConvBlock(nn.Sequential):
    """conv -> InstanceNorm -> LeakyReLU."""

    def __init__(self, config, cin, cout, stride=1, dynamic=False):
        super().__init__(conv(config, cin, cout, stride, dynamic),
                         nn.InstanceNorm2d(cout, eps=1e-5, affine=True),
                         nn.LeakyReLU(0.01, inplace=True))


class Stage(nn.Sequential):
    def __init__(self, config, cin, cout, stride, dynamic):
        super().__init__(ConvBlock(config, cin, cout, stride, dynamic),
                         ConvBlock(config, cout, cout, 1, dynamic))


class CBAM(nn.Module):
    """Channel attention (avg+max pool, shared MLP) then spatial attention (7x7 conv)."""

    def __init__(self, channels: int, ratio: int = 16, spatial_kernel: int = 7):
        super().__init__()
        hidden = max(channels // ratio, 1)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1))
        self.spatial = nn.Conv2d(2, 1, spatial_kernel, padding=spatial_kernel // 2)

    def gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The channel gate (B,C,1,1) and the spatial gate (B,1,H,W) for ``x``."""
        channel, spatial, _ = self._gated(x)
        return channel, spatial

    def _gated(self, x):
        # The shared MLP runs once on the average- and max-pooled features stacked along
        # the batch (per sample it is the same arithmetic as two calls): 3 operations
        # fewer per skip, which on a GPU are kernel launches.
        b = x.shape[0]
        pooled = self.mlp(torch.cat([x.mean(dim=(2, 3), keepdim=True),
                                     x.amax(dim=(2, 3), keepdim=True)]))
        channel = torch.sigmoid(pooled[:b] + pooled[b:])
        y = x * channel
        spatial = torch.sigmoid(self.spatial(
            torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)))
        return channel, spatial, y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, spatial, y = self._gated(x)
        return y * spatial  # (x * channel) * spatial, as written out: the same rounding


class NnSam(nn.Module):
    """nnSAM with dynamic-convolution encoder and CBAM skips.

    Training mode returns deep-supervision logits, full resolution first; eval mode
    returns the full-resolution logits only.
    """

    def __init__(self, config: NetworkConfig):
        super().__init__()
        config.validate()
        self.config = config
        feats = config.features
        self.encoder = nn.ModuleList(
            Stage(config, config.in_channels if i == 0 else feats[i - 1], feats[i],
                  1 if i == 0 else 2, config.dynamic)
            for i in range(config.n_stages))
        self.sam = SamBranch(config) if config.sam else None
        self.register_load_state_dict_post_hook(NnSam._refresh_mode)
        if config.sam and config.sam_frozen:
            self.freeze_sam()
        skip_channels = list(feats[:-1])
        if config.sam:
            skip_channels[config.sam_skip_stage] += config.sam_out_channels
        self.cbam = nn.ModuleList(CBAM(c, config.cbam_ratio) for c in skip_channels)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(feats[i + 1], feats[i], 2, 2) for i in range(config.n_stages - 1))
        self.decoder = nn.ModuleList(
            Stage(config, feats[i] + skip_channels[i], feats[i], 1, False)
            for i in range(config.n_stages - 1))
        self.heads = nn.ModuleList(
            nn.Conv2d(feats[i], config.num_classes, 1) for i in range(config.n_stages - 1))

    def dynamic_convs(self) -> list[DynamicConv2d]:
        return [m for m in self.modules() if isinstance(m, DynamicConv2d)]

    def set_temperature(self, value: float) -> None:
        """Set the softmax temperature of every dynamic convolution (annealed 30 -> 1)."""
        for m in self.dynamic_convs():
            m.set_temperature(value)

    def set_dynamic_form(self, form: str) -> None:
        """Choose ``grouped`` (fast) or ``branches`` (dynamic-batch ONNX) dynamic convs."""
        if form not in DYNAMIC_FORMS:
            raise ModelConfigError(f"unknown dynamic form {form!r}; choose {DYNAMIC_FORMS}")
        for m in self.dynamic_convs():
            m.form = form

    def freeze_sam(self, frozen: bool = True) -> None:
        if self.sam is not None:
            for p in self.sam.parameters():
                p.requires_grad_(not frozen)
            self.train(self.training)

    def sam_frozen(self) -> bool:
        return self.sam is not None and not any(p.requires_grad for p in self.sam.parameters())

    def train(self, mode: bool = True):
        """As ``nn.Module.train``, but a frozen SAM encoder always runs as in eval mode:
        its batch norms (TinyViT's) keep their running statistics and their pretrained
        behaviour, and its cached attention biases are recomputed from the weights."""
        super().train(mode)
        if mode and self.sam_frozen():
            self.sam.train(False)
        return self

    @staticmethod
    def _refresh_mode(module, _incompatible) -> None:
        # TinyViT caches its attention biases when put in eval mode: loaded weights must
        # reach that cache
        module.train(module.training)

    def check_input(self, x: torch.Tensor) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ModelConfigError(
                f"expected input (batch, {c.in_channels}, H, W) of {c.in_channels} neighbouring "
                f"slices, got shape {tuple(x.shape)}")
        if x.shape[2] % c.total_stride or x.shape[3] % c.total_stride:
            raise ModelConfigError(
                f"input size {tuple(x.shape[2:])} is not divisible by the network's total "
                f"stride {c.total_stride}")

    def forward(self, x: torch.Tensor):
        if not torch.jit.is_tracing() and not torch.compiler.is_compiling():
            self.check_input(x)
        skips = []
        h = x
        for i, stage in enumerate(self.encoder):
            h = stage(h)
            if i < len(self.encoder) - 1:
                skips.append(h)
        if self.sam is not None:
            s = self.config.sam_skip_stage
            skips[s] = torch.cat([skips[s], self.sam(x, skips[s].shape[-2:]).to(skips[s].dtype)],
                                 dim=1)
        outputs = []
        for i in reversed(range(len(self.decoder))):
            h = self.up[i](h)
            h = self.decoder[i](torch.cat([h, self.cbam[i](skips[i])], dim=1))
            if self.training or i == 0:
                outputs.append(self.heads[i](h))
        if not self.training:
            return outputs[-1]
        return outputs[::-1]


class LesionProbability(nn.Module):
    """The network's lesion probability (softmax channel 1) as one (batch, y, x) map.

    This is what inference needs: one channel comes off the device instead of two.
    """

    def __init__(self, network: NnSam):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.network(x).float()
        return torch.sigmoid(logits[:, 1] - logits[:, 0])


def build_model(preset: str = DEFAULT_PRESET, **overrides) -> NnSam:
    """A freshly initialised network for ``preset`` (see PRESETS)."""
    return NnSam(get_config(preset, **overrides))


def tile_activation_bytes(config: NetworkConfig, bytes_per_value: int = 2) -> int:
    """A generous estimate of the inference memory one tile needs (no network is run).

    Encoder outputs held as skips, the largest decoder stage's working set, each
    sample's aggregated dynamic kernels and the SAM branch's tokens and attention.
    """
    py, px = config.patch_size
    feats = config.features
    maps = [feats[i] * (py >> i) * (px >> i) for i in range(config.n_stages)]
    values = 2 * sum(maps) + 4 * (2 * feats[0] * py * px)
    if config.dynamic:
        cins = [config.in_channels] + feats[:-1]
        values += sum(9 * f * (c + f) for c, f in zip(cins, feats))
    if config.sam:
        tokens = (config.sam_image_size // config.sam_patch_size) ** 2
        values += config.in_channels * config.sam_image_size**2
        values += 12 * tokens * config.sam_embed_dim + config.sam_heads * tokens**2
    return int(values * bytes_per_value)


def count_parameters(model: nn.Module, trainable: bool | None = None) -> int:
    """All parameters, or only the trainable (True) or frozen (False) ones."""
    return sum(p.numel() for p in model.parameters()
               if trainable is None or p.requires_grad == trainable)
