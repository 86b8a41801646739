"""Command line: ``python -m inference -i INPUTS -o OUTPUTS`` (what predict.sh runs)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

START = time.perf_counter()
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"
log = logging.getLogger("inference")


def parse_args(argv=None) -> argparse.Namespace:
    from inference.budget import DEFAULT_GPU_MEMORY_MB
    from inference.devices import BACKENDS

    p = argparse.ArgumentParser(
        prog="python -m inference",
        description="Segment pan-cancer lesions in CT: <case>_0000.nii.gz in, <case>.nii.gz "
                    "binary masks out, on the input's exact voxel grid.")
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="folder of <case>_0000.nii.gz CT scans")
    p.add_argument("-o", "--output", required=True, type=Path, help="folder for the masks")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS,
                   help="weights folder (plans.json, model files, SHA256SUMS); "
                        "default: the weights shipped with the package")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: torch on a GPU, onnxruntime on the CPU")
    p.add_argument("--gpu-memory-mb", type=float, default=DEFAULT_GPU_MEMORY_MB,
                   help="whole-GPU memory budget in MB, CUDA context included "
                        f"(default {DEFAULT_GPU_MEMORY_MB}: under the challenge's 4 GB)")
    p.add_argument("--memory-limit-mb", type=float, default=None,
                   help="host memory the run may use, MB (default: the container's limit, "
                        "read from the cgroup); the next case is read during the current one "
                        "only when both fit")
    p.add_argument("--tile-step", "--step", dest="tile_step", type=float, default=None,
                   help="tiles this fraction of the patch apart (default: the plan's "
                        "tile_step)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per batch (default: from the memory budget)")
    p.add_argument("--torch-mode", default="grouped/autocast",
                   metavar="FORM/PRECISION[/graph][/nhwc]",
                   help="torch backend on a GPU: dynamic-conv form, precision and CUDA-graph "
                        "replay (default grouped/autocast; see benchmark.network.network_modes)")
    p.add_argument("--threads", type=int, default=None,
                   help="onnxruntime CPU threads (default: onnxruntime's own choice)")
    p.add_argument("--continue", dest="skip_existing", action="store_true",
                   help="skip cases whose mask is already written")
    p.add_argument("--num-parts", type=int, default=1,
                   help="split the cases into this many parts (several machines or jobs)")
    p.add_argument("--part-id", type=int, default=0, help="which part this run does (0-based)")
    p.add_argument("--save-probabilities", action="store_true",
                   help="also write float32 lesion probabilities to OUTPUT/probabilities/")
    p.add_argument("--timings-json", type=Path, default=None,
                   help="write per-case stage timings to this JSON file")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--disable-progress-bar", action="store_true")
    args = p.parse_args(argv)
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        p.error(f"--part-id must lie in 0..{args.num_parts - 1} with --num-parts {args.num_parts}")
    if args.tile_step is not None and not 0 < args.tile_step <= 1:
        p.error("--tile-step is a fraction of the patch in (0, 1]")
    if args.batch_size is not None and args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    if args.gpu_memory_mb <= 0:
        p.error("--gpu-memory-mb must be positive")
    if args.memory_limit_mb is not None and args.memory_limit_mb <= 0:
        p.error("--memory-limit-mb must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    _set_up_logging(args.quiet)
    from inference import folders
    from inference.supervise import signal_name, supervise

    try:
        cases = _cases_and_outputs(args)
    except folders.InputError as error:
        log.error("error: %s", error)
        return 2
    _say_what_is_ignored(args.input)
    stale = [p for folder in (args.output, args.output / "probabilities")
             for p in folders.remove_stale_temporaries(folder)]
    if stale:
        log.info("removed %d temporary file(s) left by a run that was stopped mid-write: %s",
                 len(stale), ", ".join(p.name for p in stale[:3]))
    if args.timings_json is not None and args.timings_json.exists():
        args.timings_json.unlink()  # each worker adds its cases to this run's file
    code, failed = supervise(cases, lambda part, report: _work(args, part, report))
    if failed:
        log.error("%d of %d cases failed: %s", len(failed), len(cases),
                  ", ".join(case for case, _ in failed))
    if code >= 128:
        log.error("stopped by %s: the masks written are complete; the case in flight was "
                  "abandoned and left no file", signal_name(code - 128))
    elif code == 0:
        log.info("every case has its mask in %s (%d cases, %.1f s)", args.output, len(cases),
                 time.perf_counter() - START)
    return code


def _set_up_logging(quiet: bool) -> None:
    _open_closed_streams()
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_escape_controls)


def _cases_and_outputs(args) -> list:
    """This run's cases, once every path it writes is known to be writable (the output
    folder, and each option's); InputError, before any case, if one is not."""
    from inference import folders

    cases = folders.shard(folders.list_cases(args.input), args.num_parts, args.part_id)
    folders.check_output_dir(args.output)
    if args.save_probabilities:
        folders.check_output_dir(args.output / "probabilities")
    if args.timings_json is not None:
        folders.check_output_file(args.timings_json, "--timings-json")
    return cases


def _work(args, cases: list, report) -> int:
    """The worker: read ahead, load the model, predict ``cases``; 0, or 2 if it cannot start."""
    from inference import nifti
    from inference.reading import cases_to_do, read_ahead

    # Start reading the first case now: it runs while the backend is imported and the
    # model loaded (start-up is paid on every case). A bad file still fails only its case.
    todo = cases_to_do(cases, args.output, args.skip_existing)
    if len(todo) < len(cases):
        log.info("--continue: %d of %d cases already written", len(cases) - len(todo),
                 len(cases))
    first_read = read_ahead(todo[0][1]) if todo else None

    from inference.devices import DeviceError
    from inference.plans import PlanError
    from inference.predictor import Predictor
    from inference.weights import WeightsError

    waited = None  # how long the model build waited for the first read (torch only)
    try:
        if first_read is not None and _uses_torch(args):
            waited = _torch_after_read(first_read)
        predictor = Predictor(args.weights, args.device, args.backend, args.gpu_memory_mb,
                              args.tile_step, args.batch_size, torch_mode=args.torch_mode,
                              threads=args.threads, memory_limit_mb=args.memory_limit_mb)
    except (nifti.InputError, PlanError, WeightsError, DeviceError) as error:
        log.error("error: %s", error)
        return 2
    # a worker that took over from a killed one times its start-up from its own start
    origin = report.born if report.replacement else START
    ready_s = time.perf_counter() - origin
    # The read-ahead inflates the voxels first and needs ITK only for the geometry at the
    # end: importing SimpleITK here, while it still inflates, takes that
    # import off the read's path.
    nifti.simpleitk()
    log.info("start-up %.2f s (imports and model%s)", ready_s, "" if waited is None else
             f"; the model was built after the first read, which it waited {waited:.2f} s for")
    position = {case: i for i, (case, _) in enumerate(cases)}
    index = [position[case] for case, _ in todo]
    results = predictor.run(todo, args.output, False, args.save_probabilities,
                            show_progress=not (args.quiet or args.disable_progress_bar),
                            first_read=first_read, report=_Reindexed(report, index))
    if args.timings_json:
        try:
            _add_timings(args.timings_json, predictor, ready_s, results, waited)
        except OSError as error:
            log.error("error: --timings-json %s cannot be written (%s)", args.timings_json,
                      error.strerror or error)
            return 1
    return 0


class _Reindexed:
    """Reports in the supervisor's numbering of the cases (the worker skips finished ones)."""

    def __init__(self, report, index: list[int]):
        self.report, self.index = report, index

    def started(self, i: int) -> None:
        self.report.started(self.index[i])

    def ended(self, i: int, ok: bool = True) -> None:
        self.report.ended(self.index[i], ok)


def _add_timings(path: Path, predictor, ready_s: float, results, waited=None) -> None:
    """This worker's per-case timings, added to what earlier workers of the run wrote."""
    cases = [{"case": r.case, "error": r.error, **r.timings} for r in results]
    if path.exists():
        cases = json.loads(path.read_text())["cases"] + cases
    from inference.folders import write_text_atomically

    write_text_atomically(path, json.dumps(
        {"startup_s": predictor.startup_s, "ready_s": ready_s, "read_wait_s": waited,
         "finished_s": time.perf_counter() - START, "device": predictor.device,
         "backend": predictor.backend.name, "cases": cases}, indent=2) + "\n")


def _say_what_is_ignored(folder: Path) -> None:
    from inference.folders import ignored_entries

    ignored = ignored_entries(folder)
    if ignored:
        shown = "; ".join(f"{name} ({why})" for name, why in ignored[:5])
        more = f"; and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        log.warning("ignored in %s: %s%s", folder, shown, more)


# C0 and C1 control characters, and the lone surrogates that stand for a file name's bytes
# that are not UTF-8 (os.fsdecode)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_controls(record: logging.LogRecord) -> bool:
    """Write control characters as escapes (``\\r``, ``\\x1b``) and a name's undecodable
    bytes as ``\\xNN``: a file named with a carriage return or a terminal escape sequence
    cannot rewrite what the log shows. Tracebacks, added after the message, keep their lines."""
    def escape(match: re.Match) -> str:
        code = ord(match.group())
        return f"\\x{code - 0xdc00:02x}" if 0xdc80 <= code <= 0xdcff else \
            repr(match.group())[1:-1]

    record.msg, record.args = _CONTROLS.sub(escape, record.getMessage()), None
    return True


def _uses_torch(args) -> bool:
    """Whether the predictor will build the torch backend (as ``choose_backend`` decides)."""
    from inference.devices import gpu_count, torch_installed

    if args.backend != "auto":
        return args.backend == "torch" and torch_installed()
    if args.device == "auto":
        return gpu_count() > 0 and torch_installed()
    return args.device != "cpu" and torch_installed()


def _torch_after_read(first_read) -> float:
    """Import torch while the first case is read, then let the read finish.

    ITK reads the environment while it reads a header, and a package that writes
    ``os.environ`` meanwhile (torchvision did, before the SAM encoder stopped importing
    it) can crash the process: setenv racing getenv. ``import torch`` alone (seconds)
    writes nothing and hides the read; the model is built after it, because torch's CUDA
    initialisation sets environment variables. Returns the seconds waited for the read once
    torch was imported: what of the read the model load did not overlap.
    """
    from concurrent.futures import wait

    import torch  # noqa: F401 - the import is the wait

    start = time.perf_counter()
    wait([first_read.future])
    return time.perf_counter() - start


def _open_closed_streams() -> None:
    """/dev/null in place of a standard stream the caller closed (``2>&-``): the log then
    goes nowhere instead of failing, and no file opened later takes descriptor 0, 1 or 2,
    where native libraries would write their messages into it."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, "r" if fd == 0 else "w", closefd=False))


def _exit_now(code: int) -> None:
    """Leave without the interpreter's teardown (freeing every array, destroying the CUDA
    context): the masks are written and closed, and the organisers time the whole run."""
    from inference.supervise import flush_streams

    logging.shutdown()
    flush_streams()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
