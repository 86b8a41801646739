"""The input and output folders: which files are cases, and files that appear whole or not at all.

No numpy and no image library: the command line lists the cases and checks the output
folder before the worker process that reads them exists (``inference.supervise``).
"""

from __future__ import annotations

import numbers
import os
import re
import stat
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux
    fcntl = None

CASE_SUFFIX = "_0000.nii.gz"
NIFTI_SUFFIX = ".nii.gz"
TEMP_SUFFIX = ".partial"
NAME_MAX = 255  # bytes in a file name on Linux file systems
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}(\.partial|\.nii\.gz)")


class InputError(Exception):
    """A problem with one input that the user can fix; str() is one line naming the file."""

    def __init__(self, message: str):
        # lines joined into one; other characters kept (a file name's are logged escaped)
        super().__init__(re.sub(r"\s*\n\s*", " ", str(message)).strip())


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
    cases = [(name[: -len(CASE_SUFFIX)], folder / name) for name in names
             if _why_ignored(folder, name) is None]
    if not cases:
        ignored = ignored_entries(folder, names)
        if ignored:
            found = "it holds " + ", ".join(f"{name} ({why})" for name, why in ignored[:3]) + (
                ", ..." if len(ignored) > 3 else "")
        else:
            found = "it holds only hidden files" if names else "it is empty"
        raise InputError(f"no *{CASE_SUFFIX} file in input folder {folder} ({found}): "
                         f"inputs must be files named <case>{CASE_SUFFIX}")
    return cases


def ignored_entries(folder: Path, names: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(name, why) for each visible entry of ``folder`` that is not read as a case."""
    folder = Path(folder)
    if names is None:
        try:
            names = sorted(entry.name for entry in os.scandir(folder))
        except OSError:
            return []
    ignored = []
    for name in names:
        why = _why_ignored(folder, name)
        if why is not None and (not name.startswith(".") or name.endswith(NIFTI_SUFFIX)):
            ignored.append((name, why))
    return ignored


def _why_ignored(folder: Path, name: str) -> str | None:
    """Why ``name`` is not a case, or None when it is one."""
    if name.startswith("."):
        return "a hidden file"
    if not name.endswith(CASE_SUFFIX):
        if re.fullmatch(r".+_\d{4}\.nii\.gz", name):
            return f"another channel: only <case>{CASE_SUFFIX} is read"
        if name.endswith((".nii", "_0000.nii")):
            return f"not gzip-compressed: name and compress it as <case>{CASE_SUFFIX}"
        return f"not named <case>{CASE_SUFFIX}"
    if len(name) == len(CASE_SUFFIX):
        return "no case name before _0000"
    return not_a_file(folder / name)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def not_a_file(path: Path) -> str | None:
    """Why ``path`` (its link followed) is not a regular file to read, or None if it is one.

    A FIFO would wait for a writer for ever. A broken link or a loop gives None: it is
    read as a case, and the read says what is wrong with it.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    kind = next((name for test, name in _KINDS if test(mode)), "a special file")
    return f"{kind}, not a regular file"


def shard(cases: Sequence, num_parts: int, part_id: int) -> list:
    """Part `part_id` of `num_parts` round-robin parts of `cases` (deterministic, balanced)."""
    for name, value in (("num_parts", num_parts), ("part_id", part_id)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
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


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """Create the folder of an option's output file if missing and prove it writable, as
    ``check_output_dir`` does for the masks: before the first case, not after the last."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path} is a folder: name a file in it")
    try:
        check_output_dir(path.parent)
    except InputError as error:
        raise InputError(f"{option} {path}: {error}") from None
    return path


@contextmanager
def atomic_temporary(out_path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """A hidden temporary beside ``out_path``, moved onto it only when complete.

    Every file the project writes goes through here, so a killed run leaves either the whole
    file or the old one, never half of one. The temporary's name ends in ``.partial``, never
    ``.nii.gz``: a run killed mid-write leaves nothing a ``*.nii.gz`` listing returns.
    ``keep_suffix`` adds ``out_path``'s own suffix after it, for writers that choose the
    format by the name (ITK, matplotlib). The name in it is shortened where the whole name
    would pass ``NAME_MAX`` bytes. The writer holds a lock on it while it writes, so
    ``remove_stale_temporaries`` can tell a dead run's file from a live run's.
    """
    out_path = Path(out_path)
    name = out_path.name
    suffix = NIFTI_SUFFIX if name.endswith(NIFTI_SUFFIX) else out_path.suffix
    stem = name[: -len(suffix)] if suffix and (keep_suffix or suffix == NIFTI_SUFFIX) else name
    tag = f".{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}{suffix if keep_suffix else ''}"
    temporary = out_path.with_name(f".{_within(stem, NAME_MAX - 1 - len(tag))}{tag}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # 0o666 less the umask, like any new file: a temporary from mkstemp would stay 0o600.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        _lock(fd)
        yield temporary
        os.replace(temporary, out_path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)  # releases the lock


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """``text`` into ``path`` through ``atomic_temporary``: the whole text or the old file."""
    path = Path(path)
    with atomic_temporary(path) as temporary:
        temporary.write_text(text)
    return path


def _within(name: str, size: int) -> str:
    """``name`` cut to whole characters that take at most ``size`` bytes on disk: the
    temporary's name is longer than the mask's, which may already fill ``NAME_MAX``."""
    while len(os.fsencode(name)) > size:
        name = name[:-1]
    return name


def remove_stale_temporaries(folder: str | os.PathLike, min_age_s: float = 5.0) -> list[Path]:
    """Delete the temporaries of runs that were killed while writing into ``folder``.

    A temporary is stale when no process holds its lock (locks die with their process)
    and it is older than ``min_age_s`` (a live writer locks it within microseconds of
    creating it). Names of this version (``.<case>.<hex12>.partial``) and of earlier ones
    (``.<case>.<hex12>.nii.gz``) are recognised; nothing else is touched.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not _TEMPORARY.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                continue
            fd = os.open(entry.path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _lock(fd):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _lock(fd: int) -> bool:
    """Take an exclusive lock on ``fd`` without waiting; False if another process holds one."""
    if fcntl is None:  # pragma: no cover - not on Linux
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: age alone decides
        return True
