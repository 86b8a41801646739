"""Run one case the way the organisers do: a fresh process (or container) per case, timed whole.

A workspace-like temporary folder holds ``inputs/<case>_0000.nii.gz`` (that one case)
and an empty, world-writable ``outputs/``. The run is either

- local: ``sh predict.sh`` with ``INPUT_DIR``/``OUTPUT_DIR`` pointing there (plus
  ``--timings-json``, so the stages can be split), or
- docker: the organisers' own command line, ``docker container run --shm-size=28gb
  -m 28G --gpus="device=N" --rm -v inputs:/workspace/inputs/ -v outputs:/workspace/outputs/
  IMAGE /bin/bash -c "sh predict.sh"`` (no stage timings: nothing is added to it), or
- another tool's command line on the same folders (a peer such as nnU-Net's predictor).

A run counts as written only when ``outputs/<case>.nii.gz`` is on the input's voxel grid
(size, spacing, origin, direction), as the challenge's evaluation requires.

The wall-clock covers the whole process, start-up and exit included; memory is polled
every 0.1 s by a separate process started before the run (:mod:`benchmark.container.memory`).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import SimpleITK as sitk

from benchmark.container.memory import (
    MemoryPoller,
    MemoryTrace,
    NvmlSampler,
    default_sampler,
    idle_mb,
)
from benchmark.machine import ROOT
from evaluation.evaluate import DIRECTION_ATOL, GRID_ATOL_MM

log = logging.getLogger(__name__)

PREDICT_SH = ROOT / "predict.sh"
STAGES = ("read", "preprocess", "network", "postprocess", "restore", "write")
CASE_SUFFIX = "_0000.nii.gz"


@dataclass
class CaseRun:
    """One timed run of one case."""

    case: str
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    time_s: float
    exit_code: int
    trace: MemoryTrace
    output_ok: bool
    cpu_s: float | None = None  # user+sys CPU of the run's processes (local runs only)
    timings: dict = field(default_factory=dict)  # the case's stages, from --timings-json
    startup_s: float | None = None  # Predictor start-up (model load), from --timings-json
    backend: str | None = None
    device: str | None = None
    error: str | None = None
    idle_mb: float | None = None  # whole-GPU memory in use just before the run (NVML)
    read_wait_s: float | None = None  # torch: the model build's wait for the first read

    @property
    def stage_sum(self) -> float | None:
        if not self.timings:
            return None
        return sum(self.timings.get(s, 0.0) for s in STAGES)

    @property
    def other_s(self) -> float | None:
        """Wall-clock not in any stage nor in model start-up: interpreter, imports, exit."""
        if self.stage_sum is None or self.startup_s is None:
            return None
        return self.time_s - self.stage_sum - self.startup_s

    def row(self) -> dict:
        """A flat record for the CSV and Markdown writers."""
        x, y, z = self.size_xyz
        row = {
            "case": self.case, "size": f"{x}x{y}x{z}", "slices": z,
            "spacing_mm": "x".join(f"{s:g}" for s in self.spacing_xyz),
            "time_s": self.time_s, "cpu_s": self.cpu_s, "exit_code": self.exit_code,
            "output_ok": self.output_ok,
            "memory": self.trace.kind, "max_mb": self.trace.peak, "area_mb_s": self.trace.area,
            "samples": len(self.trace.samples), "idle_mb": self.idle_mb,
        }
        row.update({f"{s}_s": self.timings.get(s) for s in STAGES})
        row.update({"startup_s": self.startup_s, "read_wait_s": self.read_wait_s,
                    "other_s": self.other_s,
                    "backend": self.backend, "device": self.device, "error": self.error})
        return row


def _children_cpu_s() -> float:
    """User+sys CPU seconds of all ended and waited-for child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _header(path: str | Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def case_info(path: str | Path) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Size and spacing (x, y, z) from the header alone."""
    reader = _header(path)
    return tuple(reader.GetSize()), tuple(reader.GetSpacing())


def grid_difference(mask: str | Path, case: str | Path) -> str | None:
    """How a mask's voxel grid differs from its input's, read from the headers; None if it
    does not (the evaluation's tolerances)."""
    try:
        got, want = _header(mask), _header(case)
    except RuntimeError:
        return f"{Path(mask).name}: unreadable"
    if got.GetSize() != want.GetSize():
        return f"size {got.GetSize()}, input {want.GetSize()}"
    for name, atol in (("Spacing", GRID_ATOL_MM), ("Origin", GRID_ATOL_MM),
                       ("Direction", DIRECTION_ATOL)):
        a, b = getattr(got, f"Get{name}")(), getattr(want, f"Get{name}")()
        if any(abs(x - y) > atol for x, y in zip(a, b)):
            return (f"{name.lower()} ({', '.join(f'{v:g}' for v in a)}), input "
                    f"({', '.join(f'{v:g}' for v in b)})")
    return None


def case_id(path: Path) -> str:
    name = path.name
    return name[: -len(CASE_SUFFIX)] if name.endswith(CASE_SUFFIX) else name.split(".")[0]


def local_command(timings_json: Path | None, weights: Path | None = None,
                  backend: str | None = None, device: str | None = None,
                  extra: Sequence[str] = ()) -> list[str]:
    """``sh predict.sh`` with the benchmark's extra options (predict.sh passes them on)."""
    cmd = ["sh", str(PREDICT_SH)]
    if timings_json is not None:
        cmd += ["--timings-json", str(timings_json)]
    if weights is not None:
        cmd += ["--weights", str(Path(weights).resolve())]
    if backend:
        cmd += ["--backend", backend]
    if device:
        cmd += ["--device", device]
    return cmd + list(extra)


def docker_command(image: str, inputs: Path, outputs: Path, gpu_index: int | None = 0,
                   predict_args: str = "", docker_options: Sequence[str] = ()) -> list[str]:
    """The organisers' command line, unchanged but for the GPU index and the folders.

    ``gpu_index`` None leaves ``--gpus`` out (Docker refuses it on a machine without a GPU);
    ``predict_args`` are appended to ``sh predict.sh``, ``docker_options`` before the image.
    """
    gpus = [f"--gpus=device={gpu_index}"] if gpu_index is not None else []
    return ["docker", "container", "run", "--shm-size=28gb", "-m", "28G", *gpus, "--rm",
            *docker_options,
            "-v", f"{inputs.resolve()}/:/workspace/inputs/",
            "-v", f"{outputs.resolve()}/:/workspace/outputs/",
            image, "/bin/bash", "-c", f"sh predict.sh {predict_args}".strip()]


def _stage_input(source: Path, inputs: Path) -> Path:
    """The case inside the workspace: a hard link where possible (no copy to time), else a copy."""
    target = inputs / source.name
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def run_case(path: str | Path, *, docker: str | None = None, weights: Path | None = None,
             backend: str | None = None, device: str | None = None, gpu_index: int = 0,
             sampler=None, timeout: float | None = None, workdir: Path | None = None,
             extra: Sequence[str] = (), command=None, keep_mask: Path | None = None) -> CaseRun:
    """One fresh run of one case (local ``sh predict.sh`` or the organisers' ``docker run``).

    ``command(inputs, outputs)`` returns another tool's ``(argv, env)`` to run instead, on
    the same workspace; ``keep_mask`` is where the mask is copied before the workspace goes.
    """
    path = Path(path)
    case = case_id(path)
    size, spacing = case_info(path)
    sampler = sampler or default_sampler(gpu_index)
    with tempfile.TemporaryDirectory(prefix="flare-bench-", dir=workdir) as tmp:
        ws = Path(tmp)
        inputs, outputs = ws / "inputs", ws / "outputs"
        inputs.mkdir()
        outputs.mkdir()
        outputs.chmod(0o777)  # the container user may not be root
        _stage_input(path, inputs)
        timings_json = None if docker or command else ws / "timings.json"
        if command is not None:
            cmd, env = command(inputs, outputs)
        elif docker:
            cmd, env = docker_command(docker, inputs, outputs, gpu_index), None
        else:
            cmd = local_command(timings_json, weights, backend, device, extra)
            env = {**os.environ, "INPUT_DIR": str(inputs), "OUTPUT_DIR": str(outputs)}
        log_path = ws / "run.log"
        idle = idle_mb(NvmlSampler(gpu_index)) if sampler.kind == "gpu" else None
        poller = MemoryPoller(sampler).start()
        error = None
        with open(log_path, "wb") as log_file:
            cpu_before = _children_cpu_s()
            start = time.perf_counter()
            try:
                proc = subprocess.Popen(cmd, env=env, stdout=log_file,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
            except OSError:
                poller.stop()
                raise
            if hasattr(sampler, "watch"):
                sampler.watch(proc.pid)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                error = f"killed after {timeout:.0f} s"
            elapsed = time.perf_counter() - start
            # Read before the poller (also our child) is joined, so its CPU is not counted.
            cpu_s = _children_cpu_s() - cpu_before
        trace = poller.stop()
        mask = outputs / f"{case}.nii.gz"
        off_grid = grid_difference(mask, path) if mask.is_file() else "no mask written"
        output_ok = off_grid is None
        if code != 0 and error is None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            error = f"exit code {code}: " + " / ".join(tail)
        elif code == 0 and off_grid:
            error = f"{mask.name}: {off_grid}"
        if keep_mask is not None and mask.is_file():
            Path(keep_mask).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mask, keep_mask)
        run = CaseRun(case, size, spacing, elapsed, code, trace, output_ok, error=error,
                      cpu_s=None if docker else cpu_s,  # a container's CPU is not our child's
                      idle_mb=idle)
        if timings_json is not None and timings_json.is_file():
            data = json.loads(timings_json.read_text())
            run.startup_s, run.backend, run.device, run.read_wait_s = (
                data.get("startup_s"), data.get("backend"), data.get("device"),
                data.get("read_wait_s"))
            for entry in data.get("cases", []):
                if entry.get("case") == case:
                    run.timings = {s: entry[s] for s in STAGES if s in entry}
                    run.error = run.error or entry.get("error")
    if trace.errors:
        log.warning("%s: memory sampling problems: %s", case, "; ".join(trace.errors))
    return run


FLOOR_CODE = "import torch; torch.ones(1, device={device!r}).sum().item()"


def floor_s(device: str, repeats: int = 3, python: str = "python3") -> float | None:
    """Median wall-clock of a fresh ``python3 -c "import torch; torch.ones(1, device=...)
    .sum().item()"``: the start-up any torch run on ``device`` pays before its own work,
    the floor a run's time is read above. None (said once) where that command fails."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        try:
            done = subprocess.run([python, "-c", FLOOR_CODE.format(device=device)],
                                  capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as error:
            done = subprocess.CompletedProcess(python, 127, "", str(error))
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            log.warning("the start-up floor could not be measured on %s: %s", device, tail)
            return None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def list_inputs(folder: Path) -> list[Path]:
    """``<case>_0000.nii.gz`` files of ``folder`` (hidden ``._*`` files skipped), sorted."""
    return sorted(p for p in Path(folder).glob(f"*{CASE_SUFFIX}")
                  if not p.name.startswith(".") and p.is_file())


def select_cases(folder: Path, sizes) -> list[Path]:
    """The cases of ``folder`` with one of ``sizes`` slices (all without ``sizes``), by
    slices; a size no case has is one warning line."""
    slices = {p: case_info(p)[0][2] for p in list_inputs(folder)}
    if sizes:
        missing = sorted(set(sizes) - set(slices.values()))
        if missing:
            log.warning("no case with %s slices in %s (--make-suite writes them)",
                        " or ".join(map(str, missing)), folder)
        slices = {p: z for p, z in slices.items() if z in set(sizes)}
    return sorted(slices, key=lambda p: (slices[p], p.name))


def add_run_arguments(p) -> None:
    """The options of how each case runs: weights, backend, device, GPU, more predict.sh
    arguments, the warm-up (``run_setup`` reads them)."""
    p.add_argument("--gpu-index", type=int, default=0,
                   help="GPU to poll and, with --docker, to pass as --gpus device=N (default 0)")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder for predict.sh (default: the shipped weights/)")
    p.add_argument("--backend", choices=("auto", "torch", "onnx"), default=None,
                   help="predict.sh's --backend (default: its own, auto)")
    p.add_argument("--device", default=None, help="predict.sh's --device (default: auto)")
    p.add_argument("--predict-args", default="", metavar="ARGS",
                   help="more options for predict.sh, e.g. \"--torch-mode branches/half\"")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the unrecorded first run that warms the file cache")


def run_setup(args, **options):
    """(memory sampler factory, GPU description, machine stamp, ``run_case`` options) for a
    benchmark's command line; RuntimeError when the memory cannot be measured."""
    from benchmark import machine
    from benchmark.container.memory import measuring

    sampler, gpu = measuring(args.gpu_index)
    return sampler, gpu, machine.stamp(), dict(
        weights=args.weights, backend=args.backend, device=args.device,
        gpu_index=args.gpu_index, extra=shlex.split(args.predict_args), **options)
