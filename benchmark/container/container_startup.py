"""The same cases inside the image and outside it, in one run: where does the container's time go?

    python -m benchmark.container.container_startup --image flare-nnsam:latest \
        [-i CASE_OR_FOLDER ...]
        [--rounds 5] [-o benchmark/results/container]

Each round runs, in this order (interleaved, so drift on a busy machine hits every variant):

- ``host``: ``sh predict.sh --timings-json ...`` on this machine, with ``INPUT_DIR`` and
  ``OUTPUT_DIR`` pointing at a fresh workspace;
- ``docker``: the organisers' ``docker container run --shm-size=28gb -m 28G [--gpus ...] --rm
  -v inputs -v outputs IMAGE /bin/bash -c "sh predict.sh --timings-json ..."`` (the same
  extra option as outside, so the two differ only by the container);
- ``docker, no bytecode``: the same with ``PYTHONPYCACHEPREFIX`` pointing at an empty place,
  so Python ignores the image's precompiled bytecode and compiles every module it imports,
  as an image without them does on each start;
- ``docker, telemetry on``: the same with onnxruntime's telemetry as its wheel ships it;
- the pieces: ``docker run IMAGE true`` (container create, start, stop, remove) and
  ``python3 -c pass`` / the runtime's imports inside and outside.

Each run's wall-clock is split by its own clock (``--timings-json``): ``ready`` (imports and
model), ``cases`` (model loaded to last mask written) and ``outside`` (what the process
cannot see: interpreter start, exit, the container's creation and removal). Medians over
the rounds go to ``container_startup_<machine>_<date>_<N>-cases.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmark import machine, report
from benchmark.container.runner import STAGES, docker_command, list_inputs, local_command
from benchmark.machine import ROOT, results_dir
from benchmark.report import markdown_table

log = logging.getLogger(__name__)

REAL = ROOT.parent / "shared" / "data" / "real"
IMPORTS = "import numpy, onnxruntime, SimpleITK, cc3d, isal, inference.predictor"
# Each variant and the docker options it adds to the organisers' command line.
VARIANTS = {
    "host": None,
    "docker": [],
    # Python looks for bytecode under this prefix only, finds none and compiles every module.
    "docker, no bytecode": ["-e", "PYTHONPYCACHEPREFIX=/nonexistent-pycache"],
    # onnxruntime's telemetry as its wheel ships it (the runtime switches it off by default).
    "docker, telemetry on": ["-e", "ORT_DISABLE_TELEMETRY=0"],
}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    return time.perf_counter() - start, result


def workspace(cases: list[Path], into: Path) -> tuple[Path, Path]:
    """``inputs/`` with hard links to the cases (copies across file systems), empty ``outputs/``."""
    inputs, outputs = into / "inputs", into / "outputs"
    shutil.rmtree(into, ignore_errors=True)
    inputs.mkdir(parents=True)
    outputs.mkdir()
    for case in cases:
        try:
            os.link(case, inputs / case.name)
        except OSError:
            shutil.copyfile(case, inputs / case.name)
    return inputs, outputs


def split(wall: float, timings_json: Path) -> dict:
    """The run's wall-clock split by its own clock (seconds).

    ``ready``: from the CLI module's first line to the model loaded; ``cases``: from then to
    the last mask written (stages overlap there: the next read runs beside the network);
    ``outside``: the rest of the wall-clock, which the process cannot see itself
    (interpreter start, exit and, in docker, the container's creation and removal).
    """
    data = json.loads(timings_json.read_text())
    stages = {f"{s}_s": sum(c.get(s, 0.0) for c in data["cases"]) for s in STAGES}
    return {"wall_s": wall, "ready_s": data["ready_s"], "model_s": data["startup_s"],
            "read_s": stages["read_s"], "network_s": stages["network_s"],
            "cases_s": data["finished_s"] - data["ready_s"],
            "outside_s": wall - data["finished_s"]}


def run_round(image: str, cases: list[Path], work: Path, gpu: int | None) -> dict:
    """One round of every variant; a failed run raises with its last lines."""
    row = {}
    for variant in VARIANTS:
        inputs, outputs = workspace(cases, work / "ws")
        if variant == "host":
            timings = work / "timings.json"
            env = {**os.environ, "INPUT_DIR": str(inputs), "OUTPUT_DIR": str(outputs)}
            wall, result = timed(local_command(timings, extra=["--disable-progress-bar"]), env)
        else:
            outputs.chmod(0o777)
            timings = outputs / "timings.json"
            env_options = VARIANTS[variant]
            cmd = docker_command(image, inputs, outputs, gpu,
                                 predict_args="--timings-json /workspace/outputs/timings.json",
                                 docker_options=env_options)
            wall, result = timed(cmd)
        if result.returncode != 0 or not timings.is_file():
            tail = " / ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"{variant}: exit code {result.returncode}: {tail}")
        row[variant] = split(wall, timings)
    row["docker run true"] = {"wall_s": timed(["docker", "container", "run", "--rm", image,
                                               "true"])[0]}
    python_in = ["docker", "container", "run", "--rm", image, "python3", "-c"]
    python_out = [sys.executable, "-c"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    row["python3 -c pass, host"] = {"wall_s": timed(python_out + ["pass"])[0]}
    row["python3 -c pass, docker"] = {"wall_s": timed(python_in + ["pass"])[0]}
    row["runtime imports, host"] = {"wall_s": timed(python_out + [IMPORTS], env)[0]}
    row["runtime imports, docker"] = {"wall_s": timed(python_in + [IMPORTS])[0]}
    return row


def medians(rounds: list[dict]) -> list[dict]:
    rows = []
    for variant in rounds[0]:
        keys = rounds[0][variant].keys()
        row = {"variant": variant,
               **{k: statistics.median(r[variant][k] for r in rounds) for k in keys}}
        row["wall_range"] = (f"{min(r[variant]['wall_s'] for r in rounds):.2f}-"
                             f"{max(r[variant]['wall_s'] for r in rounds):.2f}")
        rows.append(row)
    return rows


def markdown(rows: list[dict], stamp: dict, image: str, cases: list[Path], rounds: int,
           gpu: int | None, argv=None) -> str:
    host = next(r for r in rows if r["variant"] == "host")
    for row in rows:
        row["vs_host"] = row["wall_s"] / host["wall_s"] if "ready_s" in row else None
    columns = [("variant", "variant"), ("wall_s", "wall s", ".2f"), ("wall_range", "range"),
               ("vs_host", "x host", ".2f"), ("ready_s", "ready s", ".2f"),
               ("model_s", "model load s", ".2f"), ("cases_s", "cases s", ".2f"),
               ("read_s", "read s", ".2f"), ("network_s", "network s", ".2f"),
               ("outside_s", "outside s", ".2f")]
    names = ", ".join(p.name for p in cases)
    return (report.header("The first case inside the image and outside it", stamp,
                          "benchmark.container.container_startup", argv)
            + f"- image: `{image}`; cases: {names} (one run holds all of them)\n"
            f"- {rounds} interleaved rounds, medians; GPU: "
            f"{'--gpus device=%d' % gpu if gpu is not None else 'none (no --gpus)'}\n"
            f"- ready: the CLI's first line to the model loaded (imports, model); cases: "
            f"from then to the last mask written; outside: wall-clock the process cannot "
            f"see (interpreter start, exit, the container's creation and removal)\n\n"
            + markdown_table(rows, columns))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.container.container_startup",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="the built image (container/build.sh)")
    p.add_argument("-i", "--input", nargs="+", type=Path, default=[REAL],
                   help="cases or folders of <case>_0000.nii.gz (default: the real scans)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gpu", type=int, default=None, help="pass --gpus device=N (default: none)")
    p.add_argument("-o", "--output", type=Path, default=results_dir("container"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    cases = [c for path in args.input
             for c in (list_inputs(path) if path.is_dir() else [path])]
    if not cases or not all(c.is_file() for c in cases):
        log.error("error: no <case>_0000.nii.gz in %s", " ".join(map(str, args.input)))
        return 2
    if shutil.which("docker") is None or subprocess.run(
            ["docker", "image", "inspect", args.image], capture_output=True).returncode != 0:
        log.error("error: image %s not found (docker missing, or build it first)", args.image)
        return 2
    stamp = machine.stamp()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="flare-startup-") as tmp:
        for i in range(args.rounds):
            rounds.append(run_round(args.image, cases, Path(tmp), args.gpu))
            log.info("round %d: %s", i + 1, ", ".join(
                f"{v} {rounds[-1][v]['wall_s']:.2f} s" for v in VARIANTS))
    rows = medians(rounds)
    text = markdown(rows, stamp, args.image, cases, args.rounds, args.gpu, argv)
    tag = f"{len(cases)}-case{'s' * (len(cases) > 1)}"
    report.write_results(report.results_base(args.output, "container_startup", stamp, tag=tag),
                         text, {"machine": stamp, "image": args.image,
                                "cases": [c.name for c in cases], "rounds": rounds})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
