"""Post-processing thresholds chosen on validation cases (``python -m training thresholds``).

Each validation case is read from its raw NIfTI file and predicted once with the
inference package's own ``Predictor`` (its backend, plan, preprocessing and sliding
window: the container's code), keeping the lesion probability at network resolution.
Then every (decision threshold, min component volume, min component confidence) triple
is applied with the container's own ``inference.pipeline.mask_on_input`` (components at
network resolution, restored onto the input grid) and scored against the label with the
FLARE rules (``evaluation.metrics.score_case``; lesion-free cases score 1/1 only when
empty). The triple with the best mean of DSC and NSD is written into the weights'
plans.json (signed again in SHA256SUMS); ties go to the middle of the tied triples.

The decision threshold is searched because 0.5 is not the best cut after linear
upsampling: a lesion a few coarse voxels wide, whose voxels hold partly lesion, shrinks
or vanishes at 0.5 even when each coarse voxel holds its exact lesion fraction, and a
lower cut keeps more of it (``python -m training ceiling`` measures it on a dataset).

The plan's ``tile_step`` is chosen the same way: the validation cases are predicted at
each step of ``--tile-steps`` (0.5, nnU-Net's overlap, and 1.0, tiles edge to edge: far
fewer tiles), and the largest step whose best score lies within ``STEP_TOLERANCE`` of the
best overall is written into the plan, with its post-processing. Speed is bought only where the
validation cases say accuracy does not pay for it.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.metrics import score_case
from inference.pipeline import mask_on_input
from inference.plans import PostProcessing
from inference.preprocess import Prepared
from inference.weights import PLANS, load_plan, save_plan
from training.dataset import CaseError, list_dataset, read_case
from training.trainer import SPLIT, TrainingError

log = logging.getLogger(__name__)

DECISION_THRESHOLDS = (0.3, 0.4, 0.5)
VOLUMES_MM3 = (0.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0)
CONFIDENCES = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)
TILE_STEPS = (0.5, 1.0)
STEP_TOLERANCE = 0.01  # mean of DSC and NSD a larger step may lose


@dataclass
class CasePrediction:
    case: str
    probability: np.ndarray  # lesion probability at network resolution
    prepared: Prepared  # the case's geometry (its volume dropped), for restoring
    label: np.ndarray  # on the input grid
    label_spacing_zyx: tuple


def decide(pred: CasePrediction, threshold: float, min_volume: float,
           min_confidence: float) -> np.ndarray:
    """The container's mask on the input grid under one post-processing triple."""
    post = PostProcessing(threshold, min_volume, min_confidence)
    return mask_on_input(pred.probability, pred.prepared, post)


def case_scores(pred: CasePrediction, triples) -> np.ndarray:
    """(DSC, NSD) of one case under each (threshold, volume, confidence) triple."""
    return np.array([score_case(decide(pred, *triple), pred.label, pred.label_spacing_zyx)
                     for triple in triples], dtype=np.float64).reshape(len(triples), 2)


# The cases a worker pool scores. Workers are forked after it is set, so they inherit the
# predictions (large arrays, not worth pickling) and only indices and scores travel.
_POOL_CASES: list[CasePrediction] = []


def _pool_case_scores(index: int, triples) -> np.ndarray:
    return case_scores(_POOL_CASES[index], triples)


def all_case_scores(predictions: list[CasePrediction], triples, workers: int = 1) -> np.ndarray:
    """(cases, triples, 2) scores, the cases spread over ``workers`` forked processes."""
    global _POOL_CASES
    workers = min(workers, len(predictions))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        return np.stack([case_scores(p, triples) for p in predictions])
    _POOL_CASES = predictions
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            return np.stack(list(pool.map(_pool_case_scores, range(len(predictions)),
                                          [triples] * len(predictions))))
    finally:
        _POOL_CASES = []


def grid_search(predictions: list[CasePrediction], thresholds=DECISION_THRESHOLDS,
                volumes=VOLUMES_MM3, confidences=CONFIDENCES,
                workers: int = 1) -> tuple[list[dict], dict]:
    """Score every (threshold, volume, confidence) triple; returns (table rows, best row)."""
    triples = list(itertools.product(thresholds, volumes, confidences))
    scores = all_case_scores(predictions, triples, workers)
    rows = []
    for (threshold, volume, confidence), (dsc, nsd) in zip(triples, scores.mean(axis=0)):
        dsc, nsd = float(dsc), float(nsd)
        rows.append({"threshold": float(threshold), "min_volume_mm3": float(volume),
                     "min_confidence": float(confidence), "dsc": dsc, "nsd": nsd,
                     "score": (dsc + nsd) / 2})
    top = max(r["score"] for r in rows)
    tied = [r for r in rows if r["score"] >= top - 1e-9]
    return rows, tied[len(tied) // 2]


def predict_case(predictor, entry, tile_steps=None) -> dict[float, CasePrediction]:
    """Network-resolution probability of one raw case with the container's code, per tile
    step (the case is read and preprocessed once for all of ``tile_steps``; default: the
    plan's)."""
    volume, label = read_case(entry)
    steps = [predictor.plan.tile_step] if tile_steps is None else tile_steps
    prepared = predictor.prepare(volume)
    if prepared.box is None:  # no body: the container writes an empty mask
        probabilities = {step: np.zeros((1, 1, 1), np.float32) for step in steps}
    else:
        probabilities = {step: predictor.probability(prepared, step) for step in steps}
    prepared.volume = prepared.body = None  # kept with every case: only its geometry
    return {step: CasePrediction(entry.case, probability, prepared, label, volume.spacing_zyx)
            for step, probability in probabilities.items()}


def validation_cases(args) -> list[str]:
    if args.cases:
        return list(args.cases)
    if not args.run:
        raise TrainingError("give --cases or -r RUN_DIR (its validation split is used)")
    path = Path(args.run) / SPLIT
    if not path.is_file():
        raise TrainingError(f"{path}: missing; was {args.run} made by `python -m training train`?")
    cases = json.loads(path.read_text())["validation"]
    if not cases:
        raise TrainingError(f"{path}: the run has no validation cases; give --cases")
    return cases


def choose_step(best_by_step: dict[float, dict], tolerance: float = STEP_TOLERANCE) -> float:
    """The largest tile step whose best score is within ``tolerance`` of the best of all."""
    top = max(b["score"] for b in best_by_step.values())
    return max(step for step, b in best_by_step.items() if b["score"] >= top - tolerance)


def write_postprocessing(weights_dir: Path, min_volume: float, min_confidence: float,
                         threshold: float | None = None, tile_step: float | None = None) -> None:
    """Update plans.json's post-processing (and tile step), signed (``save_plan``)."""
    plan = load_plan(weights_dir)
    if threshold is not None:
        plan.postprocessing.threshold = float(threshold)
    if tile_step is not None:
        plan.tile_step = float(tile_step)
    plan.postprocessing.min_volume_mm3 = float(min_volume)
    plan.postprocessing.min_confidence = float(min_confidence)
    save_plan(weights_dir, plan)


def run_thresholds(args) -> dict:
    from tqdm import tqdm

    from inference.predictor import Predictor

    weights_dir = Path(args.weights)
    wanted = validation_cases(args)
    entries = {e.case: e for e in list_dataset(args.dataset)}
    missing = [c for c in wanted if c not in entries]
    if missing:
        raise TrainingError(f"{args.dataset}: no labelled case {missing[0]}")
    plan = copy.deepcopy(load_plan(weights_dir))
    plan.postprocessing.min_volume_mm3 = 0.0
    plan.postprocessing.min_confidence = 0.0
    predictor = Predictor(weights_dir, device=args.device, plan=plan)
    steps = sorted(set(args.tile_steps or TILE_STEPS))
    quiet = args.disable_progress_bar or args.quiet
    predictions = {step: [] for step in steps}
    for case in tqdm(wanted, desc="predict", unit="case", disable=quiet):
        try:
            for step, prediction in predict_case(predictor, entries[case], steps).items():
                predictions[step].append(prediction)
        except CaseError as error:
            log.warning("%s; case left out", error)
    n_cases = len(predictions[steps[0]])
    if not n_cases:
        raise TrainingError("no validation case could be predicted")
    tables, best_by_step = {}, {}
    for step in steps:
        tables[step], best_by_step[step] = grid_search(
            predictions[step], args.decision_thresholds or DECISION_THRESHOLDS,
            args.volumes or VOLUMES_MM3, args.confidences or CONFIDENCES,
            args.workers)
    step = choose_step(best_by_step)
    best = dict(best_by_step[step], tile_step=step)
    for each, rows in tables.items():
        print(f"tile step {each:g}:")
        print(f"{'threshold':>9} {'min volume mm3':>14} {'min confidence':>14} {'DSC':>7} "
              f"{'NSD':>7} {'score':>7}")
        for r in rows:
            mark = "" if r is not best_by_step[each] else \
                "  <- chosen" if each == step else "  <- best of this step"
            print(f"{r['threshold']:>9g} {r['min_volume_mm3']:>14g} {r['min_confidence']:>14g} "
                  f"{r['dsc']:>7.4f} {r['nsd']:>7.4f} {r['score']:>7.4f}{mark}")
    per_step = ", ".join(f"{k:g}: {b['score']:.4f}" for k, b in best_by_step.items())
    print(f"{n_cases} validation cases; chosen: tile step {step:g} (best score per step: "
          f"{per_step}), threshold {best['threshold']:g}, min_volume_mm3 "
          f"{best['min_volume_mm3']:g}, min_confidence {best['min_confidence']:g} "
          f"(DSC {best['dsc']:.4f}, NSD {best['nsd']:.4f})")
    if not args.dry_run:
        write_postprocessing(weights_dir, best["min_volume_mm3"], best["min_confidence"],
                             best["threshold"], step)
        log.info("wrote the thresholds into %s", weights_dir / PLANS)
    return best
