"""Dataset -> training cache (``python -m training preprocess``).

Each image goes through ``inference.preprocess.preprocess``, the container's own code,
so training sees exactly what inference will. The label follows the same geometry:
the same reorientation and body crop, then linear resampling of the label as float and
a 0.5 threshold (the label's edge lands where the image's does).

Per case in CACHE:
    <case>.npy       normalised image (z, y, x) at network resolution, float16
    <case>_seg.npy   label, uint8 {0,1}, same shape
    <case>.json      shape, network spacing, lesion voxel coordinates (a sample, for
                     foreground oversampling), partial/healthy flags; written last, so a
                     case with its json is complete (files are renamed into place).
A rerun skips cases whose json exists and was made with the same plan.
"""

from __future__ import annotations

import json
import logging
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from inference.folders import atomic_temporary, write_text_atomically
from inference.plans import Plan
from inference.preprocess import preprocess
from inference.resample import resize_linear
from training.dataset import CaseError, DatasetError, list_dataset, read_case

log = logging.getLogger(__name__)

MAX_LESION_COORDS = 5000
IMAGE_DTYPE = np.float16


def paths(cache: Path, case: str) -> tuple[Path, Path, Path]:
    return cache / f"{case}.npy", cache / f"{case}_seg.npy", cache / f"{case}.json"


def prepare_case(volume, label, plan: Plan):
    """(image, label, network spacing zyx) at network resolution, or None when no body."""
    prepared = preprocess(volume.array, volume.spacing, volume.direction, plan)
    if prepared.box is None:
        return None
    image = np.asarray(prepared.volume, np.float32)
    if label is None:
        seg = np.zeros(image.shape, np.uint8)
    else:
        oriented = prepared.reorientation.apply(label)[prepared.box].astype(np.float32)
        seg = (resize_linear(oriented, image.shape) > 0.5).astype(np.uint8)
    return image, seg, tuple(float(s) for s in prepared.spacing_zyx)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_temporary(path) as temporary, open(temporary, "wb") as f:
        np.save(f, array)


def _save_json(path: Path, data: dict) -> None:
    write_text_atomically(path, json.dumps(data, indent=1) + "\n")


def is_done(cache: Path, case: str, plan_dict: dict) -> bool:
    image, seg, meta = paths(cache, case)
    if not (meta.is_file() and image.is_file() and seg.is_file()):
        return False
    try:
        return json.loads(meta.read_text()).get("plan") == plan_dict
    except (OSError, json.JSONDecodeError):
        return False


def process_case(args) -> tuple[str, str | None]:
    """Worker: one case into the cache; returns (case, warning or None)."""
    entry, plan_dict, cache, seed = args
    plan = Plan.from_dict(plan_dict)
    try:
        volume, label = read_case(entry)
    except CaseError as error:
        return entry.case, f"{error}; case skipped"
    out = prepare_case(volume, label, plan)
    if out is None:
        return entry.case, f"{entry.image}: no voxel above {plan.body_threshold_hu} HU (no " \
                           "body); case skipped"
    image, seg, spacing = out
    coords = np.argwhere(seg)
    if len(coords) > MAX_LESION_COORDS:
        rng = np.random.default_rng(seed)
        coords = coords[np.sort(rng.choice(len(coords), MAX_LESION_COORDS, replace=False))]
    image_path, seg_path, meta_path = paths(cache, entry.case)
    _save_npy(image_path, image.astype(IMAGE_DTYPE))
    _save_npy(seg_path, seg)
    _save_json(meta_path, {
        "case": entry.case, "image": str(entry.image.name), "shape": list(image.shape),
        "spacing_zyx": list(spacing), "source_spacing_xyz": list(volume.spacing),
        "n_lesion_voxels": int(seg.sum()), "lesion_slices": np.flatnonzero(
            seg.any(axis=(1, 2))).tolist(),
        "lesion_coords": coords.tolist(), "partial": entry.partial,
        "healthy": entry.healthy if entry.healthy is not None else not seg.any(),
        "plan": plan_dict,
    })
    return entry.case, None


def run_preprocess(dataset, plan_path, cache, workers: int = 1, progress: bool = True) -> list[str]:
    """Fill ``cache``; returns the case ids now in it."""
    plan = Plan.load(plan_path)
    plan_dict = json.loads(json.dumps(plan.to_dict()))  # tuples -> lists, as stored
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    entries = list_dataset(dataset)
    todo = [e for e in entries if not is_done(cache, e.case, plan_dict)]
    if len(todo) < len(entries):
        log.info("resuming: %d of %d cases already in %s", len(entries) - len(todo),
                 len(entries), cache)
    jobs = [(e, plan_dict, cache, i) for i, e in enumerate(todo)]
    bar = tqdm(total=len(jobs), desc="preprocess", unit="case", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            for case, warning in pool.imap_unordered(process_case, jobs):
                _report(case, warning, bar)
    else:
        for job in jobs:
            _report(*process_case(job), bar)
    bar.close()
    done = [e.case for e in entries if is_done(cache, e.case, plan_dict)]
    if not done:
        raise DatasetError(f"{dataset}: no case could be preprocessed (see the warnings above)")
    _save_json(cache / "plans.json", plan_dict)
    log.info("%d cases in %s", len(done), cache)
    return done


def _report(case, warning, bar) -> None:
    if warning:
        log.warning("%s", warning)
    bar.update(1)


def load_case(cache: Path, case: str, mmap: bool = True):
    """(image, label, metadata) of a cached case; arrays memory-mapped by default."""
    image_path, seg_path, meta_path = paths(Path(cache), case)
    mode = "r" if mmap else None
    return (np.load(image_path, mmap_mode=mode), np.load(seg_path, mmap_mode=mode),
            json.loads(meta_path.read_text()))


def cached_cases(cache: Path) -> list[str]:
    """Case ids with a complete entry in ``cache`` (sorted)."""
    cache = Path(cache)
    if not cache.is_dir():
        raise DatasetError(f"{cache}: no such cache folder; run `python -m training preprocess`")
    cases = sorted(p.stem for p in cache.glob("*.json")
                   if not p.name.startswith(".") and p.name != "plans.json"
                   and (cache / f"{p.stem}.npy").is_file())
    if not cases:
        raise DatasetError(f"{cache}: no preprocessed case; run `python -m training preprocess`")
    return cases
