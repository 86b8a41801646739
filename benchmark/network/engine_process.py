"""One engine variant in its own process: timed calls and its peak memory.

Each variant gets a fresh spawned process, so its memory mark starts clean and no
allocator cache is shared; the parent sends "run" (one timed call) or an output path
(save the last output, report memory, exit). Peak memory: CPU, the rise of the resident
high-water mark (``/proc/self/clear_refs`` resets it on Linux; elsewhere ``getrusage``,
which includes set-up); CUDA, ``torch.cuda.max_memory_allocated`` over the set-up level.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import resource
import time
from pathlib import Path

import numpy as np

from benchmark.network.inferers import make_network, monai_engine, ours_engine


def _rss_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Engine:
    """One engine variant set up in this process: network, input, and its memory baseline."""

    def __init__(self, variant: str, task: dict):
        import torch

        self.torch, self.variant, self.task = torch, variant, task
        self.device = task["device"]
        self.cuda = torch.device(self.device).type == "cuda"
        self.model = make_network(task["preset"], task["seed"], self.device)
        self.volume = torch.from_numpy(np.load(task["volume"])).to(self.device)
        self.body = np.load(task["body"]) if variant == "ours_body" else None
        self.weight_map = None
        if variant == "monai_our_weights":
            from inference.sliding_window import gaussian_importance

            self.weight_map = torch.from_numpy(gaussian_importance(task["patch"])).to(self.device)
        self.out = None
        # Imports allocate too: do them before the memory baseline, not in the warm-up.
        from monai.inferers import sliding_window_inference  # noqa: F401 - loaded, not used

        from inference.sliding_window import sliding_window  # noqa: F401 - loaded, not used

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated over the level after set-up"
        elif _reset_high_water_mark() and _rss_kb("VmRSS") is not None:
            self.base = _rss_kb("VmRSS")
            self.method = "resident high-water mark (VmHWM) over VmRSS after set-up"
        else:
            self.base = _rss_kb("VmRSS") or 0
            self.method = "getrusage max RSS over RSS after set-up (includes set-up peaks)"

    def run(self) -> tuple[float, float]:
        """One timed call of the engine: wall-clock and CPU seconds (all threads)."""
        torch, task = self.torch, self.task
        args = (self.volume, self.model, task["patch"], task["overlap"], task["batch_size"])
        self.out = None
        start, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():  # around the whole call for both: MONAI blends in place
            if self.variant.startswith("monai"):
                self.out = monai_engine(*args, pad_value=task["pad_value"], device=self.device,
                                        weight_map=self.weight_map)
            else:
                self.out = ours_engine(*args, body=self.body, pad_value=task["pad_value"],
                                       device=self.device)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, time.process_time() - cpu

    def peak_mb(self) -> float:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        if "VmHWM" in self.method:
            return (_rss_kb("VmHWM") - self.base) / 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024

    def finish(self, path: str) -> dict:
        np.save(path, self.out.float().cpu().numpy())
        return {"peak_mb": self.peak_mb(), "memory_method": self.method,
                "threads": self.torch.get_num_threads()}


def _worker(variant, task, conn):
    """Serve "run" and "finish" requests for one engine, so rounds can interleave engines."""
    try:
        engine = _Engine(variant, task)
        conn.send(("ready", None))
        while True:
            request = conn.recv()
            if request == "run":
                conn.send(("ok", engine.run()))
            else:
                conn.send(("ok", engine.finish(request)))
                return
    except BaseException as error:  # noqa: BLE001 - reported by the parent
        import traceback

        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class EngineProcess:
    """An engine variant in its own spawned process (clean memory mark, own caches)."""

    def __init__(self, variant: str, task: dict):
        ctx = mp.get_context("spawn")
        self.variant = variant
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(variant, task, child),
                                name=f"engine-{variant}", daemon=True)
        self.proc.start()
        child.close()
        self._reply()

    def _reply(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            status, payload = "error", "the process died (out of memory?)"
        if status == "error":
            self.proc.join(5)
            raise RuntimeError(f"{self.variant}: {payload}")
        return payload

    def run(self) -> tuple[float, float]:
        self.conn.send("run")
        return self._reply()

    def finish(self, out_path: str) -> dict:
        self.conn.send(out_path)
        result = self._reply()
        self.proc.join(30)
        return result
