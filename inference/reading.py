"""Which cases a run still has to do, and reads that run in background threads.

Kept apart from the predictor so the command line can start the first case's read
before the predictor (and the backend behind it) is imported: start-up is paid on every
case, and the read is the longest part of it.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inference import nifti

log = logging.getLogger(__name__)


def cases_to_do(cases: list[tuple[str, Path]], output_dir: Path,
                skip_existing: bool) -> list[tuple[str, Path]]:
    """The cases a run predicts: all, or with ``--continue`` those without a complete mask.

    A mask counts as written only if it is this case's: a whole uint8 {0, 1} NIfTI file on
    the input's exact grid. A 0-byte or cut-off file left by a killed run, or another
    case's or tool's file, is done again.
    """
    if not skip_existing:
        return list(cases)
    todo = []
    for case, path in cases:
        mask = Path(output_dir) / f"{case}.nii.gz"
        if mask.exists():
            try:
                nifti.check_mask_of(mask, path)
                continue
            except nifti.InputError as error:
                log.warning("--continue: %s; predicting %s again", error, case)
        todo.append((case, path))
    return todo


@dataclass
class FirstRead:
    """A read started before the predictor exists, so it overlaps imports and model load."""

    path: Path
    future: Future


def read_ahead(path: Path) -> FirstRead:
    """Start reading ``path`` in a background thread; errors surface when ``run`` uses it."""
    executor = ThreadPoolExecutor(1, "read-ahead")
    future = executor.submit(timed_read, path)
    executor.shutdown(wait=False)  # the thread ends after this one read
    return FirstRead(Path(path), future)


def timed_read(path: Path) -> tuple[nifti.CtVolume, float]:
    """The volume and the seconds its read took."""
    start = time.perf_counter()
    volume = nifti.read_ct(path)
    return volume, time.perf_counter() - start
