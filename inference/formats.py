"""Scans as people hold them: a NIfTI of any name, NRRD, MetaImage, a DICOM series folder.

Every reader returns the container's ``CtVolume`` (HU, z, y, x, and its grid), so the
same preprocessing, network and restore run on each. NIfTI goes through the container's
own checked reader (``inference.nifti``); the other formats through SimpleITK, with the
same intensity checks. Masks are written on the input's grid: a ``.nii.gz`` name through
the container's writer (the input's NIfTI header copied when there is one), any other
name in the format its suffix names. Not imported by the challenge's command.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from inference import nifti
from inference.folders import NIFTI_SUFFIX, InputError, atomic_temporary

NIFTI_SUFFIXES = (NIFTI_SUFFIX, ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Voxel types kept as they are (as the NIfTI reader keeps them); wider ones become float32.
_KEPT_PIXELS = ("int8", "uint8", "int16", "uint16", "float32")


def scan_suffix(path: str | os.PathLike) -> str | None:
    """The image suffix a file's name ends with (``.nii.gz``, ``.nrrd``, ...), or None."""
    name = Path(path).name.lower()
    return next((s for s in SCAN_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def scan_name(path: str | os.PathLike) -> str:
    """A scan's name for its outputs: the file name without its suffix and without the
    challenge's ``_0000`` channel tag (so ``<case>_0000.nii.gz`` gives ``<case>``)."""
    path = Path(path)
    suffix = scan_suffix(path)
    name = path.name[: -len(suffix)] if suffix else path.name
    return name[: -len("_0000")] if name.endswith("_0000") and len(name) > 5 else name


def read_scan(path: str | os.PathLike) -> nifti.CtVolume:
    """One CT scan from a file of a supported format or a DICOM series folder."""
    path = Path(path)
    if path.is_dir():
        from inference.dicom import read_series

        return read_series(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = scan_suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return nifti.read_ct(path)
    if suffix in ITK_SUFFIXES:
        return _read_itk_file(path)
    raise InputError(f"{path}: not a scan this reads (NIfTI .nii/.nii.gz, NRRD .nrrd/.nhdr, "
                     "MetaImage .mha/.mhd, or a folder holding a DICOM series)")


def _read_itk_file(path: Path) -> nifti.CtVolume:
    sitk = nifti.simpleitk()
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read ({nifti.itk_reason(error)})") from None
    return volume_from_image(image, path)


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


def write_mask(mask_zyx: np.ndarray, grid: nifti.Grid, path: str | os.PathLike) -> Path:
    """Write a {0,1} uint8 mask on ``grid`` in the format ``path``'s suffix names, atomically.

    ``.nii.gz`` goes through the container's writer (the input's NIfTI header copied when
    the grid came from one); ``.nii``, ``.nrrd``, ``.mha`` through SimpleITK.
    """
    path = Path(path)
    if path.name.endswith(NIFTI_SUFFIX):
        return nifti.write_mask(mask_zyx, grid, path)
    if not path.name.endswith((".nii", ".nrrd", ".mha")):
        raise ValueError(f"mask name must end with .nii.gz, .nii, .nrrd or .mha: {path}")
    image = grid_image(np.asarray(mask_zyx, np.uint8), grid)
    with atomic_temporary(path, keep_suffix=True) as temporary:
        nifti.simpleitk().WriteImage(image, str(temporary), useCompression=True)
    return path

