"""Dataset fingerprint -> plan (``python -m training plan``).

The fingerprint (saved as ``fingerprint.json`` next to the plan) records per case the
spacing and shape, the lesion sizes, and an intensity sample. The sample is the
*lesion-context foreground*: labelled lesion voxels plus, in equal number, voxels of a
shell 3-15 mm around each lesion (the host organ and its neighbours) whose HU lies
within 200 HU of the case's lesion range (1st-99th percentile), which keeps gas, lung
and dense bone next to a lesion out of the sample. nnU-Net samples
the labelled foreground alone; for lesions that would clip away the very organs a
lesion must be told apart from (a hypodense liver lesion sits 40-80 HU below the
liver), so the shell puts the host organs inside the clip range too. Lesion-free
cases contribute spacing and shape only.

Plan: target spacing (default: in-plane twice the median, slices max(median, 3 mm);
``--target-spacing`` for e.g. the FLARE24 winner's 3x2x2 mm), 2.5D patch
(``DEFAULT_PATCH_SIZE`` in plane by default), batch size, CT normalisation (clip to the sample's
0.5/99.5 percentiles, z-score with its mean and std), network preset, post-processing
defaults (refined later by ``python -m training thresholds``).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from inference.folders import write_text_atomically
from inference.network_config import (
    DEFAULT_PATCH_SIZE,
    DEFAULT_PRESET,
    ModelConfigError,
    get_config,
    with_sam,
)
from inference.plans import DEFAULT_BATCH_SIZE, Normalization, Plan, PostProcessing
from training.dataset import CaseError, DatasetError, list_dataset, read_case

log = logging.getLogger(__name__)

SAMPLES_PER_CASE = 20000
SHELL_MM = (3.0, 15.0)
CONTEXT_HU = 200.0
FINGERPRINT = "fingerprint.json"


def case_fingerprint(entry, rng: np.random.Generator) -> dict:
    """Spacing, shape, lesion sizes and a lesion-context intensity sample of one case."""
    volume, label = read_case(entry)
    spacing_zyx = volume.spacing_zyx
    record = {"case": entry.case, "spacing": list(volume.spacing),
              "shape": list(volume.grid.size), "partial": entry.partial,
              "lesion_volumes_mm3": [], "lesion_sample": [], "context_sample": []}
    if label is None or not label.any():
        return record
    voxel_mm3 = float(np.prod(spacing_zyx))
    components, n = cc3d.connected_components(label, connectivity=26, return_N=True)
    counts = np.bincount(components.reshape(-1), minlength=n + 1)[1:]
    record["lesion_volumes_mm3"] = [float(c * voxel_mm3) for c in counts]
    lesion = label.astype(bool)
    record["lesion_sample"] = _sample(volume.array[lesion], rng)
    values = volume.array[lesion]
    context = volume.array[_shell(lesion, spacing_zyx)]
    lo, hi = np.percentile(values, (1, 99))
    # host tissue only: gas, lung and dense bone next to a lesion are not what it is told
    # apart from, and would stretch the clip range over HU the lesion never takes
    context = context[(context >= lo - CONTEXT_HU) & (context <= hi + CONTEXT_HU)]
    record["context_sample"] = _sample(context, rng)
    return record


def _sample(values: np.ndarray, rng) -> list[float]:
    if values.size > SAMPLES_PER_CASE:
        values = rng.choice(values, SAMPLES_PER_CASE, replace=False)
    return [round(float(v), 1) for v in values]


def _shell(lesion: np.ndarray, spacing_zyx) -> np.ndarray:
    """Voxels between SHELL_MM[0] and SHELL_MM[1] from the lesion, inside its bounding box."""
    pad = [int(math.ceil(SHELL_MM[1] / s)) + 1 for s in spacing_zyx]
    idx = np.nonzero(lesion)
    box = tuple(slice(max(int(i.min()) - p, 0), int(i.max()) + p + 1) for i, p in zip(idx, pad))
    distance = ndimage.distance_transform_edt(~lesion[box], sampling=spacing_zyx)
    shell = np.zeros_like(lesion)
    shell[box] = (distance >= SHELL_MM[0]) & (distance <= SHELL_MM[1])
    return shell


def fingerprint(dataset: str | Path, seed: int = 0, progress: bool = True) -> dict:
    """Fingerprint of every usable case; unusable ones are skipped with a warning line."""
    entries = list_dataset(dataset)
    rng = np.random.default_rng(seed)
    cases = []
    for entry in tqdm(entries, desc="fingerprint", unit="case", disable=not progress):
        try:
            cases.append(case_fingerprint(entry, rng))
        except CaseError as error:
            log.warning("%s; case skipped", error)
    if not cases:
        raise DatasetError(f"{dataset}: no usable case (see the warnings above)")
    return summarise(cases)


def summarise(cases: list[dict]) -> dict:
    spacings = np.array([c["spacing"] for c in cases], float)
    shapes = np.array([c["shape"] for c in cases], float)
    lesion = np.array([v for c in cases for v in c["lesion_sample"]], np.float64)
    context = np.array([v for c in cases for v in c["context_sample"]], np.float64)
    volumes = np.array([v for c in cases for v in c["lesion_volumes_mm3"]], np.float64)
    sample = np.concatenate([lesion, context])
    summary = {
        "n_cases": len(cases),
        "n_lesion_free": int(sum(not c["lesion_volumes_mm3"] for c in cases)),
        "n_partial": int(sum(bool(c["partial"]) for c in cases)),
        "median_spacing": np.median(spacings, axis=0).tolist(),
        "median_shape": np.median(shapes, axis=0).tolist(),
        "min_spacing": spacings.min(axis=0).tolist(),
        "max_spacing": spacings.max(axis=0).tolist(),
        "intensity_sample": "labelled lesion voxels + voxels 3-15 mm around them within "
                            "200 HU of the lesion range",
    }
    if sample.size:
        summary["foreground"] = {
            "n": int(sample.size),
            "mean": float(sample.mean()), "std": float(sample.std()),
            "p00_5": float(np.percentile(sample, 0.5)),
            "p99_5": float(np.percentile(sample, 99.5)),
            "lesion_mean": float(lesion.mean()) if lesion.size else None,
            "context_mean": float(context.mean()) if context.size else None,
        }
    if volumes.size:
        summary["lesion_volumes_mm3"] = {
            "n": int(volumes.size), "min": float(volumes.min()),
            "p05": float(np.percentile(volumes, 5)), "median": float(np.median(volumes)),
            "max": float(volumes.max()),
            "median_diameter_mm": float((6 * np.median(volumes) / math.pi) ** (1 / 3)),
        }
    summary["cases"] = [{k: v for k, v in c.items() if not k.endswith("_sample")} for c in cases]
    return summary


def make_plan(fp: dict, target_spacing=None, preset: str = DEFAULT_PRESET,
              patch=DEFAULT_PATCH_SIZE, batch_size: int = DEFAULT_BATCH_SIZE,
              context_slices: int = 3, smoothing: bool = False,
              sam: str | None = None, sam_checkpoint=None,
              sam_options: dict | None = None, checkpoint_checked: bool = False) -> Plan:
    """The plan from a fingerprint (see the module docstring for each default).

    ``sam_options``: NetworkConfig fields of the SAM branch's input (``sam_input``,
    ``sam_resize``, ``sam_normalization``) over the kind's defaults; None leaves one as is.
    ``checkpoint_checked``: the caller has already loaded ``sam_checkpoint`` into this
    network (``run_plan`` does, before reading the dataset), so it is not loaded again.
    """
    if target_spacing is None:
        sx, sy, sz = fp["median_spacing"]
        inplane = round(2 * (sx + sy) / 2, 2)
        target_spacing = (inplane, inplane, round(max(sz, 3.0), 2))
    fg = fp.get("foreground")
    if fg is None:
        log.warning("no labelled lesion in the dataset; using the default CT normalisation")
        norm = Normalization()
    else:
        norm = Normalization(clip_low=round(fg["p00_5"], 1), clip_high=round(fg["p99_5"], 1),
                             mean=round(fg["mean"], 2), std=round(max(fg["std"], 1.0), 2))
    config = _network_config(preset, patch, context_slices, sam, sam_options, norm)
    checkpoint = _checked_sam_checkpoint(config, sam_checkpoint, load=not checkpoint_checked)
    post = initial_postprocessing(fp)
    return Plan(target_spacing=tuple(float(v) for v in target_spacing),
                patch_size=tuple(config.patch_size), context_slices=context_slices,
                preset=preset, batch_size=batch_size, normalization=norm,
                postprocessing=post, smoothing=smoothing, network=config,
                sam_checkpoint=checkpoint).validate("plan")


def initial_postprocessing(fp: dict) -> PostProcessing:
    """The plan's post-processing before ``training thresholds`` chooses it on validation
    cases: ``PostProcessing``'s defaults, with the minimum component volume lowered to half
    the dataset's 5th-percentile lesion volume where that is smaller, so that it never drops
    what a real small lesion of the dataset looks like."""
    post = PostProcessing()
    volumes = fp.get("lesion_volumes_mm3")
    if volumes:
        post.min_volume_mm3 = round(float(min(post.min_volume_mm3, 0.5 * volumes["p05"])), 1)
    return post


def _network_config(preset, patch, context_slices, sam, sam_options, norm: Normalization):
    """The preset's network at this patch and context, with the SAM kind and options."""
    config = get_config(preset, patch_size=tuple(patch), in_channels=context_slices)
    if sam is not None:
        config = with_sam(config, sam)
    return _with_sam_options(config, sam_options or {}, norm)


def _with_sam_options(config, options: dict, norm: Normalization):
    """``config`` with the SAM input options given; "sam" normalisation maps the plan's
    CT window (clip range, in the network's z-scored units) onto SAM's 0..255 pixels."""
    options = {k: v for k, v in options.items() if v is not None}
    if options and not config.sam:
        raise ModelConfigError(f"--{next(iter(options)).replace('_', '-')} needs a SAM branch "
                               "(not --sam none)")
    if options.get("sam_normalization", config.sam_normalization) == "sam":
        options["sam_window"] = (round((norm.clip_low - norm.mean) / norm.std, 4),
                                 round((norm.clip_high - norm.mean) / norm.std, 4))
    config = replace(config, **options)
    config.validate()
    return config


def _checked_sam_checkpoint(config, path, load: bool = True) -> str | None:
    """The checkpoint's absolute path once it is shown (``load``) to fit the network's SAM
    encoder."""
    if config.sam_frozen and path is None:
        raise ModelConfigError(f"--sam {config.sam_kind} is a pretrained, frozen encoder: "
                               "give its weights with --sam-checkpoint FILE")
    if path is None:
        return None
    if not config.sam:
        raise ModelConfigError("--sam-checkpoint needs a SAM branch (not --sam none)")
    if load:
        from inference.model import NnSam
        from inference.sam_encoders import load_sam_checkpoint

        load_sam_checkpoint(NnSam(config), path)  # one line naming the first misfit
    return str(Path(path).resolve())


def run_plan(dataset, output, target_spacing=None, preset=DEFAULT_PRESET,
             patch=DEFAULT_PATCH_SIZE, batch_size=DEFAULT_BATCH_SIZE, progress=True,
             smoothing=False, sam=None, sam_checkpoint=None,
             sam_options=None) -> Plan:
    # a checkpoint that does not fit is refused before the dataset is read (the CT window,
    # which only the dataset gives, does not change the encoder)
    _checked_sam_checkpoint(_network_config(preset, patch, 3, sam, sam_options,
                                            Normalization()), sam_checkpoint)
    fp = fingerprint(dataset, progress=progress)
    plan = make_plan(fp, target_spacing, preset, patch, batch_size, smoothing=smoothing,
                     sam=sam, sam_checkpoint=sam_checkpoint, sam_options=sam_options,
                     checkpoint_checked=True)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(output.parent / FINGERPRINT, json.dumps(fp, indent=1) + "\n")
    plan.save(output)
    n = plan.normalization
    log.info("%d cases (%d lesion-free, %d partial); median spacing %s mm",
             fp["n_cases"], fp["n_lesion_free"], fp["n_partial"],
             "x".join(f"{v:.2f}" for v in fp["median_spacing"]))
    log.info("plan: spacing %s mm, patch %dx%dx%d, preset %s, batch %d, clip [%.0f, %.0f] HU, "
             "mean %.1f, std %.1f -> %s", "x".join(f"{v:g}" for v in plan.target_spacing),
             plan.context_slices, *plan.patch_size, plan.preset, plan.batch_size, n.clip_low,
             n.clip_high, n.mean, n.std, output)
    return plan
