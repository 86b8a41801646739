"""What a training step costs, and what the levers of ``training.step`` buy
(``python -m benchmark.training.train_steps``).

    python -m benchmark.training.train_steps --preset fast --batch 32 --patch 192 192 \\
        --modes grouped/auto/adam=default/loss=per-level/sync=off grouped/bf16/graph \\
        [--data loader --workers 7] [--curve-steps 200] [-o benchmark/results/training]

Modes (``benchmark.training.modes``) are FORM/AMP[/LEVER...]; a lever left out takes the
trainer's default for the device, so ``grouped/auto`` is what ``training train`` does there
and ``grouped/auto/adam=default/loss=per-level/sync=off`` what it did before the levers.

Per mode, on the trainer's own step (``training.step.train_step``), after ``--warmup``
steps: the pieces (eager modes; the device drained around each, so they add up to more
than a step); the free-running ms per step and steps/s; the warm-up's extra time where
the mode compiles or captures (``compile_s``); the operations one step dispatches
(eager modes, counted on any device: on a GPU each is at least one kernel launch); on
CUDA, torch.profiler's kernels, launches and device time per step, and GPU busy = device
time / ms per step. ``--data loader`` feeds the step from the trainer's own sampler and
DataLoader over synthetic cases and records the fraction of steps that waited for their
batch; ``--curve-steps N`` records each mode's loss over the first N steps from one seed
against eager fp32 (``benchmark.training.curves``). Writes
``train_steps_<machine>_<date>[_tag].json``; a mode that fails is recorded with its error
and the others go on (exit code 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import numpy as np
import torch

from benchmark import machine, report
from benchmark.dispatch import OperationCounter, synchronize
from benchmark.machine import results_dir
from benchmark.training.modes import Mode, build_run, parse_mode, synthetic_batch, synthetic_cases
from training import step
from training.augment import window_for
from training.host_memory import keep_freed_memory
from training.sampling import DATA_WAIT_S, BatchStream, PatchSampler, batch_loader, next_batch

RESULTS = results_dir("training")
HOST_READS = {"_local_scalar_dense"}  # a tensor read by the host: never a kernel
LAUNCH_CALLS = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                "cudaGraphLaunch"}


def time_pieces(run, batch: dict, steps: int) -> dict:
    """ms of each named piece of an eager step, the device drained around each."""
    state = {}

    def to_device():
        state["image"], state["label"], state["partial"] = step.step_inputs(run, batch)

    def augmented():
        state["image"], state["label"] = step.step_augment(run, state["image"], state["label"])

    functions = {
        "to_device": to_device, "augment": augmented,
        "forward": lambda: state.update(outputs=step.step_forward(run, state["image"])),
        "loss": lambda: state.update(loss=step.step_loss(run, state["outputs"], state["label"],
                                                         state["partial"])),
        "backward": lambda: step.step_backward(run, state["loss"]),
        "optimiser": lambda: step.step_optimise(run),
    }
    pieces = dict.fromkeys(functions, 0.0)
    for _ in range(steps):
        for name, fn in functions.items():
            synchronize(run.device)
            t = time.perf_counter()
            fn()
            synchronize(run.device)
            pieces[name] += (time.perf_counter() - t) * 1e3 / steps
    return {k: round(v, 3) for k, v in pieces.items()}


def free_running(run, batches, steps: int) -> tuple[float, list[float]]:
    """ms per step of ``steps`` steps back to back, and the seconds each waited for data."""
    waits = []
    synchronize(run.device)
    t = time.perf_counter()
    for _ in range(steps):
        batch, waited = batches()
        waits.append(waited)
        step.train_step(run, batch)
    synchronize(run.device)
    return (time.perf_counter() - t) / steps * 1e3, waits


def count_operations(run, batch: dict) -> int:
    """Operations one step dispatches, views and host reads left out."""
    with OperationCounter() as counter:
        step.train_step(run, batch)
    return sum(n for name, n in counter.counts.items() if name not in HOST_READS)


def profile_cuda(run, batch: dict, steps: int = 5) -> dict:
    """Kernels, launches and device ms per step (torch.profiler), and the top operations."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step.train_step(run, batch)
        torch.cuda.synchronize(run.device)
    events = prof.events()
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    launches = sum(e.name in LAUNCH_CALLS for e in events)
    return {"kernels_per_step": round(len(kernels) / steps),
            "launches_per_step": round(launches / steps),
            "device_ms_per_step": round(sum(e.device_time for e in kernels) / steps / 1e3, 3),
            "top_device_ops": prof.key_averages().table(sort_by="self_cuda_time_total",
                                                         row_limit=15)}


def batch_source(run, args):
    """A function giving (batch, seconds waited): the one synthetic batch again and again,
    or the trainer's sampler and loader over synthetic cases (``--data loader``)."""
    plan = run.plan
    window = window_for(plan.patch_size, run.aug)
    if args.data == "fixed":
        image, label, partial = synthetic_batch(args.batch, plan.context_slices, window,
                                                torch.Generator().manual_seed(0))
        batch = {"image": image, "label": label, "partial": partial}
        return lambda: (batch, 0.0)
    sampler = PatchSampler(synthetic_cases(window), plan.patch_size, plan.context_slices,
                           oversample=0.5, augmentation=run.aug)
    stream = BatchStream(sampler, args.batch, 10**9, 0, 0, 0)
    batches = iter(batch_loader(stream, args.workers, run.device))
    return lambda: next_batch(batches)


def measure(device, mode: Mode, args) -> dict:
    """One mode's record (see the module)."""
    run = build_run(device, mode, args.preset, args.patch, args.dice)
    batches = batch_source(run, args)
    record = {"preset": args.preset, "batch": args.batch, "patch": list(args.patch),
              "mode": mode.text, "form": mode.form,
              "amp": str(run.precision or "fp32").replace("torch.", ""),
              "levers": dataclasses.asdict(run.options) | {"sync_free": run.sync_free},
              "data": args.data, "workers": args.workers if args.data == "loader" else None}
    warm_ms, _ = free_running(run, batches, args.warmup)
    if not args.count_only:
        record.update(_timings(run, mode, batches, warm_ms, args))
    record["operations_per_step"] = count_operations(run, batches()[0]) if mode.eager else None
    if device.type == "cuda" and not args.count_only:
        record.update(profile_cuda(run, batches()[0]))
        record["gpu_busy"] = round(record["device_ms_per_step"] / record["ms_per_step"], 3)
    return record | _kernels(record, device)


def _timings(run, mode: Mode, batches, warm_ms: float, args) -> dict:
    """Pieces (eager modes), the free-running step, the warm-up's extra time where the mode
    compiles or captures (for a graph its eager warm-up steps too), the waits for data."""
    out = {}
    if mode.eager:
        out["pieces_ms"] = time_pieces(run, batches()[0], args.steps)
        out["sum_of_pieces_ms"] = round(sum(out["pieces_ms"].values()), 3)
    ms, waits = free_running(run, batches, args.steps)
    waited = float(np.mean(np.asarray(waits) >= DATA_WAIT_S))
    return out | dict(
        ms_per_step=round(ms, 3), steps_per_s=round(1e3 / ms, 2),
        first_steps_s=round(args.warmup * warm_ms / 1e3, 3),
        compile_s=None if mode.eager else round(args.warmup * (warm_ms - ms) / 1e3, 2),
        waited_fraction=round(waited, 3) if args.data == "loader" else None)


def _kernels(record: dict, device) -> dict:
    """kernels_per_step from torch.profiler on CUDA, else the operation count (each at
    least one kernel on a GPU); gpu_busy where measured."""
    if device.type == "cuda":
        return {"kernels_counted_by": "torch.profiler", "gpu_busy": record.get("gpu_busy")}
    return {"kernels_per_step": record.get("operations_per_step"), "gpu_busy": None,
            "kernels_counted_by": "dispatch counter (CPU)"}


def run_modes(device, modes: list[Mode], args, save) -> tuple[list[dict], bool]:
    """Every mode's record, printed and saved as it comes; a failed mode becomes its
    error."""
    records, failed = [], False
    for mode in modes:
        try:
            record = measure(device, mode, args)
        except Exception as error:  # noqa: BLE001 - one broken lever must not stop the rest
            failed = True
            record = {"preset": args.preset, "batch": args.batch, "patch": list(args.patch),
                      "mode": mode.text, "error": f"{type(error).__name__}: "
                                                  f"{str(error).splitlines()[0][:300]}"}
        table = record.pop("top_device_ops", None)
        print(json.dumps(record), flush=True)
        if table:
            print(table, flush=True)
        records.append(record)
        save(records)
    return records, failed


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        modes = [parse_mode(m) for m in args.modes]
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the trainer's process does
    save = _writer(args, device)
    records, failed = run_modes(device, modes, args, save)
    if args.curve_steps:
        from benchmark.training.curves import compare_modes

        curves = compare_modes(device, modes, args)
        for record in records:
            record["curve"] = curves.get(record["mode"])
        save(records)
    return 1 if failed else 0


def _writer(args, device):
    """``save(records)``: the dated JSON record, rewritten whole (each mode's as it comes,
    so a run stopped by a time limit keeps what it measured); a no-op without ``-o``."""
    if not args.output:
        return lambda records: None
    stamp = machine.stamp()
    base = report.results_base(args.output, "train_steps", stamp, device.type, args.tag)

    def save(records):
        report.write_results(base, data={"machine": stamp, "device": str(device),
                                         "torch": torch.__version__, "records": records})
    return save


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark.training.train_steps",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--patch", type=int, nargs=2, default=(64, 64))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dice", default="sample", choices=("batch", "sample"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5,
                   help="steps before the timing (a CUDA graph is captured in the fourth)")
    p.add_argument("--modes", nargs="+", metavar="FORM/AMP[/LEVER...]",
                   default=["grouped/auto", "branches/auto", "grouped/off"])
    p.add_argument("--data", choices=("fixed", "loader"), default="fixed",
                   help="one synthetic batch again and again, or the trainer's sampler and "
                        "loader over synthetic cases")
    p.add_argument("--workers", type=int, default=0, help="--data loader: its processes")
    p.add_argument("--count-only", action="store_true",
                   help="only the operations one step dispatches (after the warm-up)")
    p.add_argument("--curve-steps", type=int, default=0, metavar="N",
                   help="also each mode's loss over its first N steps against eager fp32")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--tag", default="", help="added to the file name")
    p.add_argument("-o", "--output", default=str(RESULTS), metavar="DIR",
                   help="where the JSON record goes ('' for none)")
    return p


if __name__ == "__main__":
    raise SystemExit(main())
