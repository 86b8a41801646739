"""Make DICOM CT series from 3D images (test fixtures, written on the fly, never committed)."""

from __future__ import annotations

import locale
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT_UID = "1.2.826.0.1.3680043.2.1125.7"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom_series(image: sitk.Image, folder: Path, series: int = 1,
                       positions: list[float] | None = None, drop: tuple[int, ...] = (),
                       names: list[str] | None = None, modality: str = "CT",
                       shear: float = 0.0, frame_of_reference: bool = True,
                       slice_thickness: bool = True) -> list[Path]:
    """Write ``image`` (3D) as one int16 DICOM file per slice into ``folder``.

    ``positions`` (mm along the slice normal from the image's origin, one per slice)
    replaces the even stacking; ``drop`` leaves slices out; ``names`` are the file names
    (default ``IM<k>.dcm``, so name order is not position order past 9 slices); ``shear``
    moves each slice that many mm further along the image's y axis than the one before
    (a gantry tilt); ``frame_of_reference`` and ``slice_thickness`` False leave out those
    attributes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    orientation = "\\".join(f"{v:.10g}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")  # names without .dcm, as scanners write them
    writer.KeepOriginalImageUIDOn()
    # ITK's GDCM writer leaves the process in the C locale; give the tests theirs back.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        return _write_slices(image, writer, folder, series, orientation, positions, drop,
                             names, modality, shear, frame_of_reference, slice_thickness)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_slices(image, writer, folder, series, orientation, positions, drop, names,
                  modality, shear, frame_of_reference, slice_thickness) -> list[Path]:
    series_uid = f"{ROOT_UID}.{series}"
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin())
    written = []
    for k in range(image.GetDepth()):
        if k in drop:
            continue
        along = positions[k] if positions is not None else k * image.GetSpacing()[2]
        position = origin + along * direction[:, 2] + k * shear * direction[:, 1]
        plane = image[:, :, k]
        tags = {
            "0008|0016": CT_IMAGE_STORAGE, "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": modality, "0020|000d": f"{ROOT_UID}.0", "0020|000e": series_uid,
            "0020|0011": str(series), "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10g}" for v in position),
            "0020|0037": orientation, "0028|1052": "0", "0028|1053": "1",
        }
        if slice_thickness:
            tags["0018|0050"] = f"{image.GetSpacing()[2]:g}"
        if frame_of_reference:
            tags["0020|0052"] = f"{ROOT_UID}.9"
        for key, value in tags.items():
            plane.SetMetaData(key, value)
        path = folder / (names[k] if names is not None else f"IM{k}.dcm")
        writer.SetFileName(str(path))
        writer.Execute(plane)
        written.append(path)
    return written
