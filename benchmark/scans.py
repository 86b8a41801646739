"""What flare-nnsam predict's reports cost per scan, beside the mask alone.

Per scan, in one process with the model loaded once: the container's ``Predictor`` (the
mask, what ``python -m inference`` computes), ``Segmenter.segment`` with the lesion table
(``probabilities`` off) and with the statistics (the probability restored onto the input
grid as well), and the preview. The variants alternate within each repeat and the table
shows medians, so a busy machine slows them alike.

    python -m benchmark.scans -i SCANS [--repeats 3] [--weights DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmark import machine, report
from benchmark.machine import ROOT, results_dir
from benchmark.report import markdown_table


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def measure(segmenter, volume, repeats: int, picture: Path) -> dict:
    """Median seconds of each variant on one volume."""
    variants = {
        "mask": lambda: segmenter.predictor.predict(volume),
        "table": lambda: segmenter.segment(volume, probabilities=False),
        "statistics": lambda: segmenter.segment(volume, probabilities=True),
    }
    times = {name: [] for name in variants}
    for repeat in range(repeats):
        order = list(variants)[repeat % 3:] + list(variants)[:repeat % 3]
        for name in order:
            times[name].append(_seconds(variants[name]))
    result = segmenter.segment(volume, probabilities=True)
    preview = [_seconds(lambda: result.write_preview(picture)) for _ in range(repeats)]
    row = {name: statistics.median(values) for name, values in times.items()}
    row["preview"] = statistics.median(preview)
    row["lesions"] = len(result.lesions)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.scans", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="a scan, a DICOM series folder or a folder of them")
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("-o", "--output", type=Path, default=results_dir("scans"))
    args = p.parse_args(argv)
    from inference.api import Segmenter
    from inference.formats import read_scan
    from inference.scans import list_scans

    stamp = machine.stamp()
    segmenter = Segmenter(args.weights, device=args.device)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for scan in list_scans(args.input):
            volume = read_scan(scan.path)
            row = {"scan": scan.name, "size": "x".join(map(str, volume.grid.size)),
                   **measure(segmenter, volume, args.repeats, Path(work) / "p.png")}
            row["statistics_ratio"] = row["statistics"] / row["mask"]
            rows.append(row)
            print(row, flush=True)
    table = markdown_table(rows, [
        ("scan", "scan"), ("size", "size (x y z)"), ("lesions", "lesions"),
        ("mask", "mask alone s (the container's Predictor)", ".2f"),
        ("table", "+ lesion table s", ".2f"), ("statistics", "+ statistics s", ".2f"),
        ("statistics_ratio", "statistics / mask", ".2f"), ("preview", "preview s", ".2f")])
    text = (report.header("flare-nnsam predict: what the reports cost", stamp, "benchmark.scans",
                          argv)
            + f"\nWeights: `{args.weights.name}`, device {args.device}; medians of {args.repeats} "
            "repeats, the variants alternating within each; reading and writing not "
            "included.\n\n" + table)
    report.write_results(report.results_base(args.output, "scans", stamp, args.device), text,
                         {"machine": stamp, "rows": rows})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
