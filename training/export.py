"""A training run -> the container's weights folder (``python -m training export``).

Writes plans.json, model.pt, model.onnx, model.json and SHA256SUMS with
``inference.weights.write_weights``, then checks that onnxruntime and torch agree:
both backends predict one validation case of the run (the cached volume, through the
container's ``inference.pipeline.network_probability``) and the largest absolute
probability difference must stay under ``tolerance``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from inference.pipeline import module_predictor, network_probability
from inference.plans import Plan
from inference.weights import DEFAULT_ONNX_BATCH, write_weights
from training.preprocessing import cached_cases, load_case
from training.trainer import BEST, LAST, SPLIT, TrainingError, build_network, load_checkpoint

log = logging.getLogger(__name__)

TOLERANCE = 1e-3


def load_run(run_dir: Path, checkpoint: str = "best"):
    """(network in eval mode, plan, checkpoint dict) of a run."""
    run_dir = Path(run_dir)
    name = {"best": BEST, "last": LAST}[checkpoint]
    path = run_dir / name
    if checkpoint == "best" and not path.is_file():
        log.warning("%s: missing; exporting the last checkpoint instead", path)
        path = run_dir / LAST
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint; train first (python -m training train)")
    state = load_checkpoint(path)
    plan = Plan.from_dict(state["plan"], str(path))
    network = build_network(plan)
    network.load_state_dict(state["model"])
    network.set_dynamic_form("grouped")
    return network.eval(), plan, {"path": path, "epoch": state.get("epoch"),
                                  "score": state.get("score")}


def parity_case(run_dir: Path):
    """(case, cache) of a validation case of the run (a training case if none)."""
    split = json.loads((Path(run_dir) / SPLIT).read_text())
    cache = Path(split["cache"])
    cases = split["validation"] or split["train"]
    available = set(cached_cases(cache))
    for case in cases:
        if case in available:
            return case, cache
    raise TrainingError(f"{cache}: none of the run's cases is cached any more")


def check_parity(network, plan: Plan, weights_dir: Path, image: np.ndarray,
                 max_slices: int = 12) -> float:
    """Max |p_torch - p_onnx| over the central slices of ``image`` (network resolution)."""
    from inference.backends import OnnxBackend

    nz = image.shape[0]
    z0 = max((nz - max_slices) // 2, 0)
    volume = np.ascontiguousarray(image[z0:z0 + max_slices], np.float32)
    onnx = OnnxBackend(weights_dir, "cpu", threads=1)
    p_torch = network_probability(torch.from_numpy(volume), module_predictor(network, "cpu"),
                                  plan, onnx.batch_size)
    p_onnx = network_probability(volume, onnx, plan, onnx.batch_size)
    return float(np.abs(p_torch - p_onnx).max())


def run_export(run_dir, output, checkpoint: str = "best", onnx_batch: int = DEFAULT_ONNX_BATCH,
               tolerance: float = TOLERANCE) -> float:
    run_dir, output = Path(run_dir), Path(output)
    torch.set_num_threads(1)  # see training.trainer: shared small CPUs lose with more
    network, plan, meta = load_run(run_dir, checkpoint)
    t = time.perf_counter()
    info = {"source": "python -m training export", "trained": True,
            "checkpoint": meta["path"].name, "epoch": meta["epoch"],
            "validation_score": meta["score"]}
    write_weights(output, network, plan, onnx_batch=onnx_batch, info=info)
    log.info("wrote %s (epoch %s) in %.1f s", output, meta["epoch"], time.perf_counter() - t)
    t = time.perf_counter()
    case, cache = parity_case(run_dir)
    image, _, _ = load_case(cache, case)
    diff = check_parity(network, plan, output, np.asarray(image))
    log.info("parity check in %.1f s", time.perf_counter() - t)
    print(f"torch vs onnxruntime on {case}: max |dp| = {diff:.2e} (limit {tolerance:.0e})")
    if not diff <= tolerance:
        raise TrainingError(f"{output}: onnxruntime and torch disagree by {diff:.2e} "
                            f"> {tolerance:.0e} on {case}")
    return diff
