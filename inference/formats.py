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

from inference import nifti, nifti_writer
from inference.folders import NIFTI_SUFFIX, InputError, atomic_temporary
from inference.itk_images import grid_image, volume_from_image

NIFTI_SUFFIXES = (NIFTI_SUFFIX, ".nii")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
SCAN_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES


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


def write_mask(mask_zyx: np.ndarray, grid: nifti.Grid, path: str | os.PathLike) -> Path:
    """Write a {0,1} uint8 mask on ``grid`` in the format ``path``'s suffix names, atomically.

    ``.nii.gz`` goes through the container's writer (the input's NIfTI header copied when
    the grid came from one); ``.nii``, ``.nrrd``, ``.mha`` through SimpleITK.
    """
    path = Path(path)
    if path.name.endswith(NIFTI_SUFFIX):
        return nifti_writer.write_mask(mask_zyx, grid, path)
    if not path.name.endswith((".nii", ".nrrd", ".mha")):
        raise ValueError(f"mask name must end with .nii.gz, .nii, .nrrd or .mha: {path}")
    image = grid_image(np.asarray(mask_zyx, np.uint8), grid)
    with atomic_temporary(path, keep_suffix=True) as temporary:
        nifti.simpleitk().WriteImage(image, str(temporary), useCompression=True)
    return path

