"""Segmenting scans from Python (a notebook, a script): load the model once, then segment
SimpleITK images, files or DICOM folders, and get the mask and the lesion table.

    from inference.api import Segmenter
    segmenter = Segmenter()                      # the shipped weights, GPU if there is one
    result = segmenter.segment("ct.nii.gz")      # or a SimpleITK image, or a DICOM folder
    result.mask_image()                          # SimpleITK image on the input's grid
    result.table()                               # one dict per lesion (pandas.DataFrame(...))

The same ``Predictor`` as the container runs underneath: the same preprocessing,
network, post-processing and restore onto the input grid.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from inference.budget import DEFAULT_GPU_MEMORY_MB
from inference.formats import read_scan, scan_name, write_mask
from inference.itk_images import volume_from_image
from inference.lesions import Lesion, case_statistics, label_lesions, lesion_table, summary
from inference.nifti import CtVolume, Grid

SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


@dataclass
class Segmentation:
    """One scan's result: the CT as read, the mask on its grid, and the lesion table."""

    name: str
    volume: CtVolume  # HU (z, y, x) and the grid every array here lies on
    mask: np.ndarray  # uint8 {0, 1} (z, y, x)
    labels: np.ndarray  # lesion ids (z, y, x), numbered as in ``lesions``
    lesions: list[Lesion]
    probability: np.ndarray | None = None  # float32 (z, y, x) when asked for

    @property
    def grid(self) -> Grid:
        return self.volume.grid

    def mask_image(self):
        """The mask as a SimpleITK image (uint8) on the input's grid."""
        from inference.itk_images import grid_image

        return grid_image(self.mask, self.grid)

    def table(self) -> list[dict]:
        """The lesion table, one dict per lesion (fields of ``inference.lesions.Lesion``)."""
        return [asdict(lesion) for lesion in self.lesions]

    def statistics(self) -> dict:
        """The case's statistics as ``--statistics`` writes them: grid, totals, lesions."""
        return case_statistics(self.name, self.lesions, self.grid)

    def write_mask(self, path: str | os.PathLike) -> Path:
        """The mask as ``.nii.gz`` (the input's NIfTI header kept), ``.nii``, ``.nrrd`` or
        ``.mha``, on the input's grid."""
        return write_mask(self.mask, self.grid, path)

    def write_preview(self, path: str | os.PathLike) -> Path:
        """The PNG of ``--preview`` (needs matplotlib: the ``preview`` extra)."""
        from inference.preview import write_preview

        return write_preview(path, self.volume.array, self.labels, self.grid, self.lesions,
                             f"{self.name}: {summary(self.lesions)}")


class Segmenter:
    """The model, loaded once (``weights`` default: the shipped ones); ``segment`` per scan.

    ``device`` and ``backend`` as for the container: auto picks torch on a GPU and
    onnxruntime on the CPU.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto",
                 backend: str = "auto", threads: int | None = None,
                 gpu_memory_mb: float = DEFAULT_GPU_MEMORY_MB):
        from inference.predictor import Predictor

        self.predictor = Predictor(weights or SHIPPED_WEIGHTS, device, backend, gpu_memory_mb,
                                   threads=threads)

    def segment(self, scan, probabilities: bool = True, name: str | None = None,
                progress=None) -> Segmentation:
        """Segment a SimpleITK image, a ``CtVolume``, or a scan's path (a NIfTI, NRRD or
        MetaImage file, or a DICOM series folder).

        ``probabilities`` adds the lesion probability on the input grid and the table's
        probability columns (it costs an upsampling of the whole body region).
        """
        volume = as_volume(scan)
        result = self.predictor.predict(volume, probabilities=probabilities, progress=progress)
        labels = label_lesions(result.mask)
        lesions = lesion_table(result.mask, volume.grid, volume.array, result.probability,
                               labels=labels)
        if name is None:
            name = scan_name(volume.path) if volume.path is not None else "image"
        return Segmentation(name, volume, result.mask, labels[0], lesions, result.probability)


def as_volume(scan) -> CtVolume:
    """A ``CtVolume`` from a path, a SimpleITK image or a ``CtVolume``."""
    if isinstance(scan, CtVolume):
        return scan
    if isinstance(scan, (str, os.PathLike)):
        return read_scan(scan)
    if hasattr(scan, "GetSize") and hasattr(scan, "GetDirection"):
        return volume_from_image(scan)
    raise TypeError(f"segment takes a path, a SimpleITK image or a CtVolume, not "
                    f"{type(scan).__name__}")

