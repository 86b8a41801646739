"""Measure candidate network sizes: parameters, FLOPs, and CPU time per tile.

``python -m benchmark.network.preset_sweep [--batch 8] [--rounds 5]`` builds each candidate,
exports it to ONNX (the CPU backend's graph), and times torch and onnxruntime per tile
on the same random batch. Rounds are interleaved across candidates and the best round
counts, so a busy machine slows all candidates alike. The table goes to stdout and to
``preset_sweep_<machine>_<date>.md`` in ``-o`` (default ``benchmark/results/network``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmark import machine, report
from benchmark.machine import display_path, results_dir
from benchmark.network.presets import count_flops
from inference.model import LesionProbability, build_model, count_parameters, tile_activation_bytes
from inference.onnx_export import export_onnx

RESULTS = results_dir("network")

# (name, preset, overrides): the shipped presets and the neighbours of `fast`.
CANDIDATES = [
    ("paper", "paper", {}),
    ("fast", "fast", {}),
    ("fast, base 24 (cap 384)", "fast", {"base_features": 24, "max_features": 384}),
    ("fast, base 12 (cap 192)", "fast", {"base_features": 12, "max_features": 192}),
    ("fast, base 8 (cap 128)", "fast", {"base_features": 8, "max_features": 128}),
    ("fast, SAM depth 4", "fast", {"sam_depth": 4}),
    ("fast, SAM at 256 px", "fast", {"sam_image_size": 256}),
    ("fast, no SAM branch", "fast", {"sam": False}),
    ("fast, static convs", "fast", {"dynamic": False}),
]


def main(argv=None) -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(prog="python -m benchmark.network.preset_sweep")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS,
                        help="results folder (default benchmark/results/network)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows, runners = [], []
    tmp = Path(tempfile.mkdtemp())
    for i, (name, preset, overrides) in enumerate(CANDIDATES):
        if args.only and name not in args.only:
            continue
        model = build_model(preset, **overrides).eval()
        model.set_temperature(1.0)
        wrapped = LesionProbability(model).eval()
        path = export_onnx(model, tmp / f"{i}.onnx", batch_size=args.batch, output="probability")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = torch.randn(args.batch, 3, *model.config.patch_size)
        rows.append({"name": name, "params_m": count_parameters(model) / 1e6,
                     "gflops": count_flops(model) / 1e9,
                     "act_mib": tile_activation_bytes(model.config) / 2**20,
                     "torch_ms": [], "ort_ms": []})
        runners.append((wrapped, session, x))
    for _ in range(args.rounds):
        for row, (wrapped, session, x) in zip(rows, runners):
            with torch.inference_mode():
                wrapped(x)
                t = time.perf_counter()
                wrapped(x)
                row["torch_ms"].append((time.perf_counter() - t) * 1000 / args.batch)
            feed = {"tiles": x.numpy()}
            session.run(None, feed)
            t = time.perf_counter()
            session.run(None, feed)
            row["ort_ms"].append((time.perf_counter() - t) * 1000 / args.batch)
    for row in rows:
        row["torch_best_ms"], row["ort_best_ms"] = min(row["torch_ms"]), min(row["ort_ms"])
    stamp = machine.stamp()
    text = (report.header("Network size candidates on the CPU", stamp,
                          "benchmark.network.preset_sweep", argv)
            + f"- {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"onnxruntime {ort.__version__}; batch of {args.batch} tiles of 3x192x192; best of "
            f"{args.rounds} interleaved rounds\n\n"
            + report.markdown_table(rows, [
                ("name", "candidate"), ("params_m", "params (M)", ".2f"),
                ("gflops", "GFLOPs/tile", ".2f"), ("act_mib", "est. fp16 MiB/tile", ".1f"),
                ("torch_best_ms", "torch CPU ms/tile", ".1f"),
                ("ort_best_ms", "onnxruntime CPU ms/tile", ".1f")]))
    print(text)
    base = report.write_results(report.results_base(args.output, "preset_sweep", stamp, "cpu"),
                                text)
    print(f"results: {display_path(base)}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
