"""Scoring the validation split during training, at network resolution.

The cached validation volumes go through the container's own steps
(``inference.pipeline``: its network forward, tiling, blending and body mask, then the
plan's threshold and component filter at network spacing) and are scored with the
official FLARE rules (``evaluation.metrics``) against the cached label. It skips reading,
resampling and restoring, so it is fast; the final numbers on the raw files come from
``python -m training thresholds`` and ``python -m evaluation``.
"""

from __future__ import annotations

import numpy as np
import torch

from evaluation.metrics import score_case
from inference.pipeline import decide, module_predictor, network_probability
from inference.plans import Plan
from training.reporting import mean_scores


def predict_cached(network, image: np.ndarray, plan: Plan, device, batch_size: int = 16,
                   tile_step: float | None = None) -> np.ndarray:
    """Lesion probability (z, y, x) of a cached normalised volume."""
    volume = torch.from_numpy(np.asarray(image, np.float32)).to(device)
    return network_probability(volume, module_predictor(network, device), plan, batch_size,
                               tile_step)


def score_prediction(probability, label, spacing_zyx, plan: Plan) -> tuple[float, float]:
    """(DSC, NSD) of the plan's decision at network resolution against ``label``."""
    kept = decide(probability, spacing_zyx, plan.postprocessing)
    return score_case(kept, label, spacing_zyx)


def validate(network, cases, plan: Plan, device, tile_step: float | None = None) -> dict:
    """Mean DSC, NSD and their mean (the FLARE score) over ``cases`` (CachedCase list)."""
    was_training = network.training
    rows = []
    for case in cases:
        probability = predict_cached(network, case.image, plan, device, tile_step=tile_step)
        dsc, nsd = score_prediction(probability, np.asarray(case.label), case.spacing_zyx, plan)
        rows.append({"case": case.case, "dsc": dsc, "nsd": nsd,
                     "lesion": bool(np.asarray(case.label).any())})
    network.train(was_training)
    return validation_metrics(rows)


def validation_metrics(rows: list[dict]) -> dict:
    """Mean DSC, NSD and their mean, the FLARE score, over per-case rows, with the rows;
    NaN without a row."""
    means = mean_scores(rows)
    dsc, nsd = means["dsc"], means["nsd"]
    return {"val_dsc": dsc, "val_nsd": nsd, "val_score": (dsc + nsd) / 2,
            **({"cases": rows} if rows else {})}
