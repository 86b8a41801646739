"""Where a training step's time goes (``python -m benchmark.training.train_steps``).

Times the trainer's own pieces on synthetic batches, on any device: the batch's trip to
the device and its augmentation, the forward pass, loss, backward and optimiser step,
each averaged over ``--steps`` after warm-up, with the device synchronised around each
piece (so the pieces add up to more than a free-running step, which overlaps them).
Then the free-running step itself, and on CUDA the operations with the most device and
host time from ``torch.profiler``. A step that takes much longer than its device time is
bound by the host: kernel launches, Python and synchronisation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from inference.plans import Plan
from training import trainer
from training.augment import AUGMENTATIONS, window_for
from training.loss import DeepSupervisionLoss
from training.trainer import amp_dtype


def synthetic_batch(batch: int, context: int, window, generator: torch.Generator):
    """Sampler-shaped batch: (wy, wx) windows larger than the patch (the sampler's
    extent) with a disc lesion in every other sample."""
    wy, wx = window
    image = torch.randn(batch, context, wy, wx, generator=generator)
    yy, xx = torch.meshgrid(torch.arange(wy), torch.arange(wx), indexing="ij")
    disc = ((yy - wy / 2) ** 2 + (xx - wx / 2) ** 2) < (min(wy, wx) / 8) ** 2
    label = torch.zeros(batch, wy, wx, dtype=torch.uint8)
    label[::2] = disc.to(torch.uint8)
    return image, label, torch.zeros(batch, dtype=torch.bool)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device, form: str, amp: str, args) -> dict:
    """The trainer's own step (``training.trainer.train_step``), piece by piece and whole."""
    run = _run(device, form, amp, args)
    plan = run.plan
    image, label, partial = synthetic_batch(args.batch, plan.context_slices,
                                            window_for(plan.patch_size, run.aug),
                                            torch.Generator().manual_seed(0))
    batch = {"image": image, "label": label, "partial": partial}
    state = {}

    def to_device():
        state["image"], state["label"], state["partial"] = trainer.step_inputs(run, batch)

    def augmented():
        state["image"], state["label"] = trainer.step_augment(run, state["image"],
                                                              state["label"])

    functions = {
        "to_device": to_device, "augment": augmented,
        "forward": lambda: state.update(outputs=trainer.step_forward(run, state["image"])),
        "loss": lambda: state.update(loss=trainer.step_loss(run, state["outputs"],
                                                            state["label"], state["partial"])),
        "backward": lambda: trainer.step_backward(run, state["loss"]),
        "optimiser": lambda: trainer.step_optimise(run),
    }
    for _ in range(args.warmup):
        trainer.train_step(run, batch)
    pieces = dict.fromkeys(functions, 0.0)
    for _ in range(args.steps):  # one step piece by piece, the device drained around each
        for name, fn in functions.items():
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            pieces[name] += (time.perf_counter() - t) * 1e3 / args.steps
    _sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step(run, batch)
    _sync(device)
    free = (time.perf_counter() - t) / args.steps * 1e3
    result = {"form": form, "amp": str(run.precision or "fp32").replace("torch.", ""),
              "pieces_ms": {k: round(v, 2) for k, v in pieces.items()},
              "sum_of_pieces_ms": round(sum(pieces.values()), 2),
              "free_running_step_ms": round(free, 2), "steps_per_s": round(1e3 / free, 1)}
    if device.type == "cuda" and args.profile:
        result.update(_kernels(device, lambda: trainer.train_step(run, batch)))
    return result


def _run(device, form: str, amp: str, args) -> "trainer.Run":
    """A trainer Run for a synthetic batch: the demo's loss, light augmentation, Adam."""
    plan = Plan(preset=args.preset, patch_size=tuple(args.patch))
    network = trainer.build_network(plan).to(device)
    network.set_dynamic_form(form)
    network.set_temperature(1.0)
    precision = amp_dtype(device, amp)
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    return trainer.Run(device=device, plan=plan, network=network, model=network,
                       optimizer=torch.optim.Adam(network.parameters(), lr=1e-3),
                       precision=precision,
                       scaler=torch.amp.GradScaler("cuda", enabled=precision == torch.float16),
                       loss_fn=DeepSupervisionLoss("ignore", 8, args.dice),
                       aug=AUGMENTATIONS["light"], generator=generator)


def _kernels(device, step) -> dict:
    """CUDA kernels per step, their device time and the top operations (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize(device)
    prof.key_averages()  # builds the events
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    return {"kernels_per_step": round(len(kernels) / 5),
            "device_ms_per_step": round(sum(e.device_time for e in kernels) / 5e3, 2),
            "top_device_ops": prof.key_averages().table(sort_by="self_cuda_time_total",
                                                         row_limit=15)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.training.train_steps",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--patch", type=int, nargs=2, default=(64, 64))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dice", default="sample", choices=("batch", "sample"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--modes", nargs="+", default=["grouped/auto", "branches/auto",
                                                       "grouped/off"],
                        metavar="FORM/AMP", help="dynamic-convolution form / --amp value")
    parser.add_argument("--profile", action="store_true", help="CUDA: top operations")
    parser.add_argument("-o", "--output", metavar="JSON", help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    results = []
    for mode in args.modes:
        form, amp = mode.split("/")
        r = measure(device, form, amp, args)
        table = r.pop("top_device_ops", None)
        print(json.dumps(r), flush=True)
        if table:
            print(table, flush=True)
            r["top_device_ops"] = table
        results.append(r)
    if args.output:
        Path(args.output).write_text(json.dumps({"device": str(device), "batch": args.batch,
                                                 "patch": list(args.patch), "results": results},
                                                indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
