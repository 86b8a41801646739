"""Which device and which backend a run uses, found without importing torch, numpy or the
backends themselves: the command line checks them before the first case is read."""

from __future__ import annotations

import ctypes
import importlib.util
import logging

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx")


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
            return "cuda:0"
        log.warning("No GPU detected. Running on the CPU; this is slower.")
        return "cpu"
    if requested == "cpu":
        return "cpu"
    if requested == "cuda" or requested.startswith("cuda:"):
        index = int(requested.partition(":")[2] or 0)
        if index >= gpu_count():
            raise DeviceError(f"--device {requested}: no such GPU is visible "
                              f"({gpu_count()} found)")
        return f"cuda:{index}"
    raise DeviceError(f"--device must be auto, cpu or cuda[:N], got {requested!r}")


def torch_installed() -> bool:
    """Whether torch can be imported here, found without importing it (an image may lack it)."""
    return importlib.util.find_spec("torch") is not None


def choose_backend(requested: str, device: str) -> str:
    """``auto``: torch on a GPU, onnxruntime on the CPU or where torch is not installed."""
    if requested not in BACKENDS:
        raise DeviceError(f"--backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "torch" and not torch_installed():
        raise DeviceError("--backend torch: torch is not installed here; use --backend onnx")
    if requested != "auto":
        return requested
    if device == "cpu":
        return "onnx"
    if not torch_installed():
        log.warning("torch is not installed here: running onnxruntime instead of torch on %s",
                    device)
        return "onnx"
    return "torch"
