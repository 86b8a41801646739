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
grid. Files go to a hidden temporary name in the output folder, then `os.replace`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import struct
import uuid
import zlib
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

import numpy as np

try:  # isal inflates/deflates 2-3x faster than zlib; fall back when it is absent
    from isal import igzip as _gzip
    from isal.isal_zlib import error as _isal_error
except ImportError:  # pragma: no cover - depends on the installation
    import gzip as _gzip

    _isal_error = zlib.error
try:  # isal's gzip reader over bytes in memory (what igzip.decompress uses)
    from isal.isal_zlib import _GzipReader as _InMemoryGzipReader
except ImportError:  # pragma: no cover - depends on the installation
    _InMemoryGzipReader = None
_GZIP_ERRORS = (OSError, ValueError, zlib.error, _isal_error)

log = logging.getLogger(__name__)

CASE_SUFFIX = "_0000.nii.gz"
NIFTI_SUFFIX = ".nii.gz"

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
# Voxel types read as they are (CT is mostly int16); wider ones become float32 HU.
_KEPT_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
               np.dtype(np.float32))
_NUMPY_TYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2",
                768: "u4", 1024: "i8", 1280: "u8"}


@functools.cache
def simpleitk():
    """SimpleITK, imported on first use: its import (about 50 ms) then runs while the
    first case's voxels inflate, instead of before the read can start."""
    import SimpleITK as sitk

    # ITK's own warnings go to stderr with C++ source paths; we log one line each instead.
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    return sitk


class InputError(Exception):
    """A problem with one input that the user can fix; str() is one line naming the file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


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


def list_cases(input_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """The folder's `<case>_0000.nii.gz` files as sorted (case_id, path), hidden ones skipped."""
    folder = Path(input_dir)
    if not folder.exists():
        raise InputError(f"input folder {folder} does not exist: mount the scans there")
    if not folder.is_dir():
        raise InputError(f"input folder {folder} is a file, not a folder")
    try:
        names = sorted(entry.name for entry in os.scandir(folder))
    except OSError as error:
        raise InputError(f"input folder {folder} cannot be listed ({error.strerror})") from None
    cases = [
        (name[: -len(CASE_SUFFIX)], folder / name)
        for name in names
        if name.endswith(CASE_SUFFIX) and len(name) > len(CASE_SUFFIX)
        and not name.startswith(".") and not (folder / name).is_dir()
    ]
    if not cases:
        visible = [name for name in names if not name.startswith(".")]
        if visible:
            found = "it holds " + ", ".join(visible[:3]) + (", ..." if len(visible) > 3 else "")
        else:
            found = "it holds only hidden files" if names else "it is empty"
        raise InputError(f"no *{CASE_SUFFIX} file in input folder {folder} ({found}): "
                         f"inputs must be named <case>{CASE_SUFFIX}")
    return cases


def shard(cases: Sequence, num_parts: int, part_id: int) -> list:
    """Part `part_id` of `num_parts` round-robin parts of `cases` (deterministic, balanced)."""
    for name, value in (("num_parts", num_parts), ("part_id", part_id)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    if num_parts < 1:
        raise ValueError(f"num_parts must be at least 1, got {num_parts}")
    if not 0 <= part_id < num_parts:
        raise ValueError(f"part_id must be in [0, {num_parts - 1}], got {part_id}")
    return list(cases)[part_id::num_parts]


def check_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder if missing and prove it writable by creating a file in it."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"output folder {folder} is a file, not a folder") from None
    except OSError as error:
        raise InputError(f"output folder {folder} cannot be created ({error.strerror}): "
                         "choose another path or create it first") from None
    probe = folder / f".write-test-{uuid.uuid4().hex}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as error:
        raise InputError(f"output folder {folder} is not writable ({error.strerror}): mount it "
                         f"read-write or make it writable for user id {os.getuid()}") from None
    return folder


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Header:
    raw: bytes
    shape: tuple[int, ...]  # dim[1 .. dim[0]], x first
    datatype: int
    vox_offset: int
    compressed: bool  # gzip; _inspect looked at the magic bytes already

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
    are inflated with isal and scaled here, which is 2-4x faster than ITK's zlib and
    lets other threads run meanwhile (the read overlaps start-up). ``itk_voxels`` reads
    them through ITK instead (the reference the tests compare against).
    """
    path = Path(path)
    header = _inspect(path)
    # The voxels first: isal releases the GIL, so the read-ahead overlaps the imports.
    array = None if itk_voxels else _read_voxels(path, header)
    sitk = simpleitk()
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    reader.SetFileName(str(path))
    try:
        if itk_voxels:
            image = reader.Execute()
        else:
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: cannot be read as NIfTI ({_itk_reason(error)})") from None
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
    grid = Grid(source.GetSize(), source.GetSpacing(), source.GetOrigin(),
                source.GetDirection(), header.raw)
    if itk_voxels and image.GetPixelID() == sitk.sitkFloat32:
        array = sitk.GetArrayFromImage(image)
    elif itk_voxels:  # converting from the view skips an intermediate copy in the file's type
        array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    return CtVolume(_check_intensities(array, path), grid, path)


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
        with closing(_voxel_stream(path, header.compressed)) as stream:
            stream.seek(header.vox_offset)
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
    slope, inter = struct.unpack_from(endian + "2f", header.raw, 112)
    if slope != 0 and np.isfinite(slope) and (slope, inter) != (1, 0):
        inter = inter if np.isfinite(inter) else 0.0
        return (array * np.float64(slope) + np.float64(inter)).astype(np.float32)
    return array if array.dtype in _KEPT_TYPES else array.astype(np.float32)


def _voxel_stream(path: Path, compressed: bool) -> BinaryIO:
    """The file's uncompressed bytes as a stream.

    A gzip file is read whole, then inflated from memory. The file-backed reader takes the
    GIL back for every 512 KB it reads, and beside a thread running Python (the read-ahead
    beside the imports) each take-back waits for that thread: 52 MB took 0.37 s instead of
    0.11 s. From memory it inflates in one call without the GIL: 0.11 s either way.
    """
    if not compressed:
        return open(path, "rb")
    if _InMemoryGzipReader is not None:
        return _InMemoryGzipReader(path.read_bytes())
    return _gzip.open(path, "rb")  # pragma: no cover - without isal


def _inspect(path: Path) -> _Header:
    """Header and completeness checks that cost milliseconds, before ITK reads anything."""
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise InputError(f"{path}: is a folder, not a NIfTI file")
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
    if compressed:
        _check_gzip_complete(path, header, size)
    elif size < header.end_of_data:
        raise InputError(f"{path}: truncated: the header describes {header.end_of_data} bytes "
                         f"but the file holds {size}; copy it again")
    return header


def _gunzip_head(stream: BinaryIO, start: bytes, path: Path) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    head, pending = b"", start
    while len(head) < _HEADER_SIZE and not inflater.eof:
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


def _parse_header(head: bytes, path: Path, compressed: bool) -> _Header:
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
    if not 1 <= dim[0] <= 7 or min(dim[1 : dim[0] + 1]) < 1 or not vox_offset >= _HEADER_SIZE:
        raise InputError(f"{path}: corrupt NIfTI header (dim={list(dim)}, "
                         f"vox_offset={vox_offset:g})")
    if datatype not in _VOXEL_BYTES:
        raise InputError(f"{path}: voxel type code {datatype} is not a grey-value type: "
                         "CT must be stored as integers or floats")
    return _Header(bytes(head[:_HEADER_SIZE]), tuple(dim[1 : dim[0] + 1]), datatype,
                   int(vox_offset), compressed)


def _check_gzip_complete(path: Path, header: _Header, size: int) -> None:
    expected = header.end_of_data
    with open(path, "rb") as stream:
        stream.seek(max(size - 4, 0))
        tail = stream.read(4)
    # A truncated file has no trailer: its last 4 bytes match the size by chance (2**-32).
    if len(tail) == 4 and struct.unpack("<I", tail)[0] == expected % 2**32:
        return
    total = 0
    buffer = bytearray(_CHUNK)
    try:
        with _gzip.open(path, "rb") as stream:
            while count := stream.readinto(buffer):
                total += count
    except EOFError:
        raise InputError(f"{path}: truncated: the gzip stream stops after "
                         f"{min(total / expected, 1):.0%} of the image; copy the file again") \
            from None
    except _GZIP_ERRORS as error:
        raise InputError(f"{path}: corrupt gzip data ({error}): copy the file again") from None
    if total < expected:
        raise InputError(f"{path}: truncated: {total} bytes decompressed but the header "
                         f"describes {expected}; copy the file again")


def _check_intensities(array: np.ndarray, path: Path) -> np.ndarray:
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
    return array


def _itk_reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[-1] if lines else type(error).__name__
    reason = re.sub(r"^.*?ERROR:\s*", "", reason)
    return re.sub(r"^\w+ \(0x[0-9a-fA-F]+\):\s*", "", reason)


def _x(dims: Sequence[int]) -> str:
    return "x".join(str(d) for d in dims)


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
        with _atomic(out_path) as temporary:
            if grid.header is not None:
                header = _output_header(grid.header, grid.size, datatype)
                # NIfTI data follows the header's byte order; a no-op on little-endian input
                data = array.astype(array.dtype.newbyteorder(_endian(grid.header)), copy=False)
                with open(temporary, "wb") as raw:
                    _compress_to(raw, (header, memoryview(data).cast("B")))
            else:  # a grid made in code, not read from a file: ITK writes the geometry
                sitk = simpleitk()
                image = sitk.GetImageFromArray(array)
                image.SetSpacing(grid.spacing)
                image.SetOrigin(grid.origin)
                image.SetDirection(grid.direction)
                sitk.WriteImage(image, str(temporary), True, 1)
    except OSError as error:
        raise InputError(f"{out_path}: cannot be written ({error.strerror or error})") from None
    return out_path


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


@contextmanager
def _atomic(out_path: Path) -> Iterator[Path]:
    """A hidden temporary `.nii.gz` beside `out_path`, moved onto it only when complete."""
    stem = out_path.name[: -len(NIFTI_SUFFIX)]
    temporary = out_path.with_name(f".{stem}.{uuid.uuid4().hex[:12]}{NIFTI_SUFFIX}")
    # 0o666 less the umask, like any new file: a temporary from mkstemp would stay 0o600.
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield temporary
        os.replace(temporary, out_path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
