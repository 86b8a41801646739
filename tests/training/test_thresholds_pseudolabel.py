"""Threshold search picks the obvious optimum; pseudo-labels keep only confident lesions."""

import numpy as np
import torch

from inference.geometry import Reorientation
from inference.model import build_model
from inference.plans import Plan, PostProcessing
from inference.predictor import Predictor
from inference.preprocess import Prepared
from inference.weights import load_plan, verified, write_weights
from training.dataset import list_dataset, read_case
from training.pseudolabel import select
from training.thresholds import (
    CasePrediction,
    choose_step,
    decide,
    grid_search,
    predict_case,
    write_postprocessing,
)

SPACING = (1.0, 1.0, 1.0)


def same_grid(shape):
    """Geometry of a case predicted on its own grid: restoring gives the kept lesions."""
    return Prepared(None, None, Reorientation((0, 1, 2), (False, False, False)), shape,
                    tuple(slice(0, n) for n in shape), SPACING)


def _case(name, lesion=True):
    """A true lesion (p 0.95, 1000 voxels), a tiny sure blob (8 voxels) and a big faint one."""
    p = np.zeros((40, 40, 40), np.float32)
    label = np.zeros(p.shape, np.uint8)
    if lesion:
        p[5:15, 5:15, 5:15] = 0.95
        label[5:15, 5:15, 5:15] = 1
    p[30:32, 30:32, 30:32] = 0.95  # small false positive: removed by a volume bar
    p[20:28, 2:12, 25:35] = 0.6  # large low-confidence false positive: removed by confidence
    return CasePrediction(name, p, same_grid(p.shape), label, SPACING)


def test_grid_search_picks_the_obvious_optimum():
    cases = [_case("a"), _case("b"), _case("healthy", lesion=False)]
    rows, best = grid_search(cases, (0.5,), volumes=(0, 20, 2000), confidences=(0, 0.8, 0.99))
    assert len(rows) == 9
    assert best["min_volume_mm3"] == 20 and best["min_confidence"] == 0.8
    assert best["dsc"] == 1.0 and best["nsd"] == 1.0
    worst = [r for r in rows if r["min_volume_mm3"] == 0 and r["min_confidence"] == 0][0]
    assert worst["score"] < best["score"]


def test_worker_processes_score_the_grid_exactly_as_one_process():
    """Forked workers inherit the cases and send back only their scores."""
    cases = [_case("a"), _case("b"), _case("healthy", lesion=False)]
    grid = dict(thresholds=(0.3, 0.5), volumes=(0, 20, 2000), confidences=(0, 0.8))
    serial_rows, serial_best = grid_search(cases, **grid)
    rows, best = grid_search(cases, **grid, workers=2)
    assert rows == serial_rows and best == serial_best
    assert len({(r["dsc"], r["nsd"]) for r in rows}) > 1  # the grid is not uniform


def test_grid_search_lowers_the_decision_threshold_when_lesions_are_underconfident():
    """A lesion predicted at p 0.4 throughout (a small lesion blurred over coarse voxels)."""
    p = np.zeros((40, 40, 40), np.float32)
    label = np.zeros(p.shape, np.uint8)
    p[5:15, 5:15, 5:15] = 0.4
    label[5:15, 5:15, 5:15] = 1
    case = CasePrediction("faint", p, same_grid(p.shape), label, SPACING)
    rows, best = grid_search([case], (0.3, 0.5), volumes=(0,), confidences=(0,))
    assert [r["threshold"] for r in rows] == [0.3, 0.5]
    assert best["threshold"] == 0.3 and best["dsc"] == 1.0
    assert rows[1]["dsc"] == 0.0


def test_the_search_scores_the_mask_the_container_writes(dataset, tmp_path):
    torch.manual_seed(0)
    plan = Plan(preset="tiny", patch_size=(64, 64), target_spacing=(2.5, 2.5, 4.0))
    weights = write_weights(tmp_path, build_model("tiny"), plan, onnx_batch=4)
    predictor = Predictor(weights, device="cpu", backend="onnx")
    entry = next(e for e in list_dataset(dataset) if e.case.endswith("0"))
    prediction = predict_case(predictor, entry)[plan.tile_step]
    # an untrained network: cut where some components are kept and some filtered out
    threshold = float(np.quantile(prediction.probability, 0.98))
    predictor.plan.postprocessing = PostProcessing(threshold, 60.0, 0.0)
    searched = decide(prediction, threshold, 60.0, 0.0)
    written = predictor.predict(read_case(entry)[0]).mask
    assert 0 < searched.sum() < decide(prediction, threshold, 0.0, 0.0).sum()
    assert np.array_equal(searched, written)


def test_the_largest_tile_step_within_the_tolerance_is_chosen():
    scores = {0.5: {"score": 0.700}, 0.75: {"score": 0.695}, 1.0: {"score": 0.650}}
    assert choose_step(scores) == 0.75  # 1.0 loses 0.05: accuracy would pay for its speed
    assert choose_step(scores, tolerance=0.1) == 1.0
    assert choose_step({0.5: {"score": 0.6}, 1.0: {"score": 0.7}}) == 1.0


def test_thresholds_are_written_into_the_plan_and_checksums(tmp_path):
    write_weights(tmp_path, build_model("tiny"), Plan(preset="tiny", patch_size=(64, 64)),
                  onnx_batch=2)
    write_postprocessing(tmp_path, 120.0, 0.7, 0.4, 1.0)
    plan = load_plan(tmp_path)  # checks SHA256SUMS
    assert plan.tile_step == 1.0
    assert plan.postprocessing.min_volume_mm3 == 120.0
    assert plan.postprocessing.min_confidence == 0.7
    assert plan.postprocessing.threshold == 0.4
    verified(tmp_path, "model.onnx")


def test_pseudolabel_keeps_confident_lesions_and_only_clearly_healthy_scans():
    p = np.zeros((20, 20, 20), np.float32)
    p[2:6, 2:6, 2:6] = 0.97
    p[12:16, 12:16, 12:16] = 0.6
    kind, label = select(p > 0.5, p, SPACING, 0.9, 0.3)
    assert kind == "lesion" and label[3, 3, 3] == 1 and label[13, 13, 13] == 0
    faint = np.where(p > 0.9, 0.0, p)
    assert select(faint > 0.5, faint, SPACING, 0.9, 0.3)[0] == "dropped"
    quiet = np.full(p.shape, 0.05, np.float32)
    kind, label = select(quiet > 0.5, quiet, SPACING, 0.9, 0.3)
    assert kind == "healthy" and not label.any()
