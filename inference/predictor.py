"""The predictor: a model loaded once, then fed cases; reading and writing overlap compute.

Data flows one way: read -> preprocess -> sliding window -> decide and filter at
network resolution -> restore onto the input grid -> write, the steps after
preprocessing being ``inference.pipeline``'s. Each stage's time is logged per case.
Training's threshold search and pseudo-labelling use this same class.

No case is lost to GPU memory: a stage that runs out of it first retries smaller where it
can (the sliding window halves its batch, preprocessing takes thinner slabs), then the
case runs again from its file on the CPU, with one warning; the next case is back on
the GPU.
"""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from inference import nifti, nifti_header, nifti_writer
from inference.backends import DEFAULT_TORCH_MODE, OnnxBackend, TorchBackend, cpu_fallback_backend
from inference.budget import (
    DEFAULT_GPU_MEMORY_MB,
    allocator_bytes,
    blending,
    host_memory,
    host_memory_limit_mb,
    may_read_ahead,
    memory_fraction,
    tiles_per_batch,
)
from inference.devices import choose_backend, resolve_device
from inference.pipeline import decide, network_probability
from inference.plans import Plan
from inference.preprocess import PREPROCESS_SLAB, Prepared, preprocess
from inference.reading import FirstRead, cases_to_do, timed_read
from inference.restore import restore, restore_probability
from inference.weights import load_plan

log = logging.getLogger(__name__)

STAGES = ("read", "preprocess", "network", "postprocess", "restore", "write")
TIMED_AS = {"probabilities": "restore"}  # stages timed within another
RETRY_SLAB = 4  # input slices per slab when preprocessing again after running out of memory


class OutOfDeviceMemory(RuntimeError):
    """A stage of a case ran out of the device's memory after its own retries."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"out of GPU memory in {stage} ({reason})")
        self.stage = stage


@dataclass
class CaseResult:
    case: str
    mask: np.ndarray | None = None
    probability: np.ndarray | None = None
    timings: dict = field(default_factory=dict)
    tiles: int = 0
    error: str | None = None


class Predictor:
    """Build once with a weights folder; call ``predict`` on volumes or ``run`` on files."""

    def __init__(self, weights: str | Path, device: str = "auto", backend: str = "auto",
                 gpu_memory_mb: float = DEFAULT_GPU_MEMORY_MB, tile_step: float | None = None,
                 batch_size: int | None = None, plan: Plan | None = None,
                 torch_mode: str = DEFAULT_TORCH_MODE, threads: int | None = None,
                 memory_limit_mb: float | None = None):
        start = time.perf_counter()
        self.memory_limit_mb = memory_limit_mb or host_memory_limit_mb()
        self.threads = threads
        self._cpu: Predictor | None = None  # where a case goes when the GPU cannot hold it
        self.weights = Path(weights)
        self.plan = plan or load_plan(self.weights)
        if tile_step is not None:
            self.plan.tile_step = tile_step
            self.plan.validate("--tile-step")
        self.device = resolve_device(device)
        name = choose_backend(backend, self.device)
        if name == "onnx":
            self.backend = OnnxBackend(self.weights, self.device, threads=threads)
            self.backend.check_plan(self.plan)
        else:
            fraction = None
            if self.device != "cpu":
                fraction = memory_fraction(gpu_memory_mb, self.device)
            self.backend = TorchBackend(self.weights, self.plan, self.device,
                                        memory_fraction=fraction, mode=torch_mode)
        self.gpu_memory_mb = gpu_memory_mb
        self.batch_size = batch_size or self._batch_size(gpu_memory_mb)
        self.startup_s = time.perf_counter() - start
        log.info("model ready in %.2f s: %s backend, %s, %d tiles per batch",
                 self.startup_s, self.backend.name, self.backend.provider, self.batch_size)

    def _batch_size(self, gpu_memory_mb: float) -> int:
        if self.backend.name == "onnx":
            return self.backend.batch_size
        if self.device == "cpu":
            return 8
        from inference.model import tile_activation_bytes

        per_tile = tile_activation_bytes(self.plan.network, bytes_per_value=2)
        return tiles_per_batch(allocator_bytes(gpu_memory_mb), per_tile)

    def _blending(self, shape) -> tuple[int, bool]:
        """Slab depth and whether blended slabs go to host memory (``budget.blending``)."""
        if self.device == "cpu":
            return 32, False
        return blending(allocator_bytes(self.gpu_memory_mb), shape)

    def prepare(self, volume: nifti.CtVolume, slab: int = PREPROCESS_SLAB) -> Prepared:
        """The volume as the network sees it, on the backend's device."""
        return preprocess(volume.array, volume.spacing, volume.direction, self.plan,
                          self.backend.prepare, slab)

    def probability(self, prepared: Prepared, tile_step: float | None = None,
                    progress=None) -> np.ndarray:
        """Lesion probability at network resolution of a prepared volume (with a body)."""
        slab, to_host = self._blending(prepared.body.shape)
        return network_probability(
            prepared.volume, self.backend, self.plan, self.batch_size, tile_step, prepared.body,
            slab_slices=slab, to_host=to_host, oom_errors=self.backend.oom_errors,
            progress=progress)

    def predict(self, volume: nifti.CtVolume, probabilities: bool = False,
                progress=None, release_input: bool = False) -> CaseResult:
        """Mask (uint8 z, y, x on the input grid) for one volume, with stage timings.

        ``release_input`` drops ``volume.array`` once it is preprocessed: the rest needs
        only its grid, and the input is the largest array of the case. A stage out of the
        device's memory after its retries raises ``OutOfDeviceMemory``.
        """
        result = CaseResult(case=str(volume.path or "array"))
        timings = result.timings
        shape = volume.array.shape
        try:
            prepared = self._staged("preprocess", timings, self._prepare_retrying, volume)
        except nifti.InputError as error:
            raise nifti.InputError(f"{volume.path or 'the volume'}: {error}") from None
        if release_input:
            volume.array = None
        post = self.plan.postprocessing
        if prepared.box is None:  # no body at all: nothing to find
            result.mask = np.zeros(shape, np.uint8)
            result.probability = np.zeros(shape, np.float32) if probabilities else None
            return result
        probability = self._staged("network", timings, self.probability, prepared,
                                   progress=progress)
        prepared.volume = None
        self._release()
        kept = self._staged("postprocess", timings, decide, probability, prepared.spacing_zyx,
                            post)
        result.mask = self._staged("restore", timings, restore, probability, kept, prepared,
                                   post.threshold)
        if probabilities:
            result.probability = self._staged("probabilities", timings, restore_probability,
                                              probability, prepared)
        return result

    def _staged(self, stage: str, timings: dict, function, *args, **kwargs):
        """``function(*args, **kwargs)``, its time added to ``timings``; out of the
        device's memory, ``OutOfDeviceMemory`` (raised once the failed call's tensors are
        no longer referenced, so that the memory can be handed back)."""
        start = time.perf_counter()
        try:
            out = function(*args, **kwargs)
        except self.backend.oom_errors as error:
            reason = _first_sentences(error)
        else:
            key = TIMED_AS.get(stage, stage)
            timings[key] = timings.get(key, 0.0) + _seconds_since(start)
            return out
        raise OutOfDeviceMemory(stage, reason)

    def _prepare_retrying(self, volume: nifti.CtVolume) -> Prepared:
        """``prepare``; out of the device's memory, once more in thinner slabs."""
        try:
            return self.prepare(volume)
        except self.backend.oom_errors:
            pass  # leave the handler first: the failed call's tensors go with it
        self._release()
        log.info("%s: out of GPU memory in preprocess; again in slabs of %d slices",
                 volume.path or "array", RETRY_SLAB)
        return self.prepare(volume, slab=RETRY_SLAB)

    def _release(self) -> None:
        """Hand GPU memory back as soon as the network is done (it is scored), CUDA
        graphs included, so the next stages have the whole budget."""
        self.backend.release()

    def _on_cpu(self) -> Predictor:
        """The same weights and plan on the CPU (``cpu_fallback_backend``), built once."""
        if self._cpu is None:
            self._cpu = Predictor(self.weights, "cpu", cpu_fallback_backend(self.weights),
                                  plan=self.plan, threads=self.threads,
                                  memory_limit_mb=self.memory_limit_mb)
        return self._cpu

    def _predict_case(self, case: str, path: Path, volume: nifti.CtVolume,
                      probabilities: bool) -> tuple[nifti.CtVolume, CaseResult]:
        """(volume, prediction) on this predictor's device; a case its memory cannot hold
        runs again on the CPU, from its file if its input was already released."""
        try:
            return volume, self.predict(volume, probabilities, release_input=True)
        except OutOfDeviceMemory as error:
            why = str(error)
        self._release()
        log.warning("%s: %s; running this case on the CPU (%s)", case, why,
                    cpu_fallback_backend(self.weights))
        read_s = 0.0
        if volume.array is None:
            volume, read_s = timed_read(path)
        predicted = self._on_cpu().predict(volume, probabilities, release_input=True)
        predicted.timings["read"] = read_s
        return volume, predicted

    def run(self, cases: list[tuple[str, Path]], output_dir: Path, skip_existing: bool = False,
            save_probabilities: bool = False, show_progress: bool = True,
            first_read: FirstRead | None = None, report=None) -> list[CaseResult]:
        """Predict ``(case_id, path)`` pairs into ``output_dir``; failures are reported, not raised.

        ``first_read`` is a read already under way (``read_ahead``, started before the
        model was built); it is used if it reads the first case still to do. ``report``
        (``inference.supervise.Progress``) hears of each case started and of each case
        ended, written or failed, as soon as it is.
        """
        from tqdm import tqdm

        output_dir = Path(output_dir)
        todo = cases_to_do(cases, output_dir, skip_existing)
        results: list[CaseResult] = []
        writes: list[tuple[CaseResult, Future]] = []
        with ThreadPoolExecutor(1, "read") as reader, ThreadPoolExecutor(1, "write") as writer:
            pending = None
            if todo and first_read is not None and first_read.path == todo[0][1]:
                pending = first_read.future
            elif todo:
                pending = reader.submit(timed_read, todo[0][1])
            for i, (case, path) in enumerate(tqdm(todo, desc="cases", unit="case",
                                                  disable=not show_progress,
                                                  file=_Lossy(sys.stderr))):
                future, pending = pending, None
                ahead = i + 1 < len(todo) and self._may_read_ahead(path, todo[i + 1][1])
                if ahead:
                    pending = reader.submit(timed_read, todo[i + 1][1])
                if report is not None:
                    report.started(i)
                result = self._run_one(case, path, future, output_dir, writer,
                                       save_probabilities, writes)
                if not ahead and i + 1 < len(todo):  # read once this case's data is freed
                    pending = reader.submit(timed_read, todo[i + 1][1])
                if result.error and report is not None:
                    report.ended(i, ok=False)
                elif report is not None:
                    writes[-1][1].add_done_callback(
                        lambda done, i=i: report.ended(i, ok=done.exception() is None))
                results.append(result)
            for result, future in writes:
                try:
                    result.timings["write"] = future.result()
                except Exception as error:  # noqa: BLE001 - reported per case
                    result.error = f"{result.case}: cannot write its files ({error})"
                    log.error(result.error)
                    continue
                log.info("%s: %s", result.case, _format_timings(result))
        return results

    def _may_read_ahead(self, current: Path, following: Path) -> bool:
        """Read the next case during this one unless that could pass the memory limit."""
        if self.memory_limit_mb is None:
            return True
        ahead = may_read_ahead(self.memory_limit_mb, nifti_header.voxel_bytes(current) or 0,
                               nifti_header.voxel_bytes(following))
        if not ahead:
            log.info("%s: read after the case before it, not during it: both at once could "
                     "pass the memory limit of %.0f MB", Path(following).name,
                     self.memory_limit_mb)
        return ahead

    def _run_one(self, case, path, future, output_dir, writer, save_probabilities, writes):
        result = CaseResult(case=case)
        try:
            volume, read_s = future.result()
            volume, predicted = self._predict_case(case, path, volume, save_probabilities)
        except nifti.InputError as error:
            result.error = str(error)
            log.error("%s", result.error)
            return result
        except MemoryError as error:  # past the header's checks: one line, no traceback
            available, what = host_memory()
            result.error = (f"{path}: out of memory ({error}); {what} is "
                            f"{available / 2**30:.1f} GiB")
            log.error("%s", result.error)
            return result
        except Exception as error:  # our bug: keep the traceback, go on with the next case
            result.error = f"{case}: failed ({type(error).__name__}: {error})"
            log.exception("%s", result.error)
            return result
        read_s += predicted.timings.pop("read", 0.0)
        result.timings = {"read": read_s, **predicted.timings}
        mask, probability, grid = predicted.mask, predicted.probability, volume.grid
        del volume
        writes.append((result, writer.submit(_timed_write, mask, probability, grid,
                                             output_dir, case)))
        return result


class _Lossy:
    """The progress bar's stream: a reader that went away (EPIPE) costs the bar, not the case."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except (OSError, ValueError):
            pass

    def flush(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _first_sentences(error: Exception, n: int = 2) -> str:
    """The start of an error's message, for one line: torch's out-of-memory message
    says what it tried to allocate in its first two sentences, then a paragraph more."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ". ".join(line.split(". ")[:n])[:160]


def _seconds_since(start: float) -> float:
    """Seconds since ``start``, a ``time.perf_counter()`` reading."""
    return time.perf_counter() - start


def _timed_write(mask, probability, grid, output_dir: Path, case: str) -> float:
    t = time.perf_counter()
    nifti_writer.write_mask(mask, grid, output_dir / f"{case}.nii.gz")
    if probability is not None:
        (output_dir / "probabilities").mkdir(exist_ok=True)
        nifti_writer.write_probabilities(probability, grid,
                                         output_dir / "probabilities" / f"{case}.nii.gz")
    return _seconds_since(t)


def _format_timings(result: CaseResult) -> str:
    parts = [f"{s} {result.timings[s]:.2f} s" for s in STAGES if s in result.timings]
    return " | ".join(parts) + f" | total {sum(result.timings.values()):.2f} s"
