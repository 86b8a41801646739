"""The gzip stream under a .nii.gz: inflating it into memory and deflating it.

isal's inflate and deflate where it is installed (faster than zlib, and its in-memory
reader releases the GIL for the whole file), zlib's otherwise. Nothing here knows NIfTI:
``inference.nifti_header`` checks that a stream is whole, ``inference.nifti`` reads the
voxels through it, ``inference.nifti_writer`` writes masks through it.
"""

from __future__ import annotations

import io
import mmap
import zlib
from pathlib import Path
from typing import BinaryIO, Sequence

from inference.folders import InputError

try:  # isal inflates and deflates faster than zlib; fall back when it is absent
    from isal import igzip as _gzip
    from isal import isal_zlib as _zlib
    from isal.isal_zlib import _GzipReader as IN_MEMORY_READER
except ImportError:  # pragma: no cover - depends on the installation
    import gzip as _gzip

    _zlib = zlib
    IN_MEMORY_READER = None
GZIP_ERRORS = (OSError, ValueError, zlib.error, _zlib.error)
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1 << 24  # compressed bytes inflated at a time by ``Inflater``


class MappedGzip(io.RawIOBase):
    """isal's in-memory gzip reader over the file mapped read-only."""

    def __init__(self, path: Path):
        super().__init__()
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._map.madvise(mmap.MADV_SEQUENTIAL)
        self._view = memoryview(self._map)
        self._reader = IN_MEMORY_READER(self._view)

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


class Inflater(io.RawIOBase):
    """A gzip file's uncompressed bytes, inflated from compressed chunks of ``CHUNK`` bytes.

    Several members are read in turn, an empty one included; bytes after the last member
    that do not start another one end the data, as for gzip -d. A member cut short raises
    EOFError; zlib checks each member's CRC at its end. Slower than the mapped reader (a
    copy per chunk), so it serves the files that one cannot read.
    """

    def __init__(self, path: Path, chunk: int = CHUNK):
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
        if self._pending[:2] != GZIP_MAGIC:
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


def gunzip_head(stream: BinaryIO, start: bytes, size: int, path: Path) -> bytes:
    """The first ``size`` uncompressed bytes of a gzip file whose first bytes, ``start``,
    were read from ``stream`` already, read across gzip members (an empty first member, as
    some writers leave, is skipped like gzip -d does)."""
    inflater = zlib.decompressobj(wbits=31)
    head, pending = b"", start
    while len(head) < size:
        if inflater.eof:  # the next member, if any
            pending = inflater.unused_data + pending
            if len(pending) < 2:
                pending += stream.read(1 << 16)
            if pending[:2] != GZIP_MAGIC:
                break
            inflater = zlib.decompressobj(wbits=31)
        if not pending:
            pending = stream.read(1 << 16)
            if not pending:
                break
        try:
            head += inflater.decompress(pending, size - len(head))
        except zlib.error as error:
            raise InputError(f"{path}: not a valid gzip file ({error}): the file is corrupt "
                             "or not a .nii.gz") from None
        pending = inflater.unconsumed_tail
    return head


def compress_to(raw: BinaryIO, chunks: Sequence[bytes | memoryview]) -> None:
    """``chunks`` gzipped into ``raw`` at a fast level, with no time stamp (the same bytes
    give the same file)."""
    with _gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as stream:
        for chunk in chunks:
            stream.write(chunk)
