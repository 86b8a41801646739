"""Read challenge CT scans and write masks on exactly their voxel grid (NIfTI-1).

Reading checks what SimpleITK lets through silently (a truncated .nii.gz reads as zeros)
and turns each user-caused problem into one `InputError` line that names the file.
Choices, each with a test in tests/inference/test_nifti.py:

- Integrity: the NIfTI-1 header gives the uncompressed size; the gzip trailer's ISIZE must
  match it. Anything else (truncation, several gzip members, trailing bytes) is settled
  by one streaming decompression. A complete stream with flipped bits inside is only
  caught if zlib cannot inflate it: checking the CRC would cost a second decompression.
- Singleton axes past the third are squeezed; a 2D image or a real 4D series is an error.
  A 3D volume of one slice is accepted (later stages pad small volumes).
- Oblique directions are kept as they are. A sheared (non-orthonormal) sform is read with
  ITK's orthonormalised direction and a warning; the output copies the input's header, so
  every reader places the output exactly where it places the input.
- Voxels of any integer or float type become float32 HU, with scl_slope/scl_inter applied.
- NaN/inf voxels: the NIfTI library inside ITK already reads them as 0 (finding them first
  would cost a second decompression of every float file). Should any reach us anyway, they
  are set to the lowest finite value (outside the field of view, like -3024 padding) with
  a warning; a volume with no finite voxel is an error.
- Intensities within [-0.5, 1.5] are taken as already normalised, not HU: an error.
- NIfTI-2 is refused with a hint: ITK cannot read it.

Writing copies the input's 348-byte header (geometry, units, qform and sform untouched),
sets the voxel type, and gzips with a fast level: the output re-reads on a bit-identical
grid. Files go to a hidden temporary `.<case>.<hex>.partial` in the output folder, then
`os.replace`; a later run removes the temporaries of a run that was killed mid-write.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import logging
import mmap
import os
import re
import struct
import zlib
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from inference.budget import more_than_memory
from inference.folders import NIFTI_SUFFIX, InputError, atomic_temporary, not_a_file

try:  # isal inflates and deflates faster than zlib; fall back when it is absent
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
    from isal.isal_zlib import _GzipReader as _InMemoryGzipReader
except ImportError:  # pragma: no cover - depends on the installation
    import gzip as _gzip

    _zlib = zlib
    _InMemoryGzipReader = None
_GZIP_ERRORS = (OSError, ValueError, zlib.error, _zlib.error)

log = logging.getLogger(__name__)


# Let ITK orthonormalise a sheared sform instead of refusing the file. Set once, here: the
# predictor reads in a thread, and setenv racing getenv elsewhere can crash the process.
os.environ.setdefault("ITK_NIFTI_SFORM_PERMISSIVE", "1")

_HEADER_SIZE = 348
_DATA_OFFSET = 352  # header + the 4-byte extension flag (no extensions written)
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24
# NIfTI-1 datatype codes a grey-value CT can be stored as -> bytes per voxel.
_VOXEL_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 64: 8, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8}
_UINT8, _FLOAT32 = 2, 16
_UNSIGNED = (2, 512, 768, 1280)  # uint8, uint16, uint32, uint64
AIR_HU = -500.0  # every CT of a body has voxels below this (air)
_UNSIGNED_SHIFT = -1024  # HU = stored value - 1024 when the intercept was lost
# Voxel types read as they are (CT is mostly int16); wider ones become float32 HU.
_KEPT_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
               np.dtype(np.float32))
_NUMPY_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                768: "u4", 1024: "i8", 1280: "u8"}


@functools.cache
def simpleitk():
    """SimpleITK, imported on first use: its import then runs while the
    first case's voxels inflate, instead of before the read can start."""
    import SimpleITK as sitk

    # ITK's own warnings go to stderr with C++ source paths; we log one line each instead.
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


@dataclass(frozen=True)
class Grid:
    """A voxel grid in ITK's (LPS) convention, plus the NIfTI header it was read from."""

    size: tuple[int, int, int]  # x, y, z voxels
    spacing: tuple[float, float, float]  # x, y, z mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major
    header: bytes | None = None  # the input's NIfTI-1 header, copied onto outputs

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.size[::-1]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.spacing[::-1]


@dataclass
class CtVolume:
    """A CT scan in float32 Hounsfield units, indexed (z, y, x), and the grid it lies on."""

    array: np.ndarray
    grid: Grid
    path: Path | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.grid.spacing

    @property
    def origin(self) -> tuple[float, float, float]:
        return self.grid.origin

    @property
    def direction(self) -> tuple[float, ...]:
        return self.grid.direction

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return self.grid.spacing_zyx


# ----------------------------------------------------------------------------- folders


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Header:
    raw: bytes
    shape: tuple[int, ...]  # dim[1 .. dim[0]], x first
    datatype: int
    vox_offset: int
    compressed: bool  # gzip; _inspect looked at the magic bytes already
    trailer_ok: bool = False  # gzip whose last 4 bytes give the size the header describes

    @property
    def end_of_data(self) -> int:
        voxels = int(np.prod(self.shape, dtype=object))  # Python ints: no overflow
        return self.vox_offset + voxels * _VOXEL_BYTES[self.datatype]


def read_ct(path: str | os.PathLike, itk_voxels: bool = False) -> CtVolume:
    """Read one CT scan as HU (z, y, x) after checking it; raise InputError if unusable.

    The array keeps the file's voxel type when it is 8 or 16 bits or float32 (int16 for
    most CT); other types, and values the header scales, become float32.
    ``itk_voxels`` gives float32 through ITK.

    ITK reads the header and decides the geometry (its qform/sform rules); the voxels
    are inflated with isal and scaled here, which is faster than ITK's zlib and
    lets other threads run meanwhile (the read overlaps start-up). ``itk_voxels`` reads
    them through ITK instead (the reference the tests compare against).
    """
    path = Path(path)
    _itk_name(path)
    header = _inspect(path)
    _check_transforms(header.raw, path)
    # The voxels first: isal releases the GIL, so the read-ahead overlaps the imports.
    array = None if itk_voxels else _read_voxels(path, header)
    sitk = simpleitk()
    reader = _itk_reader(path)
    try:
        if itk_voxels:
            image = reader.Execute()
        else:
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as NIfTI ({itk_reason(error)})") from None
    if reader.HasMetaDataKey("ITK_sform_corrected") and \
            reader.GetMetaData("ITK_sform_corrected") == "YES":
        log.warning("%s: the sform is not a rotation (shear or scaling); using its nearest "
                    "orthonormal direction, output written on the input's own header", path)
    source = image if itk_voxels else reader
    components = image.GetNumberOfComponentsPerPixel() if itk_voxels else \
        reader.GetNumberOfComponents()
    if source.GetSize() != header.shape[:3] or components != 1:
        raise InputError(f"{path}: ITK reads a {source.GetSize()} image with "
                         f"{components} component(s) but the header "
                         f"describes {header.shape}: rewrite the file as a 3D NIfTI-1 volume")
    spacing, direction = _checked_spacing(source.GetSpacing(), source.GetDirection(),
                                          header.raw, path)
    grid = Grid(source.GetSize(), spacing, source.GetOrigin(), direction, header.raw)
    if itk_voxels and image.GetPixelID() == sitk.sitkFloat32:
        array = sitk.GetArrayFromImage(image)
    elif itk_voxels:  # converting from the view skips an intermediate copy in the file's type
        array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    return CtVolume(check_intensities(array, path, header), grid, path)


# The fields of each transform, by the offset of its first float, with the code that puts
# it in use: ITK places the voxels with them, and a NaN or inf there places them nowhere.
_TRANSFORMS = (("qform_code", 252, (("quatern_b", 256), ("quatern_c", 260), ("quatern_d", 264),
                                    ("qoffset_x", 268), ("qoffset_y", 272), ("qoffset_z", 276))),
               ("sform_code", 254, (("srow_x", 280), ("srow_y", 296), ("srow_z", 312))))


def _check_transforms(raw: bytes, path: Path) -> None:
    """InputError when a transform in use (its code above 0) holds NaN or inf, before ITK
    reads it (ITK would print its own matrix dumps and read a direction of NaN)."""
    endian = _endian(raw)
    for code_name, code_at, values in _TRANSFORMS:
        if struct.unpack_from(endian + "h", raw, code_at)[0] <= 0:
            continue
        for name, at in values:
            count = 4 if name.startswith("srow") else 1
            bad = ["NaN" if np.isnan(v) else f"{v:g}"
                   for v in struct.unpack_from(f"{endian}{count}f", raw, at) if not np.isfinite(v)]
            if bad:
                raise InputError(f"{path}: {name} holds {bad[0]} while {code_name} puts it in "
                                 f"use: the voxels have no position; fix the header, or set "
                                 f"{code_name} to 0")


def _checked_spacing(spacing, direction, raw: bytes, path: Path) -> tuple[tuple, tuple]:
    """Spacing and direction with every voxel size positive, saying what was repaired.

    A negative pixdim (ITK's header read then gives a negative spacing) becomes its size
    along a mirrored axis: the same voxel positions, as ITK's full read places them. A
    zero or NaN pixdim, which ITK silently reads as 1 mm, takes the sform's voxel size
    when the file has an sform, and stays 1 mm with a warning when it has none.
    """
    endian = _endian(raw)
    pixdim = struct.unpack_from(endian + "3f", raw, 80)
    sform_code = struct.unpack_from(endian + "h", raw, 254)[0]
    srow = np.array(struct.unpack_from(endian + "12f", raw, 280), np.float64).reshape(3, 4)
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


def _read_voxels(path: Path, header: _Header) -> np.ndarray:
    """The voxels (z, y, x) in the file's own type, native byte order; float32 where
    scl_slope/scl_inter scale them (as ITK does).

    Inflated straight into the array's memory: no intermediate copy, and no float32
    conversion of the whole volume (preprocessing converts what it uses, slab by slab).
    """
    endian = _endian(header.raw)
    array = np.empty(header.shape[:3][::-1], np.dtype(_NUMPY_TYPES[header.datatype]).newbyteorder(
        endian))
    view, filled = memoryview(array).cast("B"), 0
    try:
        with closing(_voxel_stream(path, header)) as stream:
            if stream.seekable():
                stream.seek(header.vox_offset)
            elif len(skipped := stream.read(header.vox_offset)) < header.vox_offset:
                raise EOFError(f"the data end at byte {len(skipped)}, inside the header")
            while filled < array.nbytes and (count := stream.readinto(view[filled:])):
                filled += count
    except (EOFError, *_GZIP_ERRORS) as error:
        raise InputError(f"{path}: cannot read the voxels ({error}): copy the file again") \
            from None
    if filled < array.nbytes:
        raise InputError(f"{path}: truncated: {filled} of {array.nbytes} voxel bytes; copy the "
                         "file again")
    if not array.dtype.isnative:
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    if (scaling := _scaling(header.raw)) is not None:
        slope, inter = scaling
        return (array * np.float64(slope) + np.float64(inter)).astype(np.float32)
    return array if array.dtype in _KEPT_TYPES else array.astype(np.float32)


def _voxel_stream(path: Path, header: _Header) -> BinaryIO:
    """The file's uncompressed bytes as a stream.

    A whole gzip file (its trailer checked) is mapped into memory and inflated in one call
    that releases the GIL: the read-ahead beside the imports is not slowed by taking the
    GIL back every block, as the file-backed gzip reader is, and the compressed bytes stay
    clean page cache, which the kernel reclaims under a memory limit, instead of a private
    copy of the whole compressed file. Anything
    else (bytes after the data, a file that cannot be mapped) is inflated in chunks.
    """
    if not header.compressed:
        return open(path, "rb")
    if header.trailer_ok and _InMemoryGzipReader is not None:
        try:
            return _MappedGzip(path)
        except (OSError, ValueError):  # a file system without mmap
            pass
    return _Inflater(path)


class _MappedGzip(io.RawIOBase):
    """isal's in-memory gzip reader over the file mapped read-only."""

    def __init__(self, path: Path):
        super().__init__()
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map.madvise(mmap.MADV_SEQUENTIAL)
        self._view = memoryview(self._map)
        self._reader = _InMemoryGzipReader(self._view)

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:
        return self._reader.readinto(view)

    def close(self) -> None:
        if not self.closed:
            self._reader = None  # the reader, then the view, then the map
            self._view.release()
            self._map.close()
        super().close()


class _Inflater(io.RawIOBase):
    """A gzip file's uncompressed bytes, inflated from compressed chunks of 16 MB.

    Several members are read in turn, an empty one included; bytes after the last member
    that do not start another one end the data, as for gzip -d. A member cut short raises
    EOFError; zlib checks each member's CRC at its end. Slower than the mapped reader (a
    copy per chunk), so it serves the files that one cannot read.
    """

    def __init__(self, path: Path, chunk: int = 1 << 24):
        super().__init__()
        self._file = open(path, "rb")
        self._chunk = chunk
        self._inflater = _zlib.decompressobj(wbits=31)
        self._pending = b""
        self._done = False
        self._read = 0
        self.end: int | None = None  # where the gzip data end, once the reader got there

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:
        view = memoryview(view).cast("B")
        got = 0
        while got < len(view) and not self._done:
            if self._inflater.eof and not self._next_member():
                break
            if not self._pending:
                self._pending = self._take()
                if not self._pending:
                    raise EOFError("the gzip stream ends before its last member is complete")
            out = self._inflater.decompress(self._pending, len(view) - got)
            self._pending = self._inflater.unconsumed_tail
            view[got:got + len(out)] = out
            got += len(out)
        return got

    def _next_member(self) -> bool:
        self._pending = self._inflater.unused_data + self._pending
        if len(self._pending) < 2:
            self._pending += self._take()
        if self._pending[:2] != _GZIP_MAGIC:
            self._done = True
            self.end = self._read - len(self._pending)
            return False
        self._inflater = _zlib.decompressobj(wbits=31)
        return True

    def _take(self) -> bytes:
        data = self._file.read(self._chunk)
        self._read += len(data)
        return data

    def close(self) -> None:
        self._file.close()
        super().close()


def _inspect(path: Path) -> _Header:
    """Header and completeness checks that cost milliseconds, before ITK reads anything."""
    if (why := not_a_file(path)) is not None:  # a FIFO would block the open
        raise InputError(f"{path}: {why}")
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            start = stream.read(1 << 16)
            compressed = start[:2] == _GZIP_MAGIC
            head = _gunzip_head(stream, start, path) if compressed else start[:_HEADER_SIZE]
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot be opened ({error.strerror})") from None
    if size == 0:
        raise InputError(f"{path}: the file is empty (0 bytes): it was not copied completely")
    header = _parse_header(head, path, compressed)
    dims = header.shape
    if len(dims) < 3:
        raise InputError(f"{path}: a {len(dims)}D image of size {_x(dims)}: "
                         "a 3D CT volume is expected")
    if any(d > 1 for d in dims[3:]):
        raise InputError(f"{path}: a {len(dims)}D image of size {_x(dims)}: only one 3D CT "
                         "volume per file is supported; save each volume as its own file")
    _check_fits_in_memory(header, path)
    if compressed:
        header = dataclasses.replace(header, trailer_ok=_check_gzip_complete(path, header, size))
    elif size < header.end_of_data:
        raise InputError(f"{path}: truncated: the header describes {header.end_of_data} bytes "
                         f"but the file holds {size}; copy it again")
    return header


def _check_fits_in_memory(header: _Header, path: Path) -> None:
    """InputError when the voxels alone take more memory than there is: the header tells
    before the array is allocated (or a gzip of zeros inflated for minutes)."""
    too_much = more_than_memory(header.end_of_data - header.vox_offset)
    if too_much is not None:
        kind = np.dtype(_NUMPY_TYPES[header.datatype]).name
        raise InputError(f"{path}: {_x(header.shape[:3])} {kind} voxels take {too_much}: "
                         "crop or downsample the scan, or give the run more memory")


def voxel_bytes(path: str | os.PathLike) -> int | None:
    """Bytes of the voxels a file's header describes (its first 348 bytes only); None if
    the header cannot be read (the read itself then says why)."""
    try:
        with open(path, "rb") as stream:
            start = stream.read(1 << 16)
            compressed = start[:2] == _GZIP_MAGIC
            head = _gunzip_head(stream, start, Path(path)) if compressed else start
        header = _parse_header(head, Path(path), compressed, warn=False)
    except (OSError, InputError):
        return None
    return header.end_of_data - header.vox_offset


def check_mask_of(mask: str | os.PathLike, image: str | os.PathLike) -> None:
    """InputError unless ``mask`` is a whole uint8 {0, 1} file on ``image``'s exact grid
    (size, spacing, origin and direction as ITK reads both): a mask ``--continue`` keeps."""
    mask = Path(mask)
    header = _inspect(mask)
    if header.datatype != _UINT8 or _scaling(header.raw) is not None:
        kind = np.dtype(_NUMPY_TYPES[header.datatype]).name
        kind = "scaled uint8" if kind == "uint8" else kind
        raise InputError(f"{mask}: its voxels are {kind}, not a uint8 mask")
    for what, mine, theirs in zip(("size", "spacing", "origin", "direction"),
                                  _itk_grid(mask), _itk_grid(Path(image))):
        if mine != theirs:
            raise InputError(f"{mask}: its {what} {_g(mine)} is not the input's {_g(theirs)}")
    if _read_voxels(mask, header).max(initial=0) > 1:
        raise InputError(f"{mask}: holds values other than 0 and 1")


def _itk_grid(path: Path) -> tuple[tuple, tuple, tuple, tuple]:
    """Size, spacing, origin and direction as ITK reads them from the header."""
    reader = _itk_reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as NIfTI ({itk_reason(error)})") from None
    return reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection()


def _itk_reader(path: Path):
    """ITK's NIfTI reader, set to read ``path``."""
    reader = simpleitk().ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(_itk_name(path))
    return reader


def _itk_name(path: Path) -> str:
    """``path`` as ITK takes it, UTF-8 text: a name whose bytes are not UTF-8 would abort
    the process inside ITK, so it is refused in one line before ITK sees it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{path}: the file name is not valid UTF-8, which ITK cannot open: "
                         "rename the file") from None
    return str(path)


def _gunzip_head(stream: BinaryIO, start: bytes, path: Path) -> bytes:
    """The first 348 uncompressed bytes, read across gzip members (an empty first member,
    as some writers leave, is skipped like gzip -d does)."""
    inflater = zlib.decompressobj(wbits=31)
    head, pending = b"", start
    while len(head) < _HEADER_SIZE:
        if inflater.eof:  # the next member, if any
            pending = inflater.unused_data + pending
            if len(pending) < 2:
                pending += stream.read(1 << 16)
            if pending[:2] != _GZIP_MAGIC:
                break
            inflater = zlib.decompressobj(wbits=31)
        if not pending:
            pending = stream.read(1 << 16)
            if not pending:
                break
        try:
            head += inflater.decompress(pending, _HEADER_SIZE - len(head))
        except zlib.error as error:
            raise InputError(f"{path}: not a valid gzip file ({error}): the file is corrupt "
                             "or not a .nii.gz") from None
        pending = inflater.unconsumed_tail
    return head


def _parse_header(head: bytes, path: Path, compressed: bool, warn: bool = True) -> _Header:
    what = "the decompressed data" if compressed else "the file (not gzip-compressed)"
    # sizeof_hdr, read in either byte order, tells the version and the byte order
    sizes = {order: struct.unpack_from(order + "i", head)[0] for order in "<>"} \
        if len(head) >= 4 else {}
    if 540 in sizes.values():
        raise InputError(f"{path}: a NIfTI-2 file, which ITK cannot read: "
                         "save it as NIfTI-1 (e.g. nibabel.Nifti1Image)")
    endian = next((order for order, size in sizes.items() if size == _HEADER_SIZE), "")
    if len(head) < _HEADER_SIZE or not endian:
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
    if not 1 <= dim[0] <= 7 or min(dim[1 : dim[0] + 1]) < 1 or not vox_offset >= _HEADER_SIZE:
        raise InputError(f"{path}: corrupt NIfTI header (dim={list(dim)}, "
                         f"vox_offset={vox_offset:g})")
    if datatype not in _VOXEL_BYTES:
        raise InputError(f"{path}: voxel type code {datatype} is not a grey-value type: "
                         "CT must be stored as integers or floats")
    return _Header(bytes(head[:_HEADER_SIZE]), tuple(dim[1 : dim[0] + 1]), datatype,
                   int(vox_offset), compressed)


def _check_gzip_complete(path: Path, header: _Header, size: int) -> bool:
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
    total, buffer = 0, bytearray(_CHUNK)
    inflater = _Inflater(path)
    try:
        with closing(inflater):
            while count := inflater.readinto(buffer):
                total += count
    except EOFError:
        raise InputError(f"{path}: truncated: the gzip stream stops after "
                         f"{min(total / max(expected, 1), 1):.0%} of the image; copy the file "
                         "again") from None
    except _GZIP_ERRORS as error:
        raise InputError(f"{path}: corrupt gzip data ({error}): copy the file again") from None
    return total, inflater.end


def check_intensities(array: np.ndarray, path: Path, header: _Header | None = None) -> np.ndarray:
    """NaN/inf repaired, normalised data refused, then (with the header) ``_check_air``,
    all from one pass for the lowest and highest value."""
    low, high = float(array.min()), float(array.max())  # NaN and inf propagate here
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = ~np.isfinite(array)
        count = int(bad.sum())
        if count == array.size:
            raise InputError(f"{path}: no voxel has a finite value (all NaN/inf)")
        low = float(array[~bad].min())
        array[bad] = low
        high = float(array.max())
        log.warning("%s: %d NaN/inf voxels set to the lowest value, %g", path, count, low)
    if low >= -0.5 and high <= 1.5:
        raise InputError(f"{path}: intensities span [{low:g}, {high:g}], which looks normalised "
                         "or like a mask: pass the CT in Hounsfield units (air -1000, water 0)")
    return array if header is None else _check_air(array, low, high, header, path)


def _check_air(array: np.ndarray, low: float, high: float, header: _Header,
               path: Path) -> np.ndarray:
    """A CT of a body always shows air (outside it, in the lungs, in the bowel). A volume
    with no voxel under -500 HU is not in Hounsfield units, or was cropped to tissue.

    The common export mistake, unsigned voxels holding HU + 1024 with the rescale
    intercept lost, is corrected when the evidence is unambiguous: unsigned voxels, no
    scaling in the header, voxels near 0, at least 0.1 % of voxels where air would be,
    and tissue above 1024. 8-bit voxels without scaling cannot hold a CT: refused.
    Anything else without air is read as it is, with a warning.
    """
    if low < AIR_HU:
        return array
    scaled = _scaling(header.raw) is not None
    if header.datatype == _UINT8 and not scaled:
        raise InputError(f"{path}: 8-bit voxels ({low:g} to {high:g}) without scaling cannot "
                         "be a CT in Hounsfield units (a display image?): export the CT "
                         "with its full range")
    if header.datatype in _UNSIGNED and not scaled and low < 200 and high > -_UNSIGNED_SHIFT \
            and np.count_nonzero(array < AIR_HU - _UNSIGNED_SHIFT) >= 0.001 * array.size:
        log.warning("%s: unsigned voxels with no rescale intercept and no value under %g HU "
                    "(%g to %g): read as HU + 1024, the intercept of -1024 lost in export; "
                    "1024 subtracted", path, AIR_HU, low, high)
        wide = np.int16 if high + _UNSIGNED_SHIFT <= np.iinfo(np.int16).max else np.float32
        return (array.astype(wide if wide is np.float32 else np.int32) + _UNSIGNED_SHIFT
                ).astype(wide)
    log.warning("%s: no voxel under %g HU (%g to %g), while a CT of a body always shows "
                "air: not in Hounsfield units, or cropped to tissue? The mask may be wrong",
                path, AIR_HU, low, high)
    return array


def itk_reason(error: Exception) -> str:
    """An ITK exception's message as one line, without its C++ source location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    reason = re.sub(r"^.*?ERROR:\s*", "", reason)
    return re.sub(r"^\w+ \(0x[0-9a-fA-F]+\):\s*", "", reason)


def _scaling(raw: bytes) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) when the header scales the voxels, as ITK applies them; else None."""
    slope, inter = struct.unpack_from(_endian(raw) + "2f", raw, 112)
    if slope != 0 and np.isfinite(slope) and (slope, inter) != (1, 0):
        return slope, (inter if np.isfinite(inter) else 0.0)
    return None


def _x(dims: Sequence[int]) -> str:
    return "x".join(str(d) for d in dims)


def _g(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


# ----------------------------------------------------------------------------- writing


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
    return _write(np.ascontiguousarray(mask, dtype=np.uint8), grid, Path(out_path), _UINT8)


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
                  _FLOAT32)


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
        data = array.astype(array.dtype.newbyteorder(_endian(source)), copy=False)
        with atomic_temporary(out_path) as temporary, open(temporary, "wb") as raw:
            _compress_to(raw, (header, memoryview(data).cast("B")))
    except OSError as error:
        raise InputError(f"{out_path}: cannot be written ({error.strerror or error})") from None
    return out_path


def _itk_header(grid: Grid) -> bytes:
    """The NIfTI-1 header ITK writes for a grid made in code (its qform and sform from
    spacing, origin and direction); ``_output_header`` then sets the size and type."""
    import tempfile

    sitk = simpleitk()
    image = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(grid.direction)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "grid.nii")
        sitk.WriteImage(image, path)
        with open(path, "rb") as f:
            return f.read(_HEADER_SIZE)


def _compress_to(raw: BinaryIO, chunks: Sequence[bytes | memoryview]) -> None:
    with _gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as stream:
        for chunk in chunks:
            stream.write(chunk)


def _output_header(input_header: bytes, size: Sequence[int], datatype: int) -> bytes:
    """The input's header with our voxel type: geometry, units and transforms unchanged."""
    endian = _endian(input_header)
    header = bytearray(input_header)
    struct.pack_into(endian + "8h", header, 40, 3, *size, 1, 1, 1, 1)
    bitpix = 8 * _VOXEL_BYTES[datatype]
    struct.pack_into(endian + "3f3h", header, 56, 0, 0, 0, 0, datatype, bitpix)  # intent, type
    struct.pack_into(endian + "3f", header, 108, _DATA_OFFSET, 1, 0)  # vox_offset, slope, inter
    struct.pack_into(endian + "2f", header, 124, 0, 0)  # cal_max, cal_min
    struct.pack_into(endian + "2i", header, 140, 0, 0)  # glmax, glmin
    header[148:252] = b"flare-nnsam".ljust(104, b"\0")  # descrip, aux_file
    header[328:344] = b"\0" * 16  # intent_name
    return bytes(header) + b"\0" * (_DATA_OFFSET - _HEADER_SIZE)


def _endian(header: bytes) -> str:
    return "<" if struct.unpack_from("<i", header)[0] == _HEADER_SIZE else ">"
