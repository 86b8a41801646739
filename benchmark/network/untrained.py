"""Weights of an untrained network, for speed benchmarks of a preset before it is trained.

    python -m benchmark.network.untrained -o DIR [--preset fast] [--onnx-batch 8] [--seed 0]

The folder is a complete weights folder (plans.json with the plan's defaults for the
preset, model.pt, model.onnx, model.json, SHA256SUMS) that ``predict.sh --weights DIR``
runs. Its network is randomly initialised: its timings are honest, its masks are not
segmentations, and model.json says so (``"trained": false``).

An untrained network marks a third of the body or more, which inflates the stages after
the network (restore, write) far beyond a trained model's few lesions. ``--lesion-prior
P`` starts the output heads at p(lesion) = P as training does (``training.trainer``), so
the masks are nearly empty, like a trained model's on a lesion-free scan.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_untrained(folder: str | Path, preset: str = "fast", onnx_batch: int = 8,
                    seed: int = 0, lesion_prior: float = 0.0) -> Path:
    import torch

    from inference.model import build_model, get_config
    from inference.plans import Plan
    from inference.weights import write_weights
    from training.trainer import init_lesion_prior

    torch.manual_seed(seed)
    plan = Plan(preset=preset, patch_size=get_config(preset).patch_size)
    network = build_model(preset)
    init_lesion_prior(network, lesion_prior)
    return write_weights(folder, network, plan, onnx_batch=onnx_batch,
                         info={"trained": False, "seed": seed, "lesion_prior": lesion_prior,
                               "note": "untrained (random initialisation) for speed benchmarks"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.network.untrained",
                                description="Write an untrained weights folder for a preset "
                                            "(honest speed, meaningless masks).")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR")
    p.add_argument("--preset", default="fast")
    p.add_argument("--onnx-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lesion-prior", type=float, default=0.0, metavar="P",
                   help="start the output heads at p(lesion) = P (0: as initialised)")
    args = p.parse_args(argv)
    print(write_untrained(args.output, args.preset, args.onnx_batch, args.seed,
                          args.lesion_prior))
    return 0


if __name__ == "__main__":
    sys.exit(main())
