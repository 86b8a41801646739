"""Reading a case through the container's reader with each gzip inflater: isal, or rapidgzip.

    python -m benchmark.container.gzip_readers -i CASE [--rounds 5] [--threads N] [-o OUT]

``inference.nifti.read_ct`` as the container runs it (isal inflating the mapped file in
one call), against the same reader with rapidgzip's parallel inflate of the one gzip
stream (``--threads``, default all cores) in its place. The file is read once unrecorded
first (page cache warm), then the readers alternate for ``--rounds`` rounds in this one
process; each read must give the same voxels. Writes
``gzip_readers_<machine>_<date>.md`` and ``.json``. rapidgzip is not a dependency of the
project: ``pip install rapidgzip`` to measure it.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from benchmark import machine, report
from benchmark.machine import display_path, results_dir
from inference import nifti

log = logging.getLogger("benchmark.container.gzip_readers")


@contextmanager
def rapidgzip_reader(threads: int):
    """The container's reader with rapidgzip inflating the voxels (the header as before)."""
    import rapidgzip

    own = nifti._voxel_stream

    def stream(path, header):
        if not header.compressed:
            return own(path, header)
        return rapidgzip.open(str(path), parallelization=threads)

    nifti._voxel_stream = stream
    try:
        yield
    finally:
        nifti._voxel_stream = own


def timed(path: Path, threads: int | None) -> tuple[float, np.ndarray]:
    """Seconds of one ``read_ct`` (isal when ``threads`` is None) and the voxels."""
    start = time.perf_counter()
    if threads is None:
        array = nifti.read_ct(path).array
    else:
        with rapidgzip_reader(threads):
            array = nifti.read_ct(path).array
    return time.perf_counter() - start, array


def measure(path: Path, rounds: int, threads: int) -> dict:
    """Per reader, the seconds of each round (alternating, first reader swapped each round)."""
    readers = {"isal (the container's)": None, f"rapidgzip, {threads} threads": threads}
    _, reference = timed(path, None)  # page cache warm; the voxels to compare with
    times = {name: [] for name in readers}
    for r in range(rounds):
        order = list(readers.items())[:: 1 if r % 2 == 0 else -1]
        for name, threads_ in order:
            seconds, array = timed(path, threads_)
            if not np.array_equal(array, reference):
                raise RuntimeError(f"{name} read other voxels than isal from {path}")
            times[name].append(seconds)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.container.gzip_readers",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("-i", "--input", required=True, type=Path, metavar="CASE")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("-o", "--output", type=Path, default=results_dir("container"), metavar="OUT")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import rapidgzip  # noqa: F401 - only whether it imports
    except ImportError:
        log.error("error: rapidgzip is not installed (pip install rapidgzip)")
        return 2
    stamp = machine.stamp()
    times = measure(args.input, args.rounds, args.threads)
    rows = [{"reader": name, "median_s": statistics.median(t), "best_s": min(t),
             "rounds": " ".join(f"{x:.3f}" for x in t)} for name, t in times.items()]
    table = report.markdown_table(rows, [("reader", "reader"), ("median_s", "median (s)", ".3f"),
                                         ("best_s", "best (s)", ".3f"), ("rounds", "rounds (s)")])
    size = nifti.read_ct(args.input).array.shape[::-1]
    base = report.results_base(args.output, "gzip_readers", stamp, "cpu")
    title = (f"Reading {args.input.name} ({'x'.join(map(str, size))}) through inference.nifti: "
             "isal against rapidgzip")
    text = (report.header(title, stamp, "benchmark.container.gzip_readers", argv)
            + f"- {args.rounds} interleaved rounds in one process after one unrecorded read; "
            "every read gave the same voxels\n\n" + table)
    report.write_results(base, text, {"machine": stamp, "case": args.input.name,
                                      "threads": args.threads, "times_s": times})
    print(table)
    print(f"results: {display_path(base)}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
