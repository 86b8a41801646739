"""Peak resident memory of the container's run per case, as a multiple of the input's voxel bytes.

    python -m benchmark.container.host_memory [--slices 48 200 500] [--weights weights] \
        [-o benchmark/results/container]

Each measurement is a fresh ``python -m inference`` on the CPU over one folder, its peak
taken from the kernel (``ru_maxrss`` of the run's processes: exact, not polled). Cases are
phantoms of 512x512 int16 slices. Reported per case: the peak, the voxel bytes of the input
(2 bytes per voxel), and the peak above the baseline (a case of 8 slices: the interpreter,
the libraries and the model) divided by the voxel bytes. Also one run of two cases of the
largest size, where the next case is read while the first is predicted, and the same
with the read-ahead off (``--memory-limit-mb 1``: both cases never fit in it).
Writes ``host_memory_<machine>_<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmark import machine, report
from benchmark.machine import ROOT, results_dir
from benchmark.report import markdown_table

MB = 2**20
_PEAK = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False, "
         "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def make_case(folder: Path, case: str, slices: int, seed: int) -> Path:
    from training.phantoms import make_phantom, write_nifti

    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom((512, 512, slices), (0.8, 0.8, 2.5), seed=seed)
    path = folder / f"{case}_0000.nii.gz"
    write_nifti(phantom.to_sitk(), str(path))
    return path


def peak_mb(inputs: Path, weights: Path, *extra: str) -> float:
    """Peak RSS (MB) of one fresh run of the command line over ``inputs``."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", _PEAK, sys.executable, "-m", "inference", "-i",
               str(inputs), "-o", out, "--weights", str(weights), "--device", "cpu",
               "--disable-progress-bar", *extra]
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
        written = len(list(Path(out).glob("*.nii.gz")))
        if written != len(list(inputs.glob("*_0000.nii.gz"))):
            raise RuntimeError(f"{inputs}: the run wrote {written} masks")
    return int(done.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.container.host_memory",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, nargs="+", default=[48, 200, 500])
    p.add_argument("--weights", type=Path, default=ROOT / "weights")
    p.add_argument("-o", "--output", type=Path, default=results_dir("container"))
    args = p.parse_args(argv)
    stamp = machine.stamp()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        make_case(work / "base", "base", 8, seed=1)
        base = peak_mb(work / "base", args.weights)
        rows.append({"run": "baseline: 1 case, 8 slices", "voxel_mb": 512 * 512 * 8 * 2 / MB,
                     "peak_mb": base})
        for slices in args.slices:
            folder = work / f"z{slices}"
            make_case(folder, "a", slices, seed=slices)
            voxel = 512 * 512 * slices * 2 / MB
            peak = peak_mb(folder, args.weights)
            rows.append({"run": f"1 case, {slices} slices", "voxel_mb": voxel, "peak_mb": peak,
                         "per_voxel_byte": (peak - base) / voxel, "ratio": peak / voxel})
            print(rows[-1], flush=True)
        largest = max(args.slices)
        pair = work / "pair"
        for case in ("a", "b"):
            make_case(pair, case, largest, seed=largest + ord(case))
        voxel = 512 * 512 * largest * 2 / MB
        for label, extra in (("2 cases, read-ahead", ()),
                             ("2 cases, no read-ahead", ("--memory-limit-mb", "1"))):
            peak = peak_mb(pair, args.weights, *extra)
            rows.append({"run": f"{label}, {largest} slices each", "voxel_mb": voxel,
                         "peak_mb": peak, "per_voxel_byte": (peak - base) / voxel,
                         "ratio": peak / voxel})
            print(rows[-1], flush=True)
    table = markdown_table(rows, [("run", "run"), ("voxel_mb", "input voxels MB", ".0f"),
                                  ("peak_mb", "peak RSS MB", ".0f"),
                                  ("per_voxel_byte", "(peak - baseline) / voxel bytes", ".2f"),
                                  ("ratio", "peak / voxel bytes", ".2f")])
    text = (report.header("Peak resident memory per case (CPU, onnxruntime)", stamp,
                          "benchmark.container.host_memory", argv)
            + f"\nWeights: `{args.weights.name}`. Peak from the kernel (`ru_maxrss`), one fresh "
            "run per row; int16 input, 512x512 slices.\n\n" + table)
    report.write_results(report.results_base(args.output, "host_memory", stamp, "cpu"), text,
                         {"machine": stamp, "rows": rows})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
