"""The memory poller: a separate process sampling every interval; peak and area as the
organisers take them."""

import subprocess
import sys
import time

import pytest

from benchmark.container.memory import (
    MemoryPoller,
    MemoryTrace,
    NvmlSampler,
    RssTreeSampler,
    nvml_available,
)


class ScriptedSampler:
    """Returns 10, 20, 30, ... MB: one value per sample (picklable for the spawned poller)."""

    kind = "fake"
    label = "scripted"

    def open(self):
        self.n = 0

    def __call__(self):
        self.n += 1
        return 10.0 * self.n

    def close(self):
        pass


def test_trace_peak_and_area_are_max_and_sum_times_interval():
    trace = MemoryTrace([100.0, 300.0, 200.0], interval=0.1)
    assert trace.peak == 300.0
    assert trace.area == pytest.approx(60.0)  # (100 + 300 + 200) * 0.1
    assert MemoryTrace([]).peak == 0.0 and MemoryTrace([]).area == 0.0


def test_poller_samples_every_interval_between_start_and_stop():
    poller = MemoryPoller(ScriptedSampler(), interval=0.1).start()
    time.sleep(0.65)
    trace = poller.stop()
    n = len(trace.samples)
    assert 4 <= n <= 10, trace.samples  # ~7 on an idle machine; a busy one may lag
    assert trace.samples == [10.0 * (i + 1) for i in range(n)]
    assert trace.peak == 10.0 * n
    assert trace.area == pytest.approx(sum(trace.samples) * 0.1)
    assert trace.kind == "fake" and not trace.errors


def test_poller_cannot_stop_twice():
    poller = MemoryPoller(ScriptedSampler()).start()
    poller.stop()
    with pytest.raises(RuntimeError):
        poller.stop()


def test_rss_sampler_sees_a_child_that_allocates(tmp_path):
    pytest.importorskip("psutil", reason="psutil is a benchmark-only dependency")
    sampler = RssTreeSampler()
    poller = MemoryPoller(sampler).start()
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; b = bytearray(300 * 2**20); time.sleep(0.6)"])
    sampler.watch(proc.pid)
    proc.wait()
    trace = poller.stop()
    assert trace.kind == "rss"
    assert 250 < trace.peak < 1000, trace.samples


@pytest.mark.skipif(not nvml_available(), reason="no NVML GPU on this machine")
def test_nvml_sampler_reads_whole_gpu_memory():
    poller = MemoryPoller(NvmlSampler(0)).start()
    time.sleep(0.3)
    trace = poller.stop()
    assert trace.kind == "gpu" and trace.samples and trace.peak > 0


def test_idle_reading_is_one_gpu_sample_and_none_without_a_gpu():
    from benchmark.container.memory import idle_mb

    class Gpu(ScriptedSampler):
        kind = "gpu"

    assert idle_mb(Gpu()) == 10.0  # one reading of a freshly opened sampler
    assert idle_mb(RssTreeSampler()) is None  # a run not yet started has no floor
