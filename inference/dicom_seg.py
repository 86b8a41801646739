"""The mask as a DICOM Segmentation object (``--dicom-seg``) that refers to the slices of
the series it was made from, so it can go back to a PACS or a DICOM viewer beside them.

highdicom (the ``dicom`` extra) builds the object: one binary segment, "Lesion"
(SNOMED CT), made by an automatic algorithm. Only a series read as it is can be
referred to: one resampled onto an even grid no longer has the files' slices.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np

from inference.dicom import SeriesVolume
from inference.folders import InputError, atomic_temporary

SERIES_NUMBER = 9900  # sorts after the scanner's own series in a viewer
# highdicom logs each module it copies from the source at INFO: not news to a user
logging.getLogger("highdicom").setLevel(logging.WARNING)


def dicom_seg(volume: SeriesVolume, mask_zyx: np.ndarray):
    """``mask_zyx`` (on ``volume``'s grid) as a DICOM SEG dataset of ``volume``'s series;
    InputError when the series cannot be referred to."""
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.sr.codedict import codes
    from pydicom.valuerep import DSfloat

    if not isinstance(volume, SeriesVolume) or not volume.files:
        raise InputError(f"{volume.path}: a DICOM SEG refers to the slices of a DICOM series, "
                         "and this scan is not one")
    if volume.resampled:
        raise InputError(f"{volume.path}: no DICOM SEG: the series was resampled onto an even "
                         "grid, so the mask's slices are not the series' own")
    sources = [dcmread(name, stop_before_pixels=True) for name in volume.files]
    version = _version()
    for source in sources:  # in memory only: highdicom reads it, a CT may leave it out
        if not source.get("SliceThickness"):
            source.SliceThickness = DSfloat(volume.grid.spacing[2], auto_format=True)
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="flare-nnsam", family=codes.cid7162.ArtificialIntelligence, version=version))
    try:
        segmentation = hd.seg.Segmentation(
            source_images=sources, pixel_array=np.asarray(mask_zyx) > 0,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment], series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="flare-nnsam", manufacturer_model_name="flare-nnsam lesion model",
            software_versions=version, device_serial_number="none",
            series_description="flare-nnsam lesions")
    except (ValueError, AttributeError) as error:  # the source files lack what SEG needs
        raise InputError(f"{volume.path}: no DICOM SEG can refer to this series ({error})") \
            from None
    return segmentation


def write_dicom_seg(segmentation, path: str | Path) -> Path:
    """Save a ``dicom_seg`` dataset, atomically."""
    path = Path(path)
    with atomic_temporary(path, keep_suffix=True) as temporary:
        segmentation.save_as(temporary)
    return path


def _version() -> str:
    try:
        return metadata.version("flare-nnsam")
    except metadata.PackageNotFoundError:
        return "unknown"
