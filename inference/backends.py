"""Backends that turn a batch of 2.5D tiles into lesion probabilities.

``TorchBackend`` runs the state dict on CUDA (fp16) or the CPU; ``OnnxBackend`` runs
the exported graph with onnxruntime and never imports torch, which saves seconds of
start-up on every case. ``choose`` picks by device: torch on a GPU, onnxruntime on the
CPU (measured: benchmark/results/).
"""

from __future__ import annotations

import ctypes
import logging

import numpy as np

from inference import weights as weights_io
from inference.plans import Plan

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """The requested device or backend is not available."""


def gpu_count() -> int:
    """CUDA devices visible through the driver, without importing torch (0 if none)."""
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu`` (said in one line)."""
    if requested == "auto":
        if gpu_count() > 0:
            return "cuda"
        log.warning("No GPU detected. Running on the CPU; this is slower.")
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        index = int(requested.partition(":")[2] or 0)
        if index >= gpu_count():
            raise DeviceError(f"--device {requested}: no such GPU is visible "
                              f"({gpu_count()} found)")
        return requested
    raise DeviceError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")


def choose_backend(requested: str, device: str) -> str:
    if requested == "auto":
        return "onnx" if device == "cpu" else "torch"
    if requested not in ("torch", "onnx"):
        raise DeviceError(f"--backend must be auto, torch or onnx, got {requested!r}")
    return requested


class OnnxBackend:
    """onnxruntime session over the exported lesion-probability graph."""

    name = "onnx"
    oom_errors: tuple = ()

    def __init__(self, folder, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        path = weights_io.verified(folder, weights_io.ONNX_MODEL)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        else:
            if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from pip's nvidia-* wheels
                ort.preload_dlls()
            index = int(device.partition(":")[2] or 0)
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.provider = self.session.get_providers()[0]
        if device != "cpu" and self.provider != "CUDAExecutionProvider":
            # onnxruntime falls back to the CPU with only a warning; say it plainly.
            log.warning("onnxruntime could not use the GPU (provider %s); running on the CPU",
                        self.provider)
        self.device = "cpu" if self.provider == "CPUExecutionProvider" else device
        shape = self.session.get_inputs()[0].shape
        self.input_name = self.session.get_inputs()[0].name
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.batch_size = self.fixed_batch or 8

    def prepare(self, volume: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(volume, dtype=np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n = tiles.shape[0]
        if self.fixed_batch and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *tiles.shape[1:]), np.float32)
            tiles = np.concatenate([tiles, pad])
        return self.session.run(None, {self.input_name: tiles})[0][:n]


class TorchBackend:
    """The torch state dict on CUDA (fp16 autocast) or the CPU."""

    name = "torch"

    def __init__(self, folder, plan: Plan, device: str = "cpu", fp16: bool = True,
                 memory_fraction: float | None = None):
        import torch

        from inference.model import LesionProbability, build_model

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            if memory_fraction is not None:
                torch.cuda.set_per_process_memory_fraction(memory_fraction, self.device)
            torch.backends.cudnn.benchmark = True
        path = weights_io.verified(folder, weights_io.TORCH_MODEL)
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = build_model(plan.preset, patch_size=tuple(plan.patch_size),
                              in_channels=plan.context_slices)
        network.load_state_dict(state)
        self.model = LesionProbability(network).eval().to(self.device)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.oom_errors = (torch.cuda.OutOfMemoryError,) if self.device.type == "cuda" else ()
        self.provider = f"torch {torch.__version__} on {self.device}" + (" fp16" if self.fp16 else "")
        self.batch_size = 8

    def prepare(self, volume: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(self.device)

    def __call__(self, tiles):
        torch = self.torch
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16,
                                                    enabled=self.fp16):
            return self.model(tiles).float()

