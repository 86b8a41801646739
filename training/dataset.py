"""A FLARE-style dataset folder: which cases it holds and reading each image with its label.

    DATASET/imagesTr/<case>_0000.nii.gz   CT in HU
    DATASET/labelsTr/<case>.nii.gz        lesion mask, values {0, 1}
    DATASET/dataset.json                  optional: per-case ``healthy`` and partial-label flags

Problems a user can cause (an image without a label, a label on another grid, label
values other than {0, 1}, an unreadable file) become a :class:`CaseError` whose message
is one line naming the file; callers skip that case with a warning. A folder with no
usable case at all is a :class:`DatasetError` and stops the command.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from inference import folders, nifti

log = logging.getLogger(__name__)

GRID_ATOL = 1e-3  # mm for spacing and origin; unitless for the direction cosines


class DatasetError(RuntimeError):
    """The dataset as a whole cannot be used (stops the command)."""


class CaseError(RuntimeError):
    """One case cannot be used; the message names the file (the case is skipped)."""


@dataclass
class CaseEntry:
    case: str
    image: Path
    label: Path | None
    info: dict = field(default_factory=dict)  # the case's dataset.json record, if any

    @property
    def partial(self) -> bool:
        """True when some lesions of this case are known to be unlabelled."""
        n, labelled = self.info.get("n_lesions"), self.info.get("n_labelled_lesions")
        if n is not None and labelled is not None:
            return labelled < n
        return bool(self.info.get("partial", False))

    @property
    def healthy(self) -> bool | None:
        return self.info.get("healthy")


def read_metadata(dataset: Path) -> tuple[dict, dict[str, dict]]:
    """dataset.json (or {}) and its per-case records keyed by case id."""
    path = dataset / "dataset.json"
    if not path.is_file():
        return {}, {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        log.warning("%s: cannot be read (%s); going on without per-case flags", path, error)
        return {}, {}
    records = {}
    for entry in meta.get("training", []) + meta.get("unlabelled", []):
        if isinstance(entry, dict) and "id" in entry:
            records[entry["id"]] = entry
    return meta, records


def list_dataset(dataset: str | Path, need_labels: bool = True) -> list[CaseEntry]:
    """Cases of ``dataset``; images without a label are skipped with a warning line."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: no such dataset folder")
    images = dataset / "imagesTr"
    try:
        found = folders.list_cases(images) if images.is_dir() else []
    except folders.InputError:
        found = []
    if not found:
        raise DatasetError(f"{dataset}: no images found as imagesTr/<case>{folders.CASE_SUFFIX}; "
                           "point -d at a FLARE-style dataset folder")
    meta, records = read_metadata(dataset)
    partial_dataset = bool(meta.get("partial_labels", False))
    entries = []
    for case, image in found:
        label = dataset / "labelsTr" / f"{case}{folders.NIFTI_SUFFIX}"
        if not label.is_file():
            if need_labels:
                log.warning("%s: no label %s; case skipped", image, label)
                continue
            label = None
        info = dict(records.get(case, {}))
        if partial_dataset and "n_lesions" not in info:
            info.setdefault("partial", True)
        entries.append(CaseEntry(case, image, label, info))
    if not entries:
        raise DatasetError(f"{dataset}: none of {len(found)} images has a label in labelsTr/")
    return entries


def read_label(path: Path, grid: nifti.Grid) -> np.ndarray:
    """The label as uint8 (z, y, x) after checking it lies on ``grid`` with values {0, 1}."""
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise CaseError(f"{path}: cannot be read as NIfTI ({reason})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{path}: expected a 3D single-channel label, got "
                        f"{image.GetDimension()}D with {image.GetNumberOfComponentsPerPixel()} "
                        "component(s)")
    diff = _grid_difference(image, grid)
    if diff:
        raise CaseError(f"{path}: label grid differs from its image ({diff}); resample the "
                        "label onto the image grid")
    array = sitk.GetArrayFromImage(image)
    values = np.unique(array)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if len(values) > 6 else "")
        raise CaseError(f"{path}: label values must be 0 and 1, found {shown}; "
                        "merge the lesion classes into 1")
    return array.astype(np.uint8)


def _grid_difference(image: sitk.Image, grid: nifti.Grid) -> str | None:
    if tuple(image.GetSize()) != tuple(grid.size):
        return f"size {image.GetSize()} vs {tuple(grid.size)}"
    for name, a, b in (("spacing", image.GetSpacing(), grid.spacing),
                       ("origin", image.GetOrigin(), grid.origin),
                       ("direction", image.GetDirection(), grid.direction)):
        if not np.allclose(a, b, atol=GRID_ATOL):
            return f"{name} {tuple(round(v, 4) for v in a)} vs {tuple(round(v, 4) for v in b)}"
    return None


def read_case(entry: CaseEntry) -> tuple[nifti.CtVolume, np.ndarray | None]:
    """Image and label of one case; CaseError (one line naming the file) if unusable."""
    try:
        volume = nifti.read_ct(entry.image)
    except nifti.InputError as error:
        raise CaseError(str(error)) from None
    label = read_label(entry.label, volume.grid) if entry.label is not None else None
    return volume, label
