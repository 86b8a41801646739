"""The NIfTI-1 header: what it says, whether the file holds all of it, and its repairs.

What costs milliseconds and is checked before ITK reads anything (``inspect``): the header
parsed in either byte order, NIfTI-2 and Analyze pairs refused with a hint, singleton axes
past the third squeezed, a 2D image or a real 4D series refused, the voxels' size against
the memory there is, and the gzip trailer's size against the header's (anything else,
truncation, several members, trailing bytes, settled by one streaming decompression).
Then what the reader asks of it: transforms in use that hold NaN or inf
(``check_transforms``), a zero, NaN or negative pixdim repaired from the sform or as ITK
places the voxels (``checked_spacing``), the scaling of the voxels (``scaling``).
"""

from __future__ import annotations

import logging
import os
import struct
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from inference import gzip_stream
from inference.budget import more_than_memory
from inference.folders import InputError, not_a_file

log = logging.getLogger(__name__)

HEADER_SIZE = 348
DATA_OFFSET = 352  # header + the 4-byte extension flag (no extensions written)
# NIfTI-1 datatype codes a grey-value CT can be stored as -> bytes per voxel.
VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
UINT8, FLOAT32 = 2, 16
UNSIGNED = (2, 512, 768, 1280)  # uint8, uint16, uint32, uint64
NUMPY_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
               768: "u4", 1024: "i8", 1280: "u8"}


@dataclass(frozen=True)
class Header:
    raw: bytes
    shape: tuple[int, ...]  # dim[1 .. dim[0]], x first
    datatype: int
    vox_offset: int
    compressed: bool  # gzip; inspect looked at the magic bytes already
    trailer_ok: bool = False  # gzip whose last 4 bytes give the size the header describes

    @property
    def end_of_data(self) -> int:
        voxels = int(np.prod(self.shape, dtype=object))  # Python ints: no overflow
        return self.vox_offset + voxels * VOXEL_BYTES[self.datatype]


def inspect(path: Path) -> Header:
    """Header and completeness checks that cost milliseconds, before ITK reads anything."""
    if (why := not_a_file(path)) is not None:  # a FIFO would block the open
        raise InputError(f"{path}: {why}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            start = stream.read(1 << 16)
            compressed = start[:2] == gzip_stream.GZIP_MAGIC
            head = gzip_stream.gunzip_head(stream, start, HEADER_SIZE, path) if compressed \
                else start[:HEADER_SIZE]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be opened ({error.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes): it was not copied completely")
    header = parse_header(head, path, compressed)
    dims = header.shape
    if len(dims) < 3:
        raise InputError(f"{path}: a {len(dims)}D image of size {_size_text(dims)}: "
                         "a 3D CT volume is expected")
    if any(d > 1 for d in dims[3:]):
        raise InputError(f"{path}: a {len(dims)}D image of size {_size_text(dims)}: only one "
                         "3D CT volume per file is supported; save each volume as its own file")
    _check_fits_in_memory(header, path)
    if compressed:
        header = replace(header, trailer_ok=_check_gzip_complete(path, header, size))
    elif size < header.end_of_data:
        raise InputError(f"{path}: truncated: the header describes {header.end_of_data} bytes "
                         f"but the file holds {size}; copy it again")
    return header


def _check_fits_in_memory(header: Header, path: Path) -> None:
    """InputError when the voxels alone take more memory than there is: the header tells
    before the array is allocated (or a gzip of zeros inflated for minutes)."""
    too_much = more_than_memory(header.end_of_data - header.vox_offset)
    if too_much is not None:
        kind = np.dtype(NUMPY_TYPES[header.datatype]).name
        raise InputError(f"{path}: {_size_text(header.shape[:3])} {kind} voxels take "
                         f"{too_much}: crop or downsample the scan, or give the run more memory")


def voxel_bytes(path: str | os.PathLike) -> int | None:
    """Bytes of the voxels a file's header describes (its first 348 bytes only); None if
    the header cannot be read (the read itself then says why)."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(1 << 16)
            compressed = start[:2] == gzip_stream.GZIP_MAGIC
            head = gzip_stream.gunzip_head(stream, start, HEADER_SIZE, Path(path)) if compressed \
                else start
        header = parse_header(head, Path(path), compressed, warn=False)
    except (OSError, InputError):
        return None
    return header.end_of_data - header.vox_offset


def parse_header(head: bytes, path: Path, compressed: bool, warn: bool = True) -> Header:
    what = "the decompressed data" if compressed else "the file (not gzip-compressed)"
    # sizeof_hdr, read in either byte order, tells the version and the byte order
    sizes = {order: struct.unpack_from(order + "i", head)[0] for order in "<>"} \
        if len(head) >= 4 else {}
    if 540 in sizes.values():
        raise InputError(f"{path}: a NIfTI-2 file, which ITK cannot read: "
                         "save it as NIfTI-1 (e.g. nibabel.Nifti1Image)")
    endian = next((order for order, size in sizes.items() if size == HEADER_SIZE), "")
    if len(head) < HEADER_SIZE or not endian:
        raise InputError(f"{path}: not a NIfTI file: {what} does not start with a NIfTI-1 header")
    if head[344:348] != b"n+1\0":
        raise InputError(f"{path}: a NIfTI header without the single-file magic 'n+1' (an "
                         "Analyze or .hdr/.img pair?): save it as a single .nii.gz")
    dim = struct.unpack_from(endian + "8h", head, 40)
    datatype = struct.unpack_from(endian + "h", head, 70)[0]
    (vox_offset,) = struct.unpack_from(endian + "f", head, 108)
    if 3 < dim[0] <= 7 and min(dim[1:4]) >= 1 and min(dim[4 : dim[0] + 1]) == 0:
        # a zero extent past the third axis means no such axis to ITK (and to nibabel)
        say = log.warning if warn else log.debug
        say("%s: dim=%s has a zero extent past the third axis; read as one 3D volume, as ITK "
            "reads it", path, list(dim))
        dim = (3, *dim[1:4], 1, 1, 1, 1)
    if not 1 <= dim[0] <= 7 or min(dim[1 : dim[0] + 1]) < 1 or not vox_offset >= HEADER_SIZE:
        raise InputError(f"{path}: corrupt NIfTI header (dim={list(dim)}, "
                         f"vox_offset={vox_offset:g})")
    if datatype not in VOXEL_BYTES:
        raise InputError(f"{path}: voxel type code {datatype} is not a grey-value type: "
                         "CT must be stored as integers or floats")
    return Header(bytes(head[:HEADER_SIZE]), tuple(dim[1 : dim[0] + 1]), datatype,
                   int(vox_offset), compressed)


def _check_gzip_complete(path: Path, header: Header, size: int) -> bool:
    """Whether the gzip trailer gives the size the header describes (the common case, read
    in milliseconds); otherwise inflate it all: InputError when the data stop short or fail
    their CRC, a warning when bytes follow them (the read stops before those)."""
    expected = header.end_of_data
    with open(path, "rb") as stream:
        stream.seek(max(size - 4, 0))
        tail = stream.read(4)
    # A truncated file has no trailer: its last 4 bytes match the size by chance (2**-32).
    if len(tail) == 4 and struct.unpack("<I", tail)[0] == expected % 2**32:
        return True
    total, end = _inflate_members(path, expected)
    if total < expected:
        raise InputError(f"{path}: truncated: {total} bytes decompressed but the header "
                         f"describes {expected}; copy the file again")
    if end < size:
        log.warning("%s: %d bytes after the end of the gzip data are ignored (as gzip -d "
                    "ignores them)", path, size - end)
    return False


def _inflate_members(path: Path, expected: int) -> tuple[int, int]:
    """(uncompressed bytes, end of the gzip data) of ``path``, by inflating all of it."""
    total, buffer = 0, bytearray(gzip_stream.CHUNK)
    inflater = gzip_stream.Inflater(path)
    try:
        with closing(inflater):
            while count := inflater.readinto(buffer):
                total += count
    except EOFError:
        raise InputError(f"{path}: truncated: the gzip stream stops after "
                         f"{min(total / max(expected, 1), 1):.0%} of the image; copy the file "
                         "again") from None
    except gzip_stream.GZIP_ERRORS as error:
        raise InputError(f"{path}: corrupt gzip data ({error}): copy the file again") from None
    return total, inflater.end


# The fields of each transform, by the offset of its first float, with the code that puts
# it in use: ITK places the voxels with them, and a NaN or inf there places them nowhere.
TRANSFORMS = (("qform_code", 252, (("quatern_b", 256), ("quatern_c", 260), ("quatern_d", 264),
                                   ("qoffset_x", 268), ("qoffset_y", 272), ("qoffset_z", 276))),
              ("sform_code", 254, (("srow_x", 280), ("srow_y", 296), ("srow_z", 312))))


def check_transforms(raw: bytes, path: Path) -> None:
    """InputError when a transform in use (its code above 0) holds NaN or inf, before ITK
    reads it (ITK would print its own matrix dumps and read a direction of NaN)."""
    order = byte_order(raw)
    for code_name, code_at, values in TRANSFORMS:
        if struct.unpack_from(order + "h", raw, code_at)[0] <= 0:
            continue
        for name, at in values:
            count = 4 if name.startswith("srow") else 1
            bad = ["NaN" if np.isnan(v) else f"{v:g}"
                   for v in struct.unpack_from(f"{order}{count}f", raw, at) if not np.isfinite(v)]
            if bad:
                raise InputError(f"{path}: {name} holds {bad[0]} while {code_name} puts it in "
                                 f"use: the voxels have no position; fix the header, or set "
                                 f"{code_name} to 0")


def checked_spacing(spacing, direction, raw: bytes, path: Path) -> tuple[tuple, tuple]:
    """Spacing and direction with every voxel size positive, saying what was repaired.

    A negative pixdim (ITK's header read then gives a negative spacing) becomes its size
    along a mirrored axis: the same voxel positions, as ITK's full read places them. A
    zero or NaN pixdim, which ITK silently reads as 1 mm, takes the sform's voxel size
    when the file has an sform, and stays 1 mm with a warning when it has none.
    """
    order = byte_order(raw)
    pixdim = struct.unpack_from(order + "3f", raw, 80)
    sform_code = struct.unpack_from(order + "h", raw, 254)[0]
    srow = np.array(struct.unpack_from(order + "12f", raw, 280), np.float64).reshape(3, 4)
    spacing = [float(v) for v in spacing]
    matrix = np.array(direction, np.float64).reshape(3, 3)
    notes = []
    for axis, value in enumerate(pixdim):
        name = f"pixdim[{axis + 1}] is {value:g}"
        if np.isfinite(value) and value < 0 and spacing[axis] < 0:
            spacing[axis], matrix[:, axis] = -spacing[axis], -matrix[:, axis]
            notes.append(f"{name}: read as {abs(value):g} mm along a mirrored axis, as ITK does")
        elif np.isfinite(value) and value < 0:
            notes.append(f"{name}: the voxel size is read as {spacing[axis]:g} mm, where "
                         "ITK places the voxels")
        elif not (np.isfinite(value) and value > 0):
            size = float(np.linalg.norm(srow[:, axis])) if sform_code > 0 else float("nan")
            if np.isfinite(size) and size > 0:
                spacing[axis] = size
                notes.append(f"{name}: the voxel size {size:g} mm is taken from the sform")
            else:
                notes.append(f"{name} and there is no sform: taken as {spacing[axis]:g} mm, as "
                             "ITK does; the mask is wrong if that is not the voxel size")
    if notes:
        log.warning("%s: %s", path, "; ".join(notes))
    if not all(np.isfinite(v) and v > 0 for v in spacing):
        raise InputError(f"{path}: voxel spacing {spacing} is not positive: fix pixdim")
    return tuple(spacing), tuple(float(v) for v in matrix.ravel())


def scaling(raw: bytes) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) when the header scales the voxels, as ITK applies them; else None."""
    slope, inter = struct.unpack_from(byte_order(raw) + "2f", raw, 112)
    if slope != 0 and np.isfinite(slope) and (slope, inter) != (1, 0):
        return slope, (inter if np.isfinite(inter) else 0.0)
    return None


def byte_order(header: bytes) -> str:
    """``<`` or ``>``: the byte order of a NIfTI-1 header (its sizeof_hdr reads 348)."""
    return "<" if struct.unpack_from("<i", header)[0] == HEADER_SIZE else ">"


def _size_text(dims: Sequence[int]) -> str:
    """A size as people write it: 512x512x48."""
    return "x".join(str(d) for d in dims)
