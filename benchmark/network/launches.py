"""Operations one tile batch launches, per preset and dynamic-convolution form, counted on the CPU.

    python -m benchmark.network.launches [--presets tiny fast paper] [--batch 8] \
        [-o benchmark/results/network]

On a GPU each operation that computes (not a view) launches at least one kernel, and for
these small networks the launches, not the arithmetic, set the time of a batch. The
operations one forward pass of ``LesionProbability`` (what the container runs) dispatches
are counted on the CPU (``OperationCounter``), per batch and per tile, with the five most
frequent; the same for the sliding window's own work per batch (gather and blend).
Writes ``launches_<machine>_<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

from benchmark import machine, report
from benchmark.dispatch import OperationCounter
from benchmark.machine import results_dir
from benchmark.report import markdown_table

RESULTS = results_dir("network")


def operations(run) -> collections.Counter:
    """The operations ``run()`` dispatches, by name."""
    with torch.inference_mode(), OperationCounter() as counter:
        run()
    return counter.counts


def count_network(preset: str, form: str, batch: int) -> dict:
    from inference.model import LesionProbability, build_model

    network = build_model(preset)
    network.set_temperature(1.0)  # where training leaves it
    network.set_dynamic_form(form)
    model = LesionProbability(network).eval()
    c = network.config
    x = torch.randn(batch, c.in_channels, *c.patch_size)
    with torch.inference_mode():
        model(x)  # first call outside the count (lazy initialisation)
    counts = operations(lambda: model(x))
    total = sum(counts.values())
    return {"preset": preset, "form": form, "batch": batch, "per_batch": total,
            "per_tile": total / batch, "top": counts.most_common(5)}


def count_window(batch: int, patch: int = 64) -> dict:
    """The sliding window's own operations per batch on a torch volume (identity network)."""
    from inference.sliding_window import sliding_window

    volume = torch.randn(3, patch * 2, patch * 2)
    n_tiles = 3 * 9  # step 0.5 on a 2x2-patch plane: 3x3 tiles per slice
    counts = operations(lambda: sliding_window(
        volume, lambda tiles: tiles[:, 1], (patch, patch), 0.5, 3, batch))
    total = sum(counts.values())
    return {"preset": "sliding window (no network)", "form": "-", "batch": batch,
            "per_batch": total / -(-n_tiles // batch), "per_tile": total / n_tiles,
            "top": counts.most_common(5)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.network.launches", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "fast", "paper"])
    p.add_argument("--forms", nargs="+", default=["grouped", "branches"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tag", default="", help="added to the file names")
    p.add_argument("-o", "--output", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    stamp = machine.stamp()
    rows = [count_network(preset, form, args.batch)
            for preset in args.presets for form in args.forms]
    rows.append(count_window(args.batch))
    for row in rows:
        row["most"] = ", ".join(f"{name} {n}" for name, n in row["top"])
        print(f"{row['preset']:>28} {row['form']:>8}: {row['per_batch']:6.1f} per batch, "
              f"{row['per_tile']:6.2f} per tile ({row['most']})", flush=True)
    table = markdown_table(rows, [("preset", "network"), ("form", "dynamic conv"),
                                  ("per_batch", "operations per batch", ".0f"),
                                  ("per_tile", "per tile", ".1f"),
                                  ("most", "most frequent")])
    text = (report.header(f"Operations one tile batch launches (batch {args.batch})", stamp,
                          "benchmark.network.launches", argv)
            + "\nThe operations one forward pass of `LesionProbability` in eval mode dispatches, "
            "views left out, counted on the CPU (on a GPU each launches at least one kernel)."
            "\n\n" + table)
    report.write_results(
        report.results_base(args.output, "launches", stamp, "cpu", args.tag), text,
        {"machine": stamp, "rows": [{k: v for k, v in r.items() if k != "most"} for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
