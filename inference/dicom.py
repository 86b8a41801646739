"""A DICOM series folder read as one CT volume, its slices checked for a regular stack.

SimpleITK's series reader (GDCM) sorts the slices by their position along the slice
normal, not by file name, and applies each slice's rescale slope and intercept (HU). It
then places the slices at their average spacing, whatever their real positions: a series
with a slice missing would be read squeezed, without an error. So the positions are
checked here. A regular stack (every slice within a tenth of a step of the evenly spaced
grid from the first to the last) is read as it is; a gap that is a whole number of steps
(slices missing) or two slices at one position is refused; a stack that is uneven in any
other way is resampled onto an even grid (linear between neighbouring slices, as dcm2niix
does), with a warning that the mask lies on that grid. Slices stacked obliquely to their
normal (gantry tilt) are refused: ITK's geometry would place them wrongly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference import nifti
from inference.folders import InputError
from inference.itk_images import volume_from_image

log = logging.getLogger(__name__)

POSITION_TOLERANCE = 0.1  # of a step: how far a slice may sit from the even grid
STEP_TOLERANCE = 0.05  # of a step: a gap counts as a whole number of steps within this
SERIES_LISTED = 5  # other series named in the warning


@dataclass
class SeriesVolume(nifti.CtVolume):
    """A CT volume read from a DICOM series, with the files of its slices in order."""

    files: tuple[str, ...] = ()
    resampled: bool = False  # onto an even grid: the slices are no longer the files'


def read_series(folder: str | Path) -> SeriesVolume:
    """The folder's DICOM image series (the one with the most slices) as a CT volume."""
    folder = Path(folder)
    sitk = nifti.simpleitk()
    series, files = choose_series(folder)
    if len(files) < 2:
        raise InputError(f"{folder}: series {series} has one slice (a 2D image): a CT volume "
                         "needs the whole series of slices")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: series {series} cannot be read "
                         f"({nifti.itk_reason(error)})") from None
    modality = _tag(reader, 0, "0008|0060")
    if modality and modality.upper() != "CT":
        log.warning("%s: series %s is %s, not CT: the model was trained on CT in HU", folder,
                    series, modality)
    positions = _positions_along_normal(reader, image, files, folder)
    volume = volume_from_image(image, folder)
    if check_stack(positions, files, folder):
        return SeriesVolume(volume.array, volume.grid, folder, tuple(files))
    return _resample_even(volume, positions, folder, files)


def choose_series(folder: Path) -> tuple[str, list[str]]:
    """(series id, its files sorted by position): the folder's series with the most files;
    the others are named in one line."""
    sitk = nifti.simpleitk()
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        nested = any(p.is_dir() for p in folder.iterdir())
        hint = (": give the folder that holds the series' files (subfolders are not searched)"
                if nested else "")
        raise InputError(f"{folder}: no DICOM image series in this folder{hint}")
    files = {i: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), i))
             for i in ids}
    chosen = max(ids, key=lambda i: len(files[i]))
    if len(ids) > 1:
        others = [f"{i} ({len(files[i])} files)" for i in ids if i != chosen]
        more = len(others) - SERIES_LISTED
        others = ", ".join(others[:SERIES_LISTED]) + (f", and {more} more" if more > 0 else "")
        log.warning("%s: %d DICOM series; reading %s (%d files, the most); not read: %s",
                    folder, len(ids), chosen, len(files[chosen]), others)
    return chosen, files[chosen]


def _tag(reader, index: int, key: str) -> str | None:
    return reader.GetMetaData(index, key).strip() if reader.HasMetaDataKey(index, key) else None


def _positions_along_normal(reader, image, files: list[str], folder: Path) -> np.ndarray:
    """Each slice's position (mm) along the image's slice axis, from its Image Position
    (Patient); refuses slices of another orientation and stacks sheared off the normal."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    orientations, points = set(), []
    for i, name in enumerate(files):
        position = _tag(reader, i, "0020|0032")
        orientation = _tag(reader, i, "0020|0037")
        if position is None:
            raise InputError(f"{folder}: {Path(name).name} has no Image Position (Patient): "
                             "the slices cannot be placed")
        try:
            points.append([float(v) for v in position.split("\\")])
            if orientation:
                orientations.add(tuple(round(float(v), 4) for v in orientation.split("\\")))
        except ValueError:
            raise InputError(f"{folder}: {Path(name).name} has an unreadable Image Position "
                             f"or Orientation ({position!r})") from None
    if len(orientations) > 1:
        raise InputError(f"{folder}: the series mixes slices of {len(orientations)} "
                         "orientations: export each stack as its own series")
    offsets = np.array(points) - origin
    along = offsets @ direction[:, 2]
    sideways = offsets - np.outer(along, direction[:, 2])
    worst = float(np.linalg.norm(sideways, axis=1).max())
    if worst > 0.5 * min(image.GetSpacing()[:2]):
        span = max(float(along.max() - along.min()), 1e-6)
        raise InputError(f"{folder}: the slices are stacked at "
                         f"{np.degrees(np.arctan2(worst, span)):.1f} degrees to their normal "
                         "(gantry tilt): resample the series onto an orthogonal grid first")
    return along


def check_stack(positions: np.ndarray, files: list[str], folder: Path) -> bool:
    """True for a regular stack; False for an uneven one that can be resampled; InputError
    for slices missing or two slices at one position."""
    steps = np.diff(positions)
    step = float(np.median(steps))
    even = positions[0] + np.arange(len(positions)) * (positions[-1] - positions[0]) / (
        len(positions) - 1)
    if step > 0 and np.abs(positions - even).max() <= POSITION_TOLERANCE * step:
        return True
    name = [Path(f).name for f in files]
    if step <= 0 or steps.min() <= STEP_TOLERANCE * step:
        i = int(np.argmin(steps))
        raise InputError(f"{folder}: {name[i]} and {name[i + 1]} lie at the same position "
                         f"({positions[i]:.2f} mm): the folder mixes two acquisitions; "
                         "export each as its own series")
    multiples = np.round(steps / step)
    if np.all(np.abs(steps - multiples * step) <= STEP_TOLERANCE * step * multiples):
        gaps = np.flatnonzero(multiples > 1)
        i = int(gaps[0])
        missing = int((multiples - 1).sum())
        raise InputError(f"{folder}: {missing} slice(s) missing: a gap of {steps[i]:.2f} mm "
                         f"between {name[i]} and {name[i + 1]} where the slices are "
                         f"{step:.2f} mm apart; export the whole series")
    return False


def _resample_even(volume: nifti.CtVolume, positions: np.ndarray, folder: Path,
                   files: list[str]) -> SeriesVolume:
    """The volume on an even grid at the series' median step, linear between slices."""
    steps = np.diff(positions)
    step = float(np.median(steps))
    span = float(positions[-1] - positions[0])
    count = int(round(span / step)) + 1
    step = span / (count - 1)
    targets = np.arange(count) * step + positions[0]
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = ((targets - positions[lower]) / (positions[upper] - positions[lower]))
    source = volume.array.astype(np.float32, copy=False)
    array = np.empty((count, *source.shape[1:]), np.float32)
    for k in range(count):  # a slice at a time: no second full-size temporary
        w = np.float32(np.clip(weight[k], 0.0, 1.0))
        np.multiply(source[lower[k]], 1 - w, out=array[k])
        array[k] += w * source[upper[k]]
    log.warning("%s: uneven slice spacing (%.2f to %.2f mm apart): resampled onto %d slices "
                "%.3f mm apart; the mask lies on that even grid", folder, steps.min(),
                steps.max(), count, step)
    grid = volume.grid  # its origin is the first slice's position: ``positions[0]`` is 0
    even = nifti.Grid((*grid.size[:2], count), (*grid.spacing[:2], step), grid.origin,
                      grid.direction)
    return SeriesVolume(array, even, folder, tuple(files), resampled=True)
