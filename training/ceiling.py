"""The best DSC/NSD any network could score under a plan: its resolution ceiling.

    python -m training ceiling -d DATASET -p PLANS.json [--target-spacing X Y Z ...]
                               [--min-volume MM3 ...] [--threshold P ...] [--csv FILE]

A perfect network outputs, for each voxel at the plan's spacing, the fraction of it that
is lesion. This stage builds that output from each case's label (box averaging over the
downsampling factor, then the same linear resampling the container uses for the image),
and sends it through the container's own post-processing and restore
(``inference.pipeline.mask_on_input``): components under the minimum volume (and, with
``--min-confidence``, under a mean fraction) dropped, linear upsampling onto the input
grid, threshold. The score against the label is what the plan's spacing, minimum volume
and decision threshold leave attainable to a network that knows each voxel's lesion
fraction. Lesions of a few voxels at the plan's spacing lose much of their DSC in the
round trip, the more so at a threshold of 0.5 (their coarse voxels are only partly
lesion); a minimum volume larger than a case's only lesion scores that case 0. A network
could beat this figure only by sharper outputs than the lesion fraction, so read it as the
attainable level, not a proof of impossibility.

Use it to choose the target spacing and to read a training result: a network at 0.6
under a ceiling of 0.8 is a different problem from one at 0.6 under 0.65.
"""

from __future__ import annotations

import csv
import dataclasses
import logging

import numpy as np

from evaluation.metrics import score_case
from inference.pipeline import mask_on_input
from inference.plans import Plan
from inference.preprocess import _resize_in_slabs, network_shape, preprocess, smoothing_widths
from training.dataset import CaseError, DatasetError, list_dataset, read_case
from training.reporting import mean_scores

log = logging.getLogger(__name__)


def ideal_probability(label: np.ndarray, spacing_zyx, target_zyx) -> np.ndarray:
    """Lesion fraction of each voxel at ``target_zyx``: box average, then linear resampling."""
    shape = network_shape(label.shape, spacing_zyx, target_zyx)
    widths = smoothing_widths(spacing_zyx, target_zyx)
    fraction = np.ascontiguousarray(label, dtype=np.float32)
    return _resize_in_slabs(fraction, shape, widths, np.ascontiguousarray)


def ceiling_mask(volume, label: np.ndarray, plan: Plan) -> np.ndarray:
    """The mask a perfect network would give for ``volume`` after the container's own steps."""
    prepared = preprocess(volume.array, volume.spacing, volume.direction, plan)
    if prepared.box is None:
        return np.zeros(label.shape, np.uint8)
    oriented = prepared.reorientation.apply(label)[prepared.box]
    spacing = prepared.reorientation.spacing_zyx(volume.spacing)
    probability = ideal_probability(oriented, spacing, plan.target_spacing[::-1])
    return mask_on_input(probability, prepared, plan.postprocessing)


def setting_name(spacing, min_volume, threshold) -> str:
    return f"{'x'.join(f'{v:g}' for v in spacing)} mm, >= {min_volume:g} mm3, p > {threshold:g}"


def _variants(plan: Plan, spacings, min_volumes, thresholds,
              min_confidence: float = 0.0) -> list[tuple[str, Plan]]:
    out = []
    # The ideal output is each voxel's lesion fraction, not a network's confidence: a small
    # lesion's voxels are all partly lesion, so the plan's confidence cut would drop it.
    post = dataclasses.replace(plan.postprocessing, min_confidence=float(min_confidence))
    for spacing in spacings or [plan.target_spacing]:
        for volume in min_volumes or [post.min_volume_mm3]:
            for threshold in thresholds or [post.threshold]:
                variant = dataclasses.replace(
                    plan, target_spacing=tuple(map(float, spacing)),
                    postprocessing=dataclasses.replace(post, min_volume_mm3=float(volume),
                                                       threshold=float(threshold)))
                variant.validate("ceiling setting")
                out.append((setting_name(spacing, volume, threshold), variant))
    return out


def run_ceiling(dataset, plans, spacings=None, min_volumes=None, thresholds=None,
                csv_path=None, min_confidence: float = 0.0) -> list[dict]:
    """Score the ideal network on every labelled case for each setting."""
    plan = Plan.load(plans)
    variants = _variants(plan, spacings, min_volumes, thresholds, min_confidence)
    rows, failed = [], 0
    for entry in list_dataset(dataset):
        try:
            volume, label = read_case(entry)
        except CaseError as error:
            log.warning("%s; case skipped", error)
            failed += 1
            continue
        spacing_zyx = tuple(volume.spacing[::-1])
        lesion_ml = float(label.sum()) * float(np.prod(volume.spacing)) / 1000
        for name, variant in variants:
            dsc, nsd = score_case(ceiling_mask(volume, label, variant), label, spacing_zyx)
            rows.append({"case": entry.case, "setting": name, "lesion_ml": round(lesion_ml, 3),
                         "dsc": round(dsc, 4), "nsd": round(nsd, 4)})
    if not rows:
        raise DatasetError(f"{dataset}: no case could be read")
    for name, _ in variants:
        summary = summarise([r for r in rows if r["setting"] == name])
        log.info("%s: lesion cases DSC %.3f NSD %.3f (%d); all cases DSC %.3f NSD %.3f (%d)",
                 name, summary["lesion_dsc"], summary["lesion_nsd"], summary["n_lesion"],
                 summary["all_dsc"], summary["all_nsd"], summary["n_all"])
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if failed:
        log.warning("%d case(s) could not be read", failed)
    return rows


def summarise(rows: list[dict]) -> dict:
    """Mean DSC/NSD over lesion-bearing cases and over all cases."""
    lesion = [r for r in rows if r["lesion_ml"] > 0]
    lesion_means, all_means = mean_scores(lesion), mean_scores(rows)
    return {"n_lesion": len(lesion), "lesion_dsc": lesion_means["dsc"],
            "lesion_nsd": lesion_means["nsd"], "n_all": len(rows),
            "all_dsc": all_means["dsc"], "all_nsd": all_means["nsd"]}
