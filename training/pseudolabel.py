"""Pseudo-labels for unlabelled scans (``python -m training pseudolabel``).

Each scan is predicted with the inference ``Predictor`` (the container's code, its
plan's post-processing included) keeping the probability. Of the predicted lesions only
the confident ones stay: connected components whose mean probability reaches
``--min-confidence``. A scan with no confident lesion becomes a lesion-free (healthy)
example only if the network saw nothing there at all (max probability under
``--healthy-max-probability``); otherwise it is dropped, since an uncertain scan taught
as healthy would teach the network to miss lesions.

The output is a dataset folder (imagesTr, labelsTr, dataset.json) for another round
of ``plan``/``preprocess``/``train``. Every kept scan with a lesion is flagged
``partial`` in dataset.json: a pseudo-label may miss lesions, so the default
``--partial-mode ignore`` does not punish the network for finding more.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from inference import folders, nifti, nifti_writer
from inference.postprocess import remove_components

log = logging.getLogger(__name__)


def select(mask, probability, spacing_zyx, min_confidence: float,
           healthy_max_probability: float) -> tuple[str, np.ndarray | None]:
    """('lesion', label) | ('healthy', zeros) | ('dropped', None) for one predicted scan."""
    kept = remove_components(mask, spacing_zyx, 0.0, min_confidence, probability) \
        if mask.any() else np.zeros(mask.shape, np.uint8)
    if kept.any():
        return "lesion", kept
    if float(probability.max()) < healthy_max_probability:
        return "healthy", np.zeros(mask.shape, np.uint8)
    return "dropped", None


def run_pseudolabel(args) -> dict:
    from tqdm import tqdm

    from inference.predictor import Predictor

    cases = folders.list_cases(args.input)
    out = Path(args.output)
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    predictor = Predictor(args.weights, device=args.device)
    records, counts = [], {"lesion": 0, "healthy": 0, "dropped": 0, "unreadable": 0}
    for case, path in tqdm(cases, desc="pseudolabel", unit="case",
                           disable=args.disable_progress_bar or args.quiet):
        try:
            volume = nifti.read_ct(path)
        except nifti.InputError as error:
            log.warning("%s; case skipped", error)
            counts["unreadable"] += 1
            continue
        result = predictor.predict(volume, probabilities=True)
        kind, label = select(result.mask, result.probability, volume.spacing_zyx,
                             args.min_confidence, args.healthy_max_probability)
        counts[kind] += 1
        if label is None:
            log.info("%s: no confident lesion but max probability %.2f; dropped", case,
                     float(result.probability.max()))
            continue
        shutil.copyfile(path, out / "imagesTr" / path.name)
        nifti_writer.write_mask(label, volume, out / "labelsTr" / f"{case}.nii.gz")
        records.append({"id": case, "image": f"imagesTr/{path.name}",
                        "label": f"labelsTr/{case}.nii.gz", "pseudo_label": True,
                        "healthy": kind == "healthy", "partial": kind == "lesion",
                        "max_probability": float(result.probability.max())})
    meta = {"name": "pseudo-labels", "description": f"python -m training pseudolabel "
            f"(min confidence {args.min_confidence}) from {Path(args.input).name}",
            "labels": {"background": 0, "lesion": 1}, "file_ending": ".nii.gz",
            "numTraining": len(records), "training": records, "counts": counts}
    folders.write_text_atomically(out / "dataset.json", json.dumps(meta, indent=1) + "\n")
    print(f"{counts['lesion']} with confident lesions, {counts['healthy']} kept as healthy, "
          f"{counts['dropped']} dropped, {counts['unreadable']} unreadable -> {out}")
    return counts
