"""Does a lever change what training does? The loss over the first steps from one seed.

``compare_modes`` (``python -m benchmark.training.train_steps --curve-steps N``) trains each
mode ``N`` steps from the same initial weights on the same batches (the trainer's sampler
over synthetic cases, per-batch seeds) with the same augmentation draws, the temperature
annealed 30 -> 1 over the first half as the trainer anneals it; and eager fp32 twice more,
on the same batches and on another seed's. Each curve is cut into windows of ``WINDOW``
steps: a mode is within noise of eager fp32 when its window means differ from fp32's by no
more (root mean square over the windows) than fp32's differ from fp32's own on other
batches, the spread that a new seed brings.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmark.training.modes import build_run, parse_mode, synthetic_cases
from training import step
from training.augment import window_for
from training.sampling import BatchStream, PatchSampler
from training.trainer import temperature

REFERENCE = "grouped/off/adam=default/loss=per-level/sync=off"  # eager fp32, as before
WINDOW = 20


def loss_curve(device, mode, args, data_seed: int = 0) -> list[float]:
    """The loss of each of the first ``args.curve_steps`` steps of ``mode``."""
    run = build_run(device, mode, args.preset, args.patch, args.dice)
    run.generator.manual_seed(data_seed)
    window = window_for(run.plan.patch_size, run.aug)
    sampler = PatchSampler(synthetic_cases(window), run.plan.patch_size,
                           run.plan.context_slices, oversample=0.5, augmentation=run.aug)
    losses = []
    for i, batch in enumerate(BatchStream(sampler, args.batch, args.curve_steps, data_seed,
                                          0, 0)):
        run.network.set_temperature(temperature(i, args.curve_steps // 2))
        losses.append(step.train_step(run, batch))
    return torch.stack(losses).float().cpu().tolist()


def window_means(curve: list[float], window: int = WINDOW) -> np.ndarray:
    n = len(curve) // window
    return np.asarray(curve[:n * window]).reshape(n, window).mean(axis=1)


def rms_gap(a: list[float], b: list[float], window: int = WINDOW) -> float:
    """Root mean square of the difference between two curves' window means."""
    gap = window_means(a, window) - window_means(b, window)
    return float(np.sqrt(np.mean(gap ** 2))) if gap.size else math.nan


def compare(curve: list[float], reference: list[float], other_seed: list[float]) -> dict:
    """``curve`` against eager fp32's on the same batches, with the spread of a new seed."""
    gap, noise = rms_gap(curve, reference), rms_gap(other_seed, reference)
    return {"steps": len(curve), "window": WINDOW, "first_loss": curve[0],
            "last_window_mean": float(window_means(curve)[-1]) if len(curve) >= WINDOW
            else None, "rms_gap_to_fp32": gap, "fp32_new_seed_rms_gap": noise,
            "within_noise": bool(gap <= noise) if not math.isnan(gap) else None,
            "finite": bool(np.isfinite(curve).all()), "losses": [round(v, 5) for v in curve]}


def compare_modes(device, modes, args) -> dict:
    """Each mode's ``compare`` record, by mode text (the mode's error where it fails)."""
    reference_mode = parse_mode(REFERENCE)
    reference = loss_curve(device, reference_mode, args)
    other_seed = loss_curve(device, reference_mode, args, data_seed=1)
    out = {}
    for mode in modes:
        try:
            out[mode.text] = compare(loss_curve(device, mode, args), reference, other_seed)
        except Exception as error:  # noqa: BLE001 - recorded, the other modes go on
            out[mode.text] = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(f"curve {mode.text}: " + ", ".join(
            f"{k} {v}" for k, v in out[mode.text].items() if k != "losses"), flush=True)
    return out
