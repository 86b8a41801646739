"""The paper's Table 4 for our container: running time, peak memory and memory-time area per case.

    python -m benchmark.profile -i DIR [--sizes Z ...] [--make-suite] [--docker IMAGE]
                                [--weights DIR] [--backend auto|torch|onnx] [--repeats N] [-o OUT]

Each case of DIR (``<case>_0000.nii.gz``; ``--sizes`` keeps those with that many
slices) runs once, as the organisers run it: a fresh ``sh predict.sh`` process (or,
with ``--docker``, the organisers' ``docker container run ...`` line) on a workspace
holding that case alone, timed whole. Memory is whole-GPU memory from NVML polled every
0.1 s; without a GPU, the peak RSS of the run's process tree instead, said in every
output. Local runs also record the per-case stages from ``--timings-json``.

Two floors are measured in the same invocation, so that the net figures can be read off
the record: ``idle_mb``, whole-GPU memory in use just before each run (NVML; blank
without it), and ``floor_s``, the median of 3 fresh ``python3 -c "import torch;
torch.ones(1, device=...).sum().item()"`` on the run's device (cuda, or cpu). The
Markdown shows the median time above the floor and the maximum above the idle memory.

Writes ``profile_<machine>_<date>_<tag>.csv``, ``.md`` and ``.png`` (with the paper's
Table 4 drawn beside ours) into OUT (default ``benchmark/results/container``).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import sys
from pathlib import Path

from benchmark import paper, report
from benchmark.container.memory import nvml_available
from benchmark.container.runner import (
    STAGES,
    add_run_arguments,
    floor_s,
    run_case,
    run_setup,
    select_cases,
)
from benchmark.machine import display_path, results_dir, weights_note
from training.reporting import write_csv

log = logging.getLogger("benchmark.profile")

RESULTS = results_dir("container")
CSV_COLUMNS = ["case", "size", "slices", "spacing_mm", "time_s", "runs", "median_time_s",
               "cpu_s", "exit_code", "output_ok",
               "memory", "max_mb", "area_mb_s", "samples", *(f"{s}_s" for s in STAGES),
               "startup_s", "other_s", "backend", "device", "error", "idle_mb", "floor_s"]
TABLE_COLUMNS = [("case", "case"), ("size", "size"), ("slices", "slices", "d"),
                 ("time_s", "time (s)", ".2f"), ("median_time_s", "median (s)", ".2f"),
                 ("net_s", "median - floor (s)", ".2f"), ("cpu_s", "CPU time (s)", ".1f"),
                 ("max_mb", "max {mem} (MB)", ".0f"),
                 ("net_mb", "max - idle (MB)", ".0f"),
                 ("area_mb_s", "{mem} area (MB*s)", ".0f"),
                 *((f"{s}_s", f"{s} (s)", ".2f") for s in STAGES),
                 ("startup_s", "model load (s)", ".2f"),
                 ("other_s", "interpreter+imports+exit (s)", ".2f")]


def _parser(prog: str = "python -m benchmark.profile") -> argparse.ArgumentParser:
    from benchmark.container.suite import add_suite_arguments

    p = argparse.ArgumentParser(
        prog=prog,
        description="Time each case in a fresh predict.sh process (or the organisers' docker "
                    "run) with memory polled every 0.1 s; write CSV, Markdown and a plot "
                    "beside the paper's Table 4.")
    p.add_argument("-i", "--input", required=True, type=Path, metavar="DIR",
                   help="folder of <case>_0000.nii.gz inputs")
    p.add_argument("-o", "--output", type=Path, default=RESULTS, metavar="OUT",
                   help="results folder (default benchmark/results/container)")
    p.add_argument("--make-suite", action="store_true",
                   help="first write the missing Table 4 phantoms (--sizes) into DIR")
    add_suite_arguments(p)
    p.add_argument("--docker", metavar="IMAGE",
                   help="run the organisers' docker command on IMAGE instead of predict.sh")
    add_run_arguments(p)
    p.add_argument("--tag", default=None,
                   help="file-name tag (default: <preset>-<backend>, or docker)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="fresh runs per case; the table shows the fastest, the CSV also the "
                        "median (default 1, as the organisers run)")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                   help="kill a run after S seconds (default 1800)")
    return p


def main(argv=None, prog: str = "python -m benchmark.profile") -> int:
    p = _parser(prog)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.docker:
        if args.weights or args.backend or args.device:
            p.error("--weights, --backend and --device are baked into a --docker image")
        if shutil.which("docker") is None:
            log.error("error: --docker needs the docker command; none is on PATH")
            return 2
        if not nvml_available(args.gpu_index):
            log.error("error: --docker runs with --gpus; NVML sees no GPU %d here", args.gpu_index)
            return 2
    if args.make_suite:
        from benchmark.container.suite import write_suite

        write_suite(args.input, args.sizes or paper.SLICES, args.slice_spacing, args.seed)
    if not args.input.is_dir():
        log.error("error: %s: no such folder (make one with "
                  "python -m benchmark.container.suite -o %s)",
                  args.input, args.input)
        return 2
    cases = select_cases(args.input, args.sizes)
    if not cases:
        log.error("error: %s: no <case>_0000.nii.gz%s", args.input,
                  f" with {args.sizes} slices" if args.sizes else "")
        return 2

    try:
        sampler, gpu, stamp, run_options = run_setup(args, docker=args.docker,
                                                     timeout=args.timeout)
    except RuntimeError as error:
        log.error("error: %s", error)
        return 2

    runs, all_times, floor = _run_cases(cases, sampler, run_options, args.repeats,
                                        args.no_warmup, _floor_device(args, gpu))

    weights = weights_note(args.weights) if not args.docker else None
    backend = next((r.backend for r in runs if r.backend), None)
    tag = args.tag or ("docker" if args.docker else f"{weights['preset']}-{backend or 'auto'}")
    base = report.results_base(args.output, "profile", stamp, tag=tag)
    rows = [_row(r, all_times[r.case], floor) for r in runs]
    write_csv(rows, f"{base}.csv", CSV_COLUMNS)
    memory_label = runs[0].trace.label
    title = (f"Table 4, ours ({tag}) on {stamp['cpu']} ({stamp['cores']} cores"
             f"{', ' + stamp['gpus'][0] if stamp['gpus'] else ', no GPU'}), {stamp['date']}")
    report.plot_table4(rows, f"{base}.png", title,
                       "GPU, NVML" if gpu else "CPU: peak RSS, not GPU", f"ours ({tag})")
    report.write_results(base, _markdown(rows, runs, stamp, args, weights, backend, tag, gpu,
                                         memory_label, f"{base.name}.png", argv, floor))
    failed = [r for r in runs if r.exit_code != 0 or not r.output_ok]
    print(report.markdown_table(rows, _columns(gpu)))
    fit = report.linear_fit_line(rows)
    if fit:
        print(fit)
    print(f"results: {display_path(base)}.csv/.md/.png")
    if failed:
        log.error("%d of %d runs failed: %s", len(failed), len(runs),
                  ", ".join(r.case for r in failed))
        return 1
    return 0


def _floor_device(args, gpu: bool) -> str:
    """The device of the start-up floor: the run's GPU, or the CPU."""
    return "cpu" if not gpu or args.device == "cpu" else f"cuda:{args.gpu_index}"


def _run_cases(cases, sampler, run_options: dict, repeats: int, no_warmup: bool,
               floor_device: str):
    """(one run per case: the fastest of ``repeats``, or a failed one; case -> all times;
    the start-up floor, measured after the warm-up)."""
    if not no_warmup:
        log.info("warm-up run (not recorded): %s", cases[0].name)
        run_case(cases[0], sampler=sampler(), **run_options)
    floor = floor_s(floor_device)
    if floor is not None:
        log.info("start-up floor on %s: %.2f s (median of 3 fresh `import torch` and one "
                 "operation)", floor_device, floor)
    runs, all_times = [], {}
    for path in cases:
        tries = []
        for _ in range(repeats):
            run = run_case(path, sampler=sampler(), **run_options)
            tries.append(run)
            log.info("%s: %.2f s, max %.0f MB, area %.0f MB*s (%s)%s", run.case, run.time_s,
                     run.trace.peak, run.trace.area, run.trace.kind,
                     f" FAILED: {run.error}" if run.error or not run.output_ok else "")
        # A failed run is reported as such; otherwise the fastest of the repeats.
        failed = [r for r in tries if r.exit_code != 0 or not r.output_ok]
        runs.append(failed[0] if failed else min(tries, key=lambda r: r.time_s))
        all_times[runs[-1].case] = [r.time_s for r in tries]
    return runs, all_times, floor


def _row(run, times: list[float], floor: float | None) -> dict:
    """A run's record with its repeats' median and the net figures above the floors."""
    row = run.row()
    row.update(runs=len(times), median_time_s=statistics.median(times), floor_s=floor)
    row["net_s"] = None if floor is None else row["median_time_s"] - floor
    idle = row["idle_mb"]
    row["net_mb"] = None if idle is None else row["max_mb"] - idle
    return row


def _floors_note(rows, gpu: bool, floor: float | None, args, backend) -> str:
    """What the net columns stand on: the start-up floor and the idle memory."""
    if floor is None:
        text = "- start-up floor: not measured (torch does not start here)"
    else:
        text = (f"- start-up floor `floor_s` {floor:.2f} s: median of 3 fresh `python3 -c "
                f"\"import torch; torch.ones(1, device='{_floor_device(args, gpu)}')"
                ".sum().item()\"` in this invocation, before the recorded runs; \"median - "
                "floor\" is the run's median above it"
                + (" (the onnxruntime path never imports torch, so this floor is torch's, "
                   "not the run's)" if backend == "onnx" else ""))
    idle = [r["idle_mb"] for r in rows if r.get("idle_mb") is not None]
    if idle:
        text += (f"; idle whole-GPU memory `idle_mb` {min(idle):.0f}-{max(idle):.0f} MB "
                 "(NVML, just before each run); \"max - idle\" is the maximum above it")
    else:
        text += "; idle GPU memory: no NVML here, so no net memory column"
    return text


def _columns(gpu: bool) -> list[tuple]:
    mem = "GPU" if gpu else "RSS"
    return [tuple(part.format(mem=mem) if isinstance(part, str) else part for part in c)
            for c in TABLE_COLUMNS]


def _markdown(rows, runs, stamp, args, weights, backend, tag, gpu, memory_label, png,
              argv, floor) -> str:
    how = ("the organisers' `docker container run --shm-size=28gb -m 28G --gpus=\"device="
           f"{args.gpu_index}\" --rm -v ...:/workspace/inputs/ -v ...:/workspace/outputs/ "
           f"{args.docker} /bin/bash -c \"sh predict.sh\"`" if args.docker else
           "`sh predict.sh` (INPUT_DIR/OUTPUT_DIR = a temporary workspace holding that one "
           "case; `--timings-json` added for the stage columns)")
    lines = [
        f"- each case: one fresh run of {how}, wall-clock of the whole run"
        + (f"; {args.repeats} runs per case, the fastest shown (the CSV has the median)"
           if args.repeats > 1 else ""),
        f"- memory: {memory_label}" + ("" if gpu else
            ". **No GPU on this machine: these are CPU RSS numbers, not comparable with the "
            "paper's GPU memory.**"),
    ]
    if weights:
        trained = {True: "trained", False: "**untrained** (random initialisation: speed "
                   "numbers are honest, masks are meaningless)"}.get(weights["trained"],
                                                                    "training status unknown")
        lines.append(f"- weights: `{weights['path']}`, preset `{weights['preset']}`, {trained}"
                     + (f"; {weights['note']}" if weights["note"] else ""))
        lines.append(f"- backend: {backend or 'unknown'} on {runs[0].device or 'unknown'}")
    if not args.no_warmup:
        lines.append("- one unrecorded warm-up run first (file cache warm for every case)")
    lines += [_floors_note(rows, gpu, floor, args, backend)]
    lines += [
        "- stage columns come from the run's own `--timings-json`; model load is the "
        "Predictor's start-up; the last column is the rest of the wall-clock (interpreter "
        "start, imports, exit)",
        "- CPU time: user+sys seconds of the run's processes. Over cores x wall-clock it "
        "shows how busy the run kept the machine; wall-clock well above CPU time / cores "
        "means the run waited (I/O, or other jobs on a shared machine).", "",
        report.markdown_table(rows, _columns(gpu)),
        report.linear_fit_line(rows) + " (the fastest runs above; the fixed part holds "
        "start-up, the slope the per-slice work)", "",
        f"![time, memory and area against slices, with the paper's]({png})", "",
        "## The paper's Table 4", "", report.paper_markdown(),
    ]
    bad = [r for r in runs if r.exit_code != 0 or not r.output_ok]
    if bad:
        lines += ["", "## Failed runs", ""] + [f"- {r.case}: {r.error or 'no valid output'}"
                                               for r in bad]
    return (report.header(f"Table 4, ours ({tag})", stamp, "benchmark.profile", argv)
            + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
