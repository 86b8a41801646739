"""Where one case's time goes: start-up, read, preprocess, network, postprocess, restore, write.

    python -m benchmark.container.stages -i CASE [--weights DIR] [--backend auto|torch|onnx] \
        [-o OUT]

Runs ``sh predict.sh`` on CASE alone in a fresh process, as :mod:`benchmark.profile`
does (one unrecorded warm-up run first), with ``--timings-json``. The stages come from
that file; model load is the predictor's ``startup_s``; what remains of the wall-clock
is process start, imports and exit, of which a bare ``python3 -c pass`` (best of 3)
is the interpreter's share. Writes ``stages_<machine>_<date>_<tag>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from benchmark import report
from benchmark.container.runner import STAGES, add_run_arguments, run_case, run_setup
from benchmark.machine import display_path, results_dir, weights_note

log = logging.getLogger("benchmark.container.stages")


def interpreter_start_s(repeats: int = 3) -> float:
    """Best wall-clock of ``python3 -c pass``: the floor of any fresh Python process."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(["python3", "-c", "pass"], check=True)
        best = min(best, time.perf_counter() - start)
    return best


def breakdown(run, interpreter_s: float) -> list[dict]:
    """Rows: each part of the wall-clock with seconds and share; they add up to the total."""
    total = run.time_s
    other = run.other_s
    parts = [("interpreter start (python3 -c pass)", min(interpreter_s, other)),
             ("imports, argument parsing and exit", other - min(interpreter_s, other)),
             ("model load (predictor start-up)", run.startup_s)]
    parts += [(stage, run.timings.get(stage, 0.0)) for stage in STAGES]
    rows = [{"part": name, "seconds": s, "share": 100 * s / total} for name, s in parts]
    rows.append({"part": "**wall-clock of the run**", "seconds": total, "share": 100.0})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.container.stages",
        description="Run predict.sh on one case in a fresh process and show where its "
                    "wall-clock goes.")
    p.add_argument("-i", "--input", required=True, type=Path, metavar="CASE",
                   help="one <case>_0000.nii.gz (e.g. the 554-slice case of "
                        "benchmark.container.suite)")
    p.add_argument("-o", "--output", type=Path, default=results_dir("container"), metavar="OUT",
                   help="results folder (default benchmark/results/container)")
    add_run_arguments(p)
    p.add_argument("--tag", default=None, help="file-name tag (default <preset>-<backend>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.input.is_file():
        log.error("error: %s: no such file (python -m benchmark.container.suite -o DIR --sizes 554 "
                  "makes the 554-slice case)", args.input)
        return 2
    try:
        sampler, gpu, stamp, options = run_setup(args)
    except RuntimeError as error:
        log.error("error: %s", error)
        return 2

    if not args.no_warmup:
        log.info("warm-up run (not recorded)")
        run_case(args.input, sampler=sampler(), **options)
    interpreter_s = interpreter_start_s()
    run = run_case(args.input, sampler=sampler(), **options)
    if run.exit_code != 0 or not run.timings:
        log.error("error: the run failed: %s", run.error or "no stage timings")
        return 1
    rows = breakdown(run, interpreter_s)
    weights = weights_note(args.weights)
    tag = args.tag or f"{weights['preset']}-{run.backend}"
    base = report.results_base(args.output, "stages", stamp, run.device or "auto", tag)
    table = report.markdown_table(rows, [("part", "part"), ("seconds", "seconds", ".2f"),
                                         ("share", "share of wall-clock (%)", ".1f")])
    x, y, z = run.size_xyz
    mem = "max GPU (NVML)" if gpu else "peak RSS of the process tree (CPU, no GPU)"
    trained = {True: "trained", False: "untrained (random weights: honest speed, "
               "meaningless masks)"}.get(weights["trained"], "training status unknown")
    title = (f"Stage profile: {run.case} ({x}x{y}x{z}, spacing "
             f"{'x'.join(f'{s:g}' for s in run.spacing_xyz)} mm), {tag}")
    text = report.header(title, stamp, "benchmark.container.stages", argv) + "\n".join([
        "- one fresh `sh predict.sh` run on this case alone"
        + ("" if args.no_warmup else ", after one unrecorded warm-up run"),
        f"- weights: `{weights['path']}`, preset `{weights['preset']}`, {trained}",
        f"- backend: {run.backend} on {run.device}",
        f"- {mem}: {run.trace.peak:.0f} MB; memory-time area {run.trace.area:.0f} MB*s"
        + ("" if run.idle_mb is None else f" (idle before the run {run.idle_mb:.0f} MB)"),
        *([] if run.read_wait_s is None else [
            f"- torch builds the model after the first read: it waited {run.read_wait_s:.2f} s "
            "for it after `import torch`"]), "",
        table,
        "Stages and model load come from the run's `--timings-json`; interpreter start is "
        "a separate `python3 -c pass` (best of 3); imports and exit are the rest.", ""])
    report.write_results(base, text, {
        "machine": stamp, "case": run.case, "size_xyz": list(run.size_xyz),
        "spacing_xyz": list(run.spacing_xyz), "weights": weights, "backend": run.backend,
        "device": run.device, "interpreter_start_s": interpreter_s, "row": run.row(),
        "breakdown": rows})
    print(table)
    print(f"results: {display_path(base)}.md/.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
