"""Ours beside nnU-Net v2's own predictor on the same Table 4 cases, as their users run them.

    python -m benchmark.peers.nnunet [-i DIR] [--sizes Z ...] [--make-suite] [--rounds N]
                                     [--device cpu|cuda] [--model DIR] [--masks DIR] [-o OUT]
                                     [--note TEXT]

First the FLARE24 Task 1 winner's 3D plan is written as an nnU-Net v2 results folder with
random weights (:mod:`benchmark.peers.nnunet_model`) and, with ``--make-suite``, the
missing 512x512xZ phantoms of ``--sizes`` into DIR (:mod:`benchmark.container.suite`).
Then every round runs each case with each tool, a fresh process each on a workspace holding
that case alone (:func:`benchmark.container.runner.run_case`):

- ours: ``sh predict.sh`` (the shipped weights unless ``--weights``);
- nnU-Net: its own command line, ``nnUNetv2_predict_from_modelfolder -m MODEL -f 0
  -step_size 0.5 --disable_tta -npp 1 -nps 1 -device DEVICE``.

Round 1 runs ours first on each case, round 2 nnU-Net first, and so on, so that drift on a
shared machine falls on both tools alike; one unrecorded run of each tool comes first (file
cache, bytecode). The wall-clock covers the whole process. Memory is polled as
:mod:`benchmark.profile` polls it: whole-GPU memory (NVML) every 0.1 s, with the whole-GPU
memory in use just before the run as ``idle_mb``; without a GPU, the peak RSS of the run's
process tree instead (nnU-Net's worker processes included), and ``idle_mb`` is blank.

Writes ``nnunet_<machine>_<date>.csv`` (case, slices, round, tool, wall_s, max_mb, idle_mb,
exit_code) and a ``.md`` beside it (machine, versions, commands, per-case medians and the
ratio nnU-Net / ours) into OUT (default ``benchmark/results/peers``). Needs the ``peers``
extra; without it the command says so in one line and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from benchmark import report
from benchmark.container.memory import idle_mb
from benchmark.container.runner import (
    CaseRun,
    add_run_arguments,
    case_id,
    run_case,
    run_setup,
    select_cases,
)
from benchmark.container.suite import write_suite
from benchmark.machine import ROOT, display_path, results_dir
from benchmark.peers import nnunet_model, summary
from training.reporting import write_csv

log = logging.getLogger("benchmark.peers.nnunet")

DEFAULT_SIZES = (100, 215)
# nnU-Net's console script, run by this interpreter: an install with ``pip --target`` puts
# no script on PATH, and the same interpreter then runs both tools.
_NNUNET_ENTRY = ("import sys; from nnunetv2.inference.predict_from_raw_data import "
                 "predict_entry_point_modelfolder as main; "
                 f"sys.argv[0] = {nnunet_model.NNUNET_CLI!r}; sys.exit(main())")
MISSING_EXTRA = ('nnU-Net v2 is not installed in this Python; install the peers extra: '
                 'pip install -e ".[peers]"')


@dataclass
class Record:
    """One recorded run of one tool on one case."""

    round: int
    tool: str
    run: CaseRun
    idle_mb: float | None

    @property
    def ok(self) -> bool:
        return self.run.exit_code == 0 and self.run.output_ok

    def row(self) -> dict:
        return {"case": self.run.case, "slices": self.run.size_xyz[2], "round": self.round,
                "tool": self.tool, "wall_s": round(self.run.time_s, 3),
                "max_mb": round(self.run.trace.peak, 1),
                "idle_mb": None if self.idle_mb is None else round(self.idle_mb, 1),
                "exit_code": self.run.exit_code, "ok": self.ok}


def missing_extra() -> str | None:
    """One line naming what to install when nnU-Net's predictor cannot run here, else None."""
    return MISSING_EXTRA if importlib.util.find_spec("nnunetv2") is None else None


def nnunet_options(model: Path, device: str) -> list[str]:
    """The predictor's options: fold 0, no mirroring, tile step 0.5, one worker each for
    preprocessing and export."""
    return ["-m", str(model), "-f", str(nnunet_model.FOLD), "-step_size", "0.5",
            "--disable_tta", "-npp", "1", "-nps", "1", "-device", device,
            "--disable_progress_bar"]


def nnunet_command(model: Path, device: str):
    """A ``run_case`` command: nnU-Net's predictor on the run's workspace."""
    def command(inputs: Path, outputs: Path):
        return ([sys.executable, "-c", _NNUNET_ENTRY, "-i", str(inputs), "-o", str(outputs),
                 *nnunet_options(model, device)], None)

    return command


def nnunet_device(device: str | None, gpu: bool) -> str:
    """nnU-Net's ``-device`` for ours' ``--device`` (cuda:N is cuda to nnU-Net)."""
    device = device if device and device != "auto" else ("cuda" if gpu else "cpu")
    return "cuda" if device.startswith("cuda") else device


def run_rounds(cases: list[Path], tools: dict[str, dict], sampler, rounds: int,
               warmup: bool = True, masks: Path | None = None) -> list[Record]:
    """Every case with every tool in each round, alternating which tool goes first."""
    if warmup:
        for name, options in tools.items():
            log.info("warm-up (not recorded): %s on %s", name, cases[0].name)
            run_case(cases[0], sampler=sampler(), **options)
    records = []
    for r in range(1, rounds + 1):
        order = list(tools) if r % 2 else list(reversed(tools))
        for path in cases:
            for name in order:
                keep = (masks / name / f"{case_id(path)}.nii.gz"
                        if masks is not None and r == rounds else None)
                idle = idle_mb(sampler())
                run = run_case(path, sampler=sampler(), keep_mask=keep, **tools[name])
                records.append(Record(r, name, run, idle))
                log.info("round %d, %s, %s: %.2f s, max %.0f MB (%s)%s", r, run.case, name,
                         run.time_s, run.trace.peak, run.trace.kind,
                         "" if records[-1].ok else f" FAILED: {run.error or 'no mask'}")
    return records


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.peers.nnunet",
        description="Ours and nnU-Net v2's predictor (the FLARE24 Task 1 winner's 3D plan, "
                    "random weights) on the same Table 4 phantoms, a fresh process per run, "
                    "interleaved; CSV and Markdown into OUT.")
    p.add_argument("-i", "--input", type=Path, default=ROOT / "work_dirs" / "table4",
                   metavar="DIR", help="folder of <case>_0000.nii.gz inputs (default "
                                       "work_dirs/table4)")
    p.add_argument("--sizes", type=int, nargs="+", metavar="Z", default=list(DEFAULT_SIZES),
                   help="run the cases of DIR with these slice counts (default "
                        + " ".join(map(str, DEFAULT_SIZES)) + ")")
    p.add_argument("--make-suite", action="store_true",
                   help="first write the missing 512x512xZ Table 4 phantoms of --sizes into DIR")
    p.add_argument("--rounds", type=int, default=3, help="recorded runs per case and tool "
                                                         "(default 3)")
    p.add_argument("--model", type=Path, default=ROOT / "work_dirs" / "nnunet_flare24_winner",
                   metavar="DIR", help="where nnU-Net's results folder is written "
                                       "(default work_dirs/nnunet_flare24_winner)")
    p.add_argument("--seed", type=int, default=0, help="seed of nnU-Net's random weights")
    p.add_argument("--masks", type=Path, default=None, metavar="DIR",
                   help="keep the last round's masks as DIR/<tool>/<case>.nii.gz")
    p.add_argument("-o", "--output", type=Path, default=results_dir("peers"), metavar="OUT",
                   help="results folder (default benchmark/results/peers)")
    p.add_argument("--note", action="append", default=[], metavar="TEXT",
                   help="a line for the results' header, e.g. what else ran on the machine")
    p.add_argument("--tag", default="", help="file-name tag, so that a second run on the same "
                                             "machine and day keeps the first (default none)")
    p.add_argument("--timeout", type=float, default=1800.0, metavar="S",
                   help="kill a run after S seconds (default 1800)")
    add_run_arguments(p)
    return p


def main(argv=None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.rounds < 1 or any(z < 1 for z in args.sizes):
        p.error("--rounds and --sizes must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    missing = missing_extra()
    if missing:
        log.error("error: %s", missing)
        return 2
    try:
        sampler, gpu, stamp, ours = run_setup(args, timeout=args.timeout)
    except RuntimeError as error:
        log.error("error: %s", error)
        return 2
    device = nnunet_device(args.device, gpu)
    try:
        if args.make_suite:
            write_suite(args.input, sorted(set(args.sizes)))
        cases = select_cases(args.input, args.sizes) if args.input.is_dir() else []
        if not cases:
            log.error("error: %s: no <case>_0000.nii.gz with %s slices (--make-suite writes "
                      "them)", args.input, " or ".join(map(str, args.sizes)))
            return 2
        model = nnunet_model.write_model_folder(args.model, seed=args.seed)
    except (OSError, ValueError) as error:
        log.error("error: %s", error)
        return 2
    tools = {"ours": ours, "nnunet": {"command": nnunet_command(model["folder"], device),
                                      "timeout": args.timeout}}
    # predict.sh runs `python3`: make it this interpreter, as nnU-Net's runs are.
    path_before = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path_before}"
    try:
        records = run_rounds(cases, tools, sampler, args.rounds, not args.no_warmup,
                             args.masks)
    finally:
        os.environ["PATH"] = path_before
    rows = [r.row() for r in records]
    base = report.results_base(args.output, "nnunet", stamp, "cpu" if device == "cpu" else "auto",
                               tag=args.tag)
    write_csv(rows, f"{base}.csv", summary.CSV_COLUMNS)
    context = {"stamp": stamp, "gpu": gpu, "device": device, "model": model, "records": records,
               "memory": records[0].run.trace.label, "rounds": args.rounds,
               "warmup": not args.no_warmup, "weights": args.weights, "notes": args.note,
               "nnunet_options": nnunet_options(display_path(model["folder"]), device),
               "argv": argv if argv is not None else sys.argv[1:],
               "load_after": os.getloadavg() if hasattr(os, "getloadavg") else None}
    text = summary.markdown(rows, context)
    report.write_results(base, text)
    print(report.markdown_table(summary.per_case(rows), summary.TABLE_COLUMNS))
    print(f"results: {display_path(base)}.csv/.md")
    failed = [r for r in records if not r.ok]
    if failed:
        log.error("%d of %d runs failed: %s", len(failed), len(records), "; ".join(
            f"{r.tool} {r.run.case} round {r.round}: {r.run.error or 'no mask'}"
            for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
