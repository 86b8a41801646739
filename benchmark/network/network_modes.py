"""How fast one network runs its tiles under each torch execution mode, on one device.

``python -m benchmark.network.network_modes [--preset fast] [--device cuda] [--batches 8 16 32]``

A mode is a dynamic-convolution form (``grouped``: one grouped conv with each sample's
aggregated kernel; ``branches``: one dense conv with K kernels, mixed after) and a
precision: ``fp32``; ``autocast`` (fp16 autocast, what the container runs); ``half``
(weights and input cast to fp16, instance norm included); each optionally replayed as a
CUDA graph (one static batch captured once: no per-kernel launch cost). Per mode and
batch size: ms per tile (best of ``--rounds`` interleaved rounds), peak memory the
allocator held, and the largest probability difference against fp32 ``grouped`` on
the same random batch. The fastest mode within 1e-2 of fp32 is named at the end.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from benchmark import machine, report
from benchmark.dispatch import synchronize
from benchmark.machine import results_dir
from benchmark.report import markdown_table
from inference.model import LesionProbability, build_model

RESULTS = results_dir("network")
FORMS = ("grouped", "branches")
PRECISIONS = ("fp32", "autocast", "half")
AGREEMENT = 1e-2


class Runner:
    """One (form, precision, graph) mode of a network on a fixed batch shape."""

    def __init__(self, network, form: str, precision: str, graph: bool, batch, device):
        self.name = f"{form}/{precision}" + ("/graph" if graph else "")
        self.device = torch.device(device)
        network = copy.deepcopy(network)  # .half() converts in place: each mode its own copy
        network.set_dynamic_form(form)
        model = LesionProbability(network).eval().to(self.device)
        self.half = precision == "half"
        self.autocast = precision == "autocast"
        self.model = model.half() if self.half else model
        self.static = batch.to(self.device, torch.float16 if self.half else torch.float32)
        self.graph = None
        if graph:
            self._capture()

    def _forward(self, x):
        with torch.inference_mode(), torch.autocast(self.device.type, torch.float16,
                                                    enabled=self.autocast):
            return self.model(x).float()

    def _capture(self) -> None:
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm-up on a side stream, as graph capture requires
                self._forward(self.static)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self._forward(self.static)

    def __call__(self):
        if self.graph is not None:
            self.graph.replay()
            return self.output
        return self._forward(self.static)


def measure(preset: str, device: str, batches, rounds: int, iterations: int, seed: int = 0):
    torch.manual_seed(seed)
    network = build_model(preset).eval()
    network.set_temperature(1.0)
    cuda = torch.device(device).type == "cuda"
    torch.backends.cudnn.benchmark = False  # as the container runs (one case per process)
    rows = []
    for batch_size in batches:
        batch = torch.randn(batch_size, network.config.in_channels, *network.config.patch_size)
        runners, reference = [], None
        for form in FORMS:
            for precision in PRECISIONS:
                if precision != "fp32" and not cuda:
                    continue  # fp16 convolutions on the CPU are emulated: not a mode to ship
                for graph in ((False, True) if cuda else (False,)):
                    if cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(device)
                    try:
                        runner = Runner(network, form, precision, graph, batch, device)
                        out = runner().float().cpu()
                    except Exception as error:  # noqa: BLE001 - one mode failing is a result
                        rows.append({"batch": batch_size, "mode": f"{form}/{precision}" + (
                            "/graph" if graph else ""), "error": f"{type(error).__name__}: "
                                                              f"{str(error)[:200]}"})
                        continue
                    reference = out if reference is None else reference
                    runners.append((runner, float((out - reference).abs().max())))
        best = {r.name: float("inf") for r, _ in runners}
        for _ in range(rounds):  # interleaved: a busy device slows every mode alike
            for runner, _ in runners:
                runner()
                synchronize(device)
                t = time.perf_counter()
                for _ in range(iterations):
                    runner()
                synchronize(device)
                best[runner.name] = min(best[runner.name],
                                        (time.perf_counter() - t) / iterations / batch_size)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
        for runner, diff in runners:
            rows.append({"batch": batch_size, "mode": runner.name,
                         "ms_per_tile": 1000 * best[runner.name], "max_abs_diff": diff,
                         "peak_allocated_mb_all_modes": peak})
        del runners
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.network.network_modes")
    p.add_argument("--preset", default="fast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    rows = measure(args.preset, args.device, args.batches, args.rounds, args.iterations)
    ok = [r for r in rows if r.get("max_abs_diff", 1.0) <= AGREEMENT]
    fastest = min(ok, key=lambda r: r["ms_per_tile"])
    stamp = machine.stamp()
    table = markdown_table(rows, [("batch", "batch", None), ("mode", "mode", None),
                                  ("ms_per_tile", "ms per tile", ".3f"),
                                  ("max_abs_diff", "max abs diff vs fp32", ".1e"),
                                  ("error", "error", None)])
    text = (report.header(f"Network execution modes, `{args.preset}` preset, {args.device}",
                          stamp, "benchmark.network.network_modes", argv)
            + f"- fastest within {AGREEMENT} of fp32: "
            f"{fastest['mode']} at batch {fastest['batch']}, "
            f"{fastest['ms_per_tile']:.3f} ms per tile\n\n{table}\n")
    print(text)
    report.write_results(
        report.results_base(args.output, "network_modes", stamp, args.device, args.preset),
        text, {"stamp": stamp, "rows": rows, "fastest": fastest})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
