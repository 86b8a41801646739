"""A SimpleITK image and the container's ``CtVolume``, each made from the other.

What every reader of a format ITK opens shares (NRRD and MetaImage files, a DICOM series,
an image handed to the Python API) and what the writers of those formats start from.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inference import nifti
from inference.folders import InputError

# Voxel types kept as they are (as the NIfTI reader keeps them); wider ones become float32.
_KEPT_PIXELS = ("int8", "uint8", "int16", "uint16", "float32")


def volume_from_image(image, path: str | os.PathLike | None = None) -> nifti.CtVolume:
    """A ``CtVolume`` from a SimpleITK image: a 3D scalar image in HU (a 4D one with a
    single volume is taken as 3D); InputError for anything else."""
    sitk = nifti.simpleitk()
    where = path if path is not None else "the image"
    size = image.GetSize()
    if image.GetDimension() == 4 and size[3] == 1:
        image = sitk.Extract(image, (*size[:3], 0), (0, 0, 0, 0))
        size = image.GetSize()
    if image.GetDimension() != 3:
        what = "only one 3D CT volume per image is supported" if image.GetDimension() > 3 else \
            "a 3D CT volume is expected"
        raise InputError(f"{where}: a {image.GetDimension()}D image of size "
                         f"{'x'.join(map(str, size))}: {what}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{where}: {image.GetNumberOfComponentsPerPixel()} values per voxel "
                         "(a colour or vector image): a CT holds one grey value per voxel")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.name not in _KEPT_PIXELS:
        array = array.astype(np.float32)
    spacing = tuple(float(s) for s in image.GetSpacing())
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{where}: voxel spacing {spacing} is not positive")
    grid = nifti.Grid(tuple(int(n) for n in size), spacing,
                      tuple(float(v) for v in image.GetOrigin()),
                      tuple(float(v) for v in image.GetDirection()))
    checked = nifti.check_intensities(array, Path(str(where)))
    return nifti.CtVolume(checked, grid, Path(path) if path is not None else None)


def grid_image(array_zyx: np.ndarray, grid: nifti.Grid):
    """A SimpleITK image of ``array_zyx`` placed on ``grid``."""
    sitk = nifti.simpleitk()
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_zyx))
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    return image
