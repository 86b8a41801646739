"""Read challenge CT scans (NIfTI-1), checked, as a ``CtVolume`` on its exact voxel grid.

Reading checks what SimpleITK lets through silently (a truncated .nii.gz reads as zeros)
and turns each user-caused problem into one `InputError` line that names the file. The
header's checks and repairs are ``inference.nifti_header``'s, the gzip stream
``inference.gzip_stream``'s; masks are written by ``inference.nifti_writer``. Choices,
each with a test in tests/inference/test_nifti.py:

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
"""

from __future__ import annotations

import functools
import logging
import os
import re
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

import numpy as np

from inference import gzip_stream, nifti_header
from inference.folders import InputError

log = logging.getLogger(__name__)


# Let ITK orthonormalise a sheared sform instead of refusing the file. Set once, here: the
# predictor reads in a thread, and setenv racing getenv elsewhere can crash the process.
os.environ.setdefault("ITK_NIFTI_SFORM_PERMISSIVE", "1")

AIR_HU = -500.0  # every CT of a body has voxels below this (air)
_UNSIGNED_SHIFT = -1024  # HU = stored value - 1024 when the intercept was lost
# Voxel types read as they are (CT is mostly int16); wider ones become float32 HU.
_KEPT_TYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16),
               np.dtype(np.float32))


@functools.cache
def simpleitk():
    """SimpleITK, imported on first use: its import then runs while the first case's
    voxels inflate, instead of before the read can start."""
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
    header = nifti_header.inspect(path)
    nifti_header.check_transforms(header.raw, path)
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
    spacing, direction = nifti_header.checked_spacing(source.GetSpacing(),
                                                      source.GetDirection(), header.raw, path)
    grid = Grid(source.GetSize(), spacing, source.GetOrigin(), direction, header.raw)
    if itk_voxels and image.GetPixelID() == sitk.sitkFloat32:
        array = sitk.GetArrayFromImage(image)
    elif itk_voxels:  # converting from the view skips an intermediate copy in the file's type
        array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    return CtVolume(check_intensities(array, path, header), grid, path)


def _read_voxels(path: Path, header: nifti_header.Header) -> np.ndarray:
    """The voxels (z, y, x) in the file's own type, native byte order; float32 where
    scl_slope/scl_inter scale them (as ITK does).

    Inflated straight into the array's memory: no intermediate copy, and no float32
    conversion of the whole volume (preprocessing converts what it uses, slab by slab).
    """
    kind = np.dtype(nifti_header.NUMPY_TYPES[header.datatype])
    array = np.empty(header.shape[:3][::-1],
                     kind.newbyteorder(nifti_header.byte_order(header.raw)))
    view, filled = memoryview(array).cast("B"), 0
    try:
        with closing(_voxel_stream(path, header)) as stream:
            if stream.seekable():
                stream.seek(header.vox_offset)
            elif len(skipped := stream.read(header.vox_offset)) < header.vox_offset:
                raise EOFError(f"the data end at byte {len(skipped)}, inside the header")
            while filled < array.nbytes and (count := stream.readinto(view[filled:])):
                filled += count
    except (EOFError, *gzip_stream.GZIP_ERRORS) as error:
        raise InputError(f"{path}: cannot read the voxels ({error}): copy the file again") \
            from None
    if filled < array.nbytes:
        raise InputError(f"{path}: truncated: {filled} of {array.nbytes} voxel bytes; copy the "
                         "file again")
    if not array.dtype.isnative:
        array = array.byteswap().view(array.dtype.newbyteorder("="))
    if (scale := nifti_header.scaling(header.raw)) is not None:
        slope, inter = scale
        return (array * np.float64(slope) + np.float64(inter)).astype(np.float32)
    return array if array.dtype in _KEPT_TYPES else array.astype(np.float32)


def _voxel_stream(path: Path, header: nifti_header.Header) -> BinaryIO:
    """The file's uncompressed bytes as a stream.

    A whole gzip file (its trailer checked) is mapped into memory and inflated in one call
    that releases the GIL: the read-ahead beside the imports is not slowed by taking the
    GIL back every block, as the file-backed gzip reader is, and the compressed bytes stay
    clean page cache, which the kernel reclaims under a memory limit, instead of a private
    copy of the whole compressed file. Anything else (bytes after the data, a file that
    cannot be mapped) is inflated in chunks.
    """
    if not header.compressed:
        return open(path, "rb")
    if header.trailer_ok and gzip_stream.IN_MEMORY_READER is not None:
        try:
            return gzip_stream.MappedGzip(path)
        except (OSError, ValueError):  # a file system without mmap
            pass
    return gzip_stream.Inflater(path)


def check_mask_of(mask: str | os.PathLike, image: str | os.PathLike) -> None:
    """InputError unless ``mask`` is a whole uint8 {0, 1} file on ``image``'s exact grid
    (size, spacing, origin and direction as ITK reads both): a mask ``--continue`` keeps."""
    mask = Path(mask)
    header = nifti_header.inspect(mask)
    if header.datatype != nifti_header.UINT8 or nifti_header.scaling(header.raw) is not None:
        kind = np.dtype(nifti_header.NUMPY_TYPES[header.datatype]).name
        kind = "scaled uint8" if kind == "uint8" else kind
        raise InputError(f"{mask}: its voxels are {kind}, not a uint8 mask")
    for what, mine, theirs in zip(("size", "spacing", "origin", "direction"),
                                  _itk_grid(mask), _itk_grid(Path(image))):
        if mine != theirs:
            raise InputError(f"{mask}: its {what} {_numbers_text(mine)} is not the input's "
                             f"{_numbers_text(theirs)}")
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


def check_intensities(array: np.ndarray, path: Path,
                      header: nifti_header.Header | None = None) -> np.ndarray:
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


def _check_air(array: np.ndarray, low: float, high: float, header: nifti_header.Header,
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
    scaled = nifti_header.scaling(header.raw) is not None
    if header.datatype == nifti_header.UINT8 and not scaled:
        raise InputError(f"{path}: 8-bit voxels ({low:g} to {high:g}) without scaling cannot "
                         "be a CT in Hounsfield units (a display image?): export the CT "
                         "with its full range")
    if header.datatype in nifti_header.UNSIGNED and not scaled and low < 200 \
            and high > -_UNSIGNED_SHIFT \
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


def _numbers_text(values: Sequence[float]) -> str:
    """Numbers as people write a point or a size: (0.8, 0.8, 2.5)."""
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
