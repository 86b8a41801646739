"""The modes a training step is measured in, and the runs and data that measure them
(``benchmark.training.train_steps`` and ``benchmark.training.curves``).

A mode is FORM/AMP[/LEVER...]: the dynamic-convolution form (grouped, branches), the
``--amp`` value of ``training train`` (auto, on, off, bf16), then any of
``adam=default|foreach|fused``, ``loss=per-level|batched``, ``compile=MODE``, ``graph``
(the whole step as one CUDA graph) and ``sync=on|off`` (augmentation that asks the device
nothing; default on CUDA only). A lever left out takes the trainer's default for the device.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from inference.model import DYNAMIC_FORMS
from inference.plans import Plan
from training import step, trainer
from training.augment import AUGMENTATIONS
from training.sampling import CachedCase, lesion_components
from training.step import StepOptions
from training.trainer import amp_dtype

AMPS = ("auto", "on", "off", "bf16")


@dataclasses.dataclass(frozen=True)
class Mode:
    text: str
    form: str
    amp: str
    options: StepOptions
    sync_free: bool | None  # None: the device's default

    @property
    def eager(self) -> bool:
        return self.options.compile == "off" and not self.options.cuda_graph


def parse_mode(text: str) -> Mode:
    """``FORM/AMP[/LEVER...]`` (see the module); ValueError names what is wrong."""
    form, amp, *levers = text.split("/") if "/" in text else (text, "")
    if form not in DYNAMIC_FORMS or amp not in AMPS:
        raise ValueError(f"mode {text!r}: expected FORM/AMP with FORM one of "
                         f"{', '.join(DYNAMIC_FORMS)} and AMP one of {', '.join(AMPS)}")
    values, sync_free = {}, None
    for lever in levers:
        key, _, value = lever.partition("=")
        if lever == "graph":
            values["cuda_graph"] = True
        elif key in ("adam", "compile") and value:
            values[key] = value
        elif key == "loss" and value:
            values["loss_kernels"] = value
        elif key == "sync" and value in ("on", "off"):
            sync_free = value == "on"
        else:
            raise ValueError(f"mode {text!r}: unknown lever {lever!r}")
    return Mode(text, form, amp, StepOptions(**values), sync_free)


def trainer_flags(mode: Mode) -> list[str]:
    """The ``training train`` options that run ``mode``'s step (``sync`` follows the device
    there)."""
    o = mode.options
    return (["--dynamic-form", mode.form, "--amp", mode.amp, "--adam", o.adam,
             "--loss-kernels", o.loss_kernels, "--compile", o.compile]
            + (["--cuda-graph"] if o.cuda_graph else []))


def best_mode(records: list[dict]) -> str | None:
    """The mode with the most steps/s among those that ran and whose loss curve stayed
    finite and within noise of eager fp32; None if none did."""
    fine = [r for r in records if "error" not in r and r.get("steps_per_s")
            and (r.get("curve") or {}).get("within_noise") and r["curve"].get("finite")]
    return max(fine, key=lambda r: r["steps_per_s"])["mode"] if fine else None


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


def synthetic_cases(window, n: int = 4, slices: int = 12, seed: int = 0) -> list[CachedCase]:
    """Cached-case stand-ins twice the window across, each with one ball-shaped lesion."""
    rng = np.random.default_rng(seed)
    size = 2 * max(window)
    zz, yy, xx = np.ogrid[:slices, :size, :size]
    cases = []
    for i in range(n):
        image = rng.standard_normal((slices, size, size), dtype=np.float32).astype(np.float16)
        cz, cy, cx = slices // 2, *rng.integers(size // 4, 3 * size // 4, 2)
        label = (((zz - cz) * 4) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2
                 < (size // 10) ** 2).astype(np.uint8)
        cases.append(CachedCase(f"synthetic_{i}", image, label, np.argwhere(label), False,
                                (3.0, 2.0, 2.0), lesion_components(label)))
    return cases


def build_run(device: torch.device, mode: Mode, preset: str, patch, dice: str = "sample",
              seed: int = 0, lr: float = 1e-3) -> trainer.Run:
    """A trainer Run for ``mode``: the network from ``seed`` (heads at the trainer's lesion
    prior), the demo's loss and light augmentation, Adam without weight decay."""
    plan = Plan(preset=preset, patch_size=tuple(patch))
    torch.manual_seed(seed)
    network = trainer.build_network(plan)
    trainer.init_lesion_prior(network, 0.01)
    network = network.to(device)
    network.set_dynamic_form(mode.form)
    network.set_temperature(1.0)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    run = trainer.Run(device=device, plan=plan, network=network, model=network, world=1,
                      precision=amp_dtype(device, mode.amp), aug=AUGMENTATIONS["light"],
                      generator=generator)
    step.set_up_step(run, mode.options, lr, 0.0, loss=dict(
        partial_mode="ignore", margin=8, dice=dice, deep_supervision="halving"))
    if mode.sync_free is not None:
        run.sync_free = mode.sync_free
    step.prepare_step(run)
    return run
