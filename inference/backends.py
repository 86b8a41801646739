"""Backends that turn a batch of 2.5D tiles into lesion probabilities.

``TorchBackend`` runs the state dict on CUDA (fp16) or the CPU; ``OnnxBackend`` runs
the exported graph with onnxruntime and never imports torch, which saves seconds of
start-up on every case. ``inference.devices.choose_backend`` picks by device: torch on a
GPU, onnxruntime on the CPU (the measurements: benchmark/results/README.md).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from inference import weights as weights_io
from inference.budget import graph_fits
from inference.devices import DeviceError
from inference.pipeline import network_forward
from inference.plans import Plan

log = logging.getLogger(__name__)


def onnxruntime_installed() -> bool:
    """Whether onnxruntime can be imported here, found without importing it."""
    return importlib.util.find_spec("onnxruntime") is not None


def cpu_fallback_backend(folder) -> str:
    """The backend a case runs on when the GPU's memory does not hold it: onnxruntime where
    it and the exported graph are here (it starts without torch and runs faster on the
    CPU), else torch on the CPU."""
    if onnxruntime_installed() and (Path(folder) / weights_io.ONNX_MODEL).is_file():
        return "onnx"
    return "torch"


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
        self.path = path

    def check_plan(self, plan: Plan) -> None:
        """The graph's tile shape against the plan's, once before any case (WeightsError)."""
        shape = list(self.session.get_inputs()[0].shape)
        expected = [plan.context_slices, *plan.patch_size]
        fixed = [d if isinstance(d, int) else None for d in shape[1:]]
        if len(shape) != 4 or any(d is not None and d != e for d, e in zip(fixed, expected)):
            raise weights_io.WeightsError(
                f"{self.path}: the model takes tiles of {shape[1:]} (channels, y, x) but "
                f"plans.json gives context_slices {plan.context_slices} and patch_size "
                f"{list(plan.patch_size)}: the plan and the model come from different runs")

    def prepare(self, volume: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(volume, dtype=np.float32)

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        n = tiles.shape[0]
        if self.fixed_batch and n < self.fixed_batch:
            pad = np.zeros((self.fixed_batch - n, *tiles.shape[1:]), np.float32)
            tiles = np.concatenate([tiles, pad])
        return self.session.run(None, {self.input_name: tiles})[0][:n]

    def release(self) -> None:
        """Nothing to hand back: onnxruntime's memory is the host's."""


TORCH_MODES = ("grouped/autocast", "grouped/half", "branches/autocast", "branches/half",
               "grouped/fp32", "branches/fp32")
DEFAULT_TORCH_MODE = "grouped/autocast"


class TorchBackend:
    """The torch state dict on CUDA (fp16) or the CPU.

    ``mode`` is ``FORM/PRECISION[/graph][/nhwc]``: the dynamic-convolution form (``grouped``
    or ``branches``, the same function), the precision on CUDA (``autocast``: fp16 with
    instance norm and softmax in fp32; ``half``: everything fp16; ``fp32``), with
    ``/graph`` each batch shape is captured once as a CUDA graph and replayed, which
    saves the launch cost of the network's many small kernels (a shape whose graph would
    not fit under the memory limit runs eagerly, ``inference.budget.graph_fits``; the
    graphs are dropped by ``release``), and with ``/nhwc`` weights and tiles are
    channels-last.
    ``python -m benchmark.network.network_modes`` measures them. On CUDA, a batch smaller than the
    largest seen is padded up to it, so every call has one shape (cuDNN's autotuning and
    graph capture then happen once).
    """

    name = "torch"

    def __init__(self, folder, plan: Plan, device: str = "cpu", fp16: bool = True,
                 memory_fraction: float | None = None, mode: str = DEFAULT_TORCH_MODE):
        import torch

        from inference.model import LesionProbability, NnSam

        form, precision, graph, nhwc = _parse_mode(mode)
        self.torch = torch
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        if cuda and self.device.index is None:  # set_device needs an index
            self.device = torch.device("cuda", 0)
        self.memory_limit = None  # bytes the allocator may reserve; None: the free memory
        if cuda:
            torch.cuda.set_device(self.device)
            if memory_fraction is not None:
                torch.cuda.set_per_process_memory_fraction(memory_fraction, self.device)
                self.memory_limit = memory_fraction * torch.cuda.get_device_properties(
                    self.device).total_memory
            # No autotuning: it times every convolution's algorithms again in each fresh
            # process, one per case in the challenge, which cost more than it saved
            # (benchmark/results/README.md).
            torch.backends.cudnn.benchmark = False
        path = weights_io.verified(folder, weights_io.TORCH_MODEL)
        state = torch.load(path, map_location="cpu", weights_only=True)
        network = NnSam(plan.network)
        try:
            network.load_state_dict(state)
        except RuntimeError as error:  # torch lists every key; the first says enough
            first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()),
                         str(error))
            raise weights_io.WeightsError(
                f"{path}: does not fit the network plans.json describes (preset {plan.preset}, "
                f"context_slices {plan.context_slices}, patch_size {list(plan.patch_size)}): "
                f"{first[:200]}") from None
        network.set_dynamic_form(form)
        self.fp16 = fp16 and cuda and precision != "fp32"
        self.half = self.fp16 and precision == "half"
        model = LesionProbability(network).eval().to(self.device)
        self.model = model.half() if self.half else model
        self.graphs = {} if graph and cuda else None
        # channels-last (NHWC) weights and tiles: the layout tensor cores read in fp16
        self.memory_format = torch.channels_last if nhwc else torch.contiguous_format
        if nhwc:  # the 4D convolution weights (a dynamic convolution's are 5D: kept)
            for parameter in self.model.parameters():
                if parameter.dim() == 4:
                    parameter.data = parameter.data.contiguous(memory_format=torch.channels_last)
        self.widest = 0
        self.oom_errors = (torch.cuda.OutOfMemoryError,) if cuda else ()
        self.provider = f"torch {torch.__version__} on {self.device}, {form}" + (
            (" fp16" + (" (half)" if self.half else "")) if self.fp16 else "") + (
            ", CUDA graphs" if self.graphs is not None else "")
        self.batch_size = 8

    def prepare(self, volume: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32)).to(
            self.device)

    def _forward(self, tiles):
        if self.half:
            tiles = tiles.half()
        tiles = tiles.contiguous(memory_format=self.memory_format)
        return network_forward(self.model, tiles, autocast=self.fp16 and not self.half)

    def __call__(self, tiles):
        if self.device.type != "cuda":
            return self._forward(tiles)
        n = tiles.shape[0]
        if n > self.widest:
            self.widest = n
        if n < self.widest:  # one shape for every call
            pad = tiles.new_zeros((self.widest - n, *tiles.shape[1:]))
            tiles = self.torch.cat([tiles, pad])
        try:
            out = self._forward(tiles) if self.graphs is None else self._replay(tiles)
        except self.oom_errors:
            self.widest, self.graphs = 0, None if self.graphs is None else {}
            raise
        return out[:n]

    def release(self) -> None:
        """Drop the CUDA graphs and hand cached memory back: a graph's private pool would
        otherwise stay reserved through the stages after the network and the next case."""
        if self.device.type != "cuda":
            return
        if self.graphs:
            self.graphs = {}
        self.torch.cuda.empty_cache()

    def _replay(self, tiles):
        key = tuple(tiles.shape)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(tiles)
            except self.oom_errors:
                raise  # the caller retries with a smaller batch
            except RuntimeError as error:  # a capture failure costs speed, not the case
                log.warning("CUDA graph capture failed (%s); running without graphs", error)
                self.graphs = None
                return self._forward(tiles)
        if self.graphs[key] is None:  # this shape's graph would not fit: eager
            return self._forward(tiles)
        graph, static, output = self.graphs[key]
        static.copy_(tiles)
        graph.replay()
        return output.clone()

    def _capture(self, tiles):
        """(graph, static input, output) for ``tiles``' shape, or None where the graph's
        pool would not fit beside what the allocator holds."""
        torch = self.torch
        static = tiles.clone()
        peak = self._warm_up(static)
        torch.cuda.empty_cache()  # the warm-up's cached blocks are not the graph's pool
        reserved = torch.cuda.memory_reserved(self.device)
        limit = self.memory_limit
        if limit is None:
            limit = reserved + torch.cuda.mem_get_info(self.device)[0]
        if not graph_fits(limit, reserved, peak):
            log.info("a CUDA graph of %d tiles would not fit in the memory limit (%.0f of "
                     "%.0f MiB reserved, forward %.0f MiB): running them without one",
                     tiles.shape[0], reserved / 2**20, limit / 2**20, peak / 2**20)
            return None
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = self._forward(static)
        return graph, static, output

    def _warm_up(self, static) -> int:
        """Two eager forwards off the default stream (capture requires it); the bytes one
        forward allocates at its peak above what was held before."""
        torch = self.torch
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        return torch.cuda.max_memory_allocated(self.device) - before


def _parse_mode(mode: str) -> tuple[str, str, bool, bool]:
    """(form, precision, CUDA graphs, channels-last) of ``FORM/PRECISION[/graph][/nhwc]``."""
    parts = mode.split("/")
    nhwc = parts[-1] == "nhwc"
    if nhwc:
        parts = parts[:-1]
    graph = parts[-1] == "graph"
    if graph:
        parts = parts[:-1]
    if "/".join(parts) not in TORCH_MODES:
        raise DeviceError(f"torch mode must be FORM/PRECISION[/graph][/nhwc], one of "
                          f"{', '.join(TORCH_MODES)}; got {mode!r}")
    return parts[0], parts[1], graph, nhwc
