"""Write masks and probabilities on exactly the input's voxel grid (NIfTI-1).

Writing copies the input's 348-byte header (geometry, units, qform and sform untouched),
sets the voxel type, and gzips with a fast level: the output re-reads on a bit-identical
grid. Files go to a hidden temporary `.<case>.<hex>.partial` in the output folder, then
`os.replace` (``folders.atomic_temporary``); a later run removes the temporaries of a run
that was killed mid-write.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np

from inference import gzip_stream, nifti, nifti_header
from inference.folders import NIFTI_SUFFIX, InputError, atomic_temporary
from inference.nifti import CtVolume, Grid


def write_mask(mask_zyx: np.ndarray, reference: CtVolume | Grid,
               out_path: str | os.PathLike) -> Path:
    """Write a {0,1} mask as uint8 NIfTI on exactly the reference's grid, atomically."""
    grid = reference.grid if isinstance(reference, CtVolume) else reference
    mask = np.asarray(mask_zyx)
    _check_shape(mask, grid, "mask")
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    elif not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask must be bool or integer, got {mask.dtype}")
    elif mask.size and (mask.min() < 0 or mask.max() > 1):
        raise ValueError(f"mask values must be 0 or 1, got [{mask.min()}, {mask.max()}]")
    return _write(np.ascontiguousarray(mask, dtype=np.uint8), grid, Path(out_path),
                  nifti_header.UINT8)


def write_probabilities(probability_zyx: np.ndarray, reference: CtVolume | Grid,
                        out_path: str | os.PathLike) -> Path:
    """Write a lesion probability map as float32 NIfTI on the reference's grid, atomically.

    Name it `<case>.nii.gz` in a folder of its own (e.g. `<output>/probabilities/`):
    evaluators glob `*.nii.gz` in the mask folder and would count `<case>_prob.nii.gz`.
    """
    grid = reference.grid if isinstance(reference, CtVolume) else reference
    probability = np.asarray(probability_zyx)
    _check_shape(probability, grid, "probability map")
    return _write(np.ascontiguousarray(probability, dtype=np.float32), grid, Path(out_path),
                  nifti_header.FLOAT32)


def _check_shape(array: np.ndarray, grid: Grid, what: str) -> None:
    if array.shape != grid.shape_zyx:
        raise ValueError(f"{what} has shape {array.shape} (z, y, x) but the grid is "
                         f"{grid.shape_zyx}")


def _write(array: np.ndarray, grid: Grid, out_path: Path, datatype: int) -> Path:
    if not out_path.name.endswith(NIFTI_SUFFIX):
        raise ValueError(f"output name must end with {NIFTI_SUFFIX}: {out_path}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        source = grid.header if grid.header is not None else _itk_header(grid)
        header = _output_header(source, grid.size, datatype)
        # NIfTI data follows the header's byte order; a no-op on little-endian input
        data = array.astype(array.dtype.newbyteorder(nifti_header.byte_order(source)), copy=False)
        with atomic_temporary(out_path) as temporary, open(temporary, "wb") as raw:
            gzip_stream.compress_to(raw, (header, memoryview(data).cast("B")))
    except OSError as error:
        raise InputError(f"{out_path}: cannot be written ({error.strerror or error})") from None
    return out_path


def _itk_header(grid: Grid) -> bytes:
    """The NIfTI-1 header ITK writes for a grid made in code (its qform and sform from
    spacing, origin and direction); ``_output_header`` then sets the size and type."""
    import tempfile

    sitk = nifti.simpleitk()
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "grid.nii")
        sitk.WriteImage(image, path)
        with open(path, "rb") as f:
            return f.read(nifti_header.HEADER_SIZE)


def _output_header(input_header: bytes, size: Sequence[int], datatype: int) -> bytes:
    """The input's header with our voxel type: geometry, units and transforms unchanged."""
    order = nifti_header.byte_order(input_header)
    header = bytearray(input_header)
    struct.pack_into(order + "8h", header, 40, 3, *size, 1, 1, 1, 1)
    bitpix = 8 * nifti_header.VOXEL_BYTES[datatype]
    struct.pack_into(order + "3f3h", header, 56, 0, 0, 0, 0, datatype, bitpix)  # intent, type
    # vox_offset, scl_slope, scl_inter
    struct.pack_into(order + "3f", header, 108, nifti_header.DATA_OFFSET, 1, 0)
    struct.pack_into(order + "2f", header, 124, 0, 0)  # cal_max, cal_min
    struct.pack_into(order + "2i", header, 140, 0, 0)  # glmax, glmin
    header[148:252] = b"flare-nnsam".ljust(104, b"\0")  # descrip, aux_file
    header[328:344] = b"\0" * 16  # intent_name
    return bytes(header) + b"\0" * (nifti_header.DATA_OFFSET - nifti_header.HEADER_SIZE)
