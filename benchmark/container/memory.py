"""Memory polled every 0.1 s by a separate process, the way the FLARE organisers score it.

The organisers read whole-GPU memory (total minus free, NVML ``used``) every 0.1 s
while a case runs; MaxGPU is the largest sample and the memory-time area is the sum of
the samples times 0.1 (MB*s). :class:`MemoryPoller` does the same in its own process
(so the run it watches never shares a Python interpreter with it), started before the
run and stopped after it.

Without a GPU (no NVML, or no device) :class:`RssTreeSampler` samples the resident
memory of the run's process tree instead. That is a different quantity, and every
table says which one it holds (:attr:`MemoryTrace.label`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field

INTERVAL_S = 0.1
MB = 2**20  # the organisers divide NVML's bytes by 1024*1024 and call it MB


class NvmlSampler:
    """Whole-GPU memory in use (NVML ``used``: every process and the driver), MB."""

    kind = "gpu"
    label = "whole-GPU memory used (NVML, polled every 0.1 s)"

    def __init__(self, index: int = 0):
        self.index = index
        self._nvml = self._handle = None

    def open(self) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)

    def __call__(self) -> float:
        return self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / MB

    def close(self) -> None:
        if self._nvml is not None:
            self._nvml.nvmlShutdown()


class RssTreeSampler:
    """Resident memory of one process and its descendants, MB (0 until it is named).

    The run's pid is not known when polling starts, so it is handed over through shared
    memory with :meth:`watch`. Pages shared between processes of the tree count once per
    process, as ``ps`` shows them; for a ``sh predict.sh`` run that execs Python there is
    one process.
    """

    kind = "rss"
    label = "peak RSS of the run's process tree (CPU only, no GPU; psutil, polled every 0.1 s)"

    def __init__(self, pid: int | None = None):
        # A raw shared int (no lock): one writer, one reader, and no semaphore to track.
        self._pid = mp.get_context("spawn").RawValue("q", pid or 0)
        self._root = None

    def watch(self, pid: int) -> None:
        """Sample ``pid``'s tree from now on."""
        self._pid.value = pid

    def open(self) -> None:
        import psutil

        self._psutil = psutil
        self._me = os.getpid()

    def __call__(self) -> float:
        psutil = self._psutil
        pid = self._pid.value
        if not pid:
            return 0.0
        try:
            if self._root is None or self._root.pid != pid:
                self._root = psutil.Process(pid)
            procs = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for p in procs:
            if p.pid == self._me:
                continue
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # ended between listing and reading: it holds nothing now
        return total / MB

    def close(self) -> None:
        pass


def nvml_available(index: int = 0) -> bool:
    """True when NVML loads and GPU ``index`` exists."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    try:
        return index < pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return False
    finally:
        pynvml.nvmlShutdown()


def idle_mb(sampler=None) -> float | None:
    """Whole-GPU memory in use now (MB), one reading of a fresh sampler before a run: the
    floor its maximum stands on (other processes, and what some drivers report on an idle
    GPU). ``sampler`` defaults to NVML's GPU 0. None without NVML, and for the RSS tree:
    a run that has not started holds nothing."""
    if sampler is None:
        if not nvml_available(0):
            return None
        sampler = NvmlSampler(0)
    if sampler.kind != "gpu":
        return None
    sampler.open()
    try:
        return float(sampler())
    finally:
        sampler.close()


def rss_available() -> bool:
    """True when psutil (needed to sample RSS without a GPU) is installed."""
    try:
        import psutil  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def default_sampler(gpu_index: int = 0):
    """NVML on GPU ``gpu_index`` when there is one, else an RSS sampler to
    :meth:`~RssTreeSampler.watch` the run."""
    if nvml_available(gpu_index):
        return NvmlSampler(gpu_index)
    return RssTreeSampler()


@dataclass
class MemoryTrace:
    """Samples of one run; ``peak`` and ``area`` as the organisers compute them."""

    samples: list[float]
    interval: float = INTERVAL_S
    kind: str = "gpu"
    label: str = NvmlSampler.label
    errors: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def area(self) -> float:
        """Sum of the samples times the interval (MB*s), not a time integral."""
        return sum(self.samples) * self.interval


def _poll(sampler, interval: float, ready, stop, conn) -> None:
    samples, errors = [], []
    try:
        sampler.open()
    except Exception as error:  # noqa: BLE001 - reported to the parent
        conn.send(([], [f"cannot open the sampler: {error!r}"]))
        ready.set()
        return
    ready.set()
    tick = time.monotonic()
    try:
        while True:
            try:
                samples.append(float(sampler()))
            except Exception as error:  # noqa: BLE001 - one bad sample must not end the trace
                if len(errors) < 10:
                    errors.append(repr(error))
            tick += interval
            # A fixed schedule: a slow sample delays one tick, it does not shift the rest.
            if stop.wait(max(tick - time.monotonic(), 0.0)):
                break
    finally:
        sampler.close()
        conn.send((samples, errors))


class MemoryPoller:
    """Poll ``sampler`` every ``interval`` s in a child process between start() and stop()."""

    def __init__(self, sampler, interval: float = INTERVAL_S):
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.sampler = sampler
        self.interval = interval
        self._process = None

    def start(self, timeout: float = 60.0) -> "MemoryPoller":
        """Start polling; returns once the first sample is about to be taken."""
        if self._process is not None:
            raise RuntimeError("the poller is already running")
        ctx = mp.get_context("spawn")  # no fork of a parent that may hold threads
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._conn, child = ctx.Pipe(duplex=False)
        self._process = ctx.Process(target=_poll, name="memory-poller", daemon=True,
                                    args=(self.sampler, self.interval, self._ready,
                                          self._stop, child))
        self._process.start()
        child.close()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._process.is_alive() or time.monotonic() > deadline:
                self._process.kill()
                self._process = None
                raise RuntimeError("the memory poller did not start (it died or took over "
                                   f"{timeout:.0f} s); run with a Python file, not stdin")
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def stop(self) -> MemoryTrace:
        """Stop polling and return the trace."""
        if self._process is None:
            raise RuntimeError("the poller was not started")
        self._stop.set()
        try:
            samples, errors = self._conn.recv()  # before join: a full pipe would block it
        except EOFError:
            samples, errors = [], ["the memory poller died without reporting"]
        self._process.join(10)
        self._process = None
        return MemoryTrace(samples, self.interval, self.sampler.kind, self.sampler.label, errors)

    def __enter__(self) -> "MemoryPoller":
        return self.start()

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self.trace = self.stop()


def sampler_factory(gpu_index: int = 0):
    """A function making a fresh sampler per run: NVML on a GPU, else the RSS tree.

    Raises RuntimeError (one line for the CLI) when neither can be measured.
    """
    if nvml_available(gpu_index):
        return lambda: NvmlSampler(gpu_index)
    if rss_available():
        return RssTreeSampler
    raise RuntimeError("no GPU, and psutil (needed to measure RSS instead) is not installed: "
                       "pip install psutil (the bench extra)")


def measuring(gpu_index: int = 0):
    """``(sampler factory, whether it measures the GPU)``; RuntimeError as ``sampler_factory``."""
    sampler = sampler_factory(gpu_index)
    return sampler, sampler is not RssTreeSampler
