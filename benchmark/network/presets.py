"""The network presets side by side: parameters, FLOPs per patch, CPU time per tile.

    python -m benchmark.network.presets [--sam-kinds]

Per preset (and with ``--sam-kinds`` each SAM kind): trainable and frozen parameters,
GFLOPs of one eval forward pass per patch (``torch.utils.flop_counter``) and of it the SAM
branch's, the CPU milliseconds per tile of the eval forward pass (best of a few rounds),
the patch. Measurement only: the container's network is ``inference.model``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch

from inference.model import PRESETS, LesionProbability, NnSam, count_parameters
from inference.network_config import with_sam


def count_flops(model: NnSam, batch: int = 1, sam_only: bool = False) -> int:
    """Floating-point operations of one eval forward pass (torch.utils.flop_counter);
    ``sam_only``: those of the SAM branch alone."""
    from torch.utils.flop_counter import FlopCounterMode

    c = model.config
    x = torch.zeros(batch, c.in_channels, *c.patch_size)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        if sam_only:
            if model.sam is not None:
                model.sam(x, (c.patch_size[0] // 8, c.patch_size[1] // 8))
        else:
            model(x)
    model.train(was_training)
    return counter.get_total_flops()


def ms_per_tile(model: NnSam, batch: int = 8, rounds: int = 3) -> float:
    """CPU milliseconds per tile of the eval forward pass (best of ``rounds``)."""
    c = model.config
    x = torch.randn(batch, c.in_channels, *c.patch_size)
    model = LesionProbability(model).eval()
    best = math.inf
    with torch.inference_mode():
        model(x)
        for _ in range(rounds):
            start = time.perf_counter()
            model(x)
            best = min(best, time.perf_counter() - start)
    return 1000 * best / batch


def preset_table(kinds: tuple[str, ...] = ("preset",), timing: bool = True,
                 presets: tuple[str, ...] = tuple(PRESETS)) -> list[dict]:
    """Per preset (and SAM kind): trainable and frozen parameters (M), GFLOPs per patch and
    of it the SAM branch's, CPU ms per tile, patch size."""
    rows = []
    for name in presets:
        for kind in kinds:
            config = PRESETS[name] if kind == "preset" else with_sam(PRESETS[name], kind)
            model = NnSam(config)
            c = model.config
            rows.append({
                "preset": name, "sam": c.sam_kind if c.sam else "none",
                "trainable_m": count_parameters(model, True) / 1e6,
                "frozen_m": count_parameters(model, False) / 1e6,
                "gflops": count_flops(model) / 1e9,
                "sam_gflops": count_flops(model, sam_only=True) / 1e9,
                # a 1024-px pretrained encoder takes seconds per tile here: one tile, once
                "ms_per_tile": (ms_per_tile(model, *((1, 1) if c.sam and c.sam_image_size >= 512
                                                     else (8, 3)))) if timing else None,
                "patch": f"{c.in_channels}x{c.patch_size[0]}x{c.patch_size[1]}",
            })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.network.presets",
                                     description="Print the network presets.")
    parser.add_argument("--sam-kinds", action="store_true",
                        help="also each preset with every SAM kind (the pretrained ones are "
                             "slow on a CPU)")
    args = parser.parse_args(argv)
    kinds = ("preset", "mobile_sam", "sam_vit_b", "none") if args.sam_kinds else ("preset",)
    # flop_counter counts a multiply-accumulate as two FLOPs; papers that count with
    # thop or ptflops (as the paper's 15.6 G seems to) report multiply-accumulates.
    print(f"{'preset':<8} {'sam':<10} {'trainable (M)':>13} {'frozen (M)':>10} "
          f"{'GFLOPs/patch':>12} {'of it SAM':>9} {'without SAM':>11} {'GMACs/patch':>11} "
          f"{'CPU ms/tile':>11} {'patch':>11}")
    for row in preset_table(kinds):
        print(f"{row['preset']:<8} {row['sam']:<10} {row['trainable_m']:>13.2f} "
              f"{row['frozen_m']:>10.2f} {row['gflops']:>12.2f} {row['sam_gflops']:>9.2f} "
              f"{row['gflops'] - row['sam_gflops']:>11.2f} {row['gflops'] / 2:>11.2f} "
              f"{row['ms_per_tile']:>11.1f} {row['patch']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
