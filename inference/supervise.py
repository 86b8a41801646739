"""One case that kills its process costs that case only.

The command line forks a worker that predicts the cases and reports each one it starts
and ends through a pipe. If the worker dies of a signal (the kernel's out-of-memory
killer under ``docker run -m``, a crash in native code), the parent says which case it
was on and forks a new worker for the cases after it. The parent imports nothing heavy
(forked before numpy, ITK or a backend is loaded), so the out-of-memory killer picks the
worker, which also raises its own ``oom_score_adj``.

SIGTERM and SIGINT reach the parent (PID 1 in the container); it passes them on to the
worker, which finishes writing the masks it has and abandons the case in flight
(``Stopped``), and exits ``128 + signal``. A worker whose parent dies (SIGKILL) gets
SIGTERM from the kernel and stops the same way.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

log = logging.getLogger("inference")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_PR_SET_PDEATHSIG = 1


class Stopped(BaseException):
    """SIGTERM or SIGINT: not an ``Exception``, so no per-case handler swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Progress:
    """The worker's side of the pipe: one line per case started and ended.

    ``replacement`` says the worker took over from one that was killed, and ``born`` when
    (``time.perf_counter()``), so its start-up is timed from its own start.
    """

    def __init__(self, fd: int | None = None, replacement: bool = False):
        self.fd = fd
        self.replacement = replacement
        self.born = time.perf_counter()

    def started(self, index: int) -> None:
        self._send(f"start {index}")

    def ended(self, index: int, ok: bool = True) -> None:
        self._send(f"{'end' if ok else 'fail'} {index}")

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line + "\n").encode())
        except OSError:  # the parent is gone (EPIPE): no one to tell; SIGTERM follows
            self.fd = None


def stop_on_signals() -> None:
    """Turn the first SIGTERM/SIGINT into ``Stopped`` in the main thread; ignore repeats
    while the worker winds down (SIGKILL still ends it)."""
    def handler(signum, _frame):
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Stopped(signum)

    for each in STOP_SIGNALS:
        signal.signal(each, handler)


def supervise(cases: Sequence, work: Callable[[list, Progress], int]) -> tuple[int, list]:
    """Run ``work(cases, progress)`` in forked workers until every case is done or lost.

    ``work`` returns 0, or 2 when nothing could run (weights, device). Returns the exit
    code (0; 1 when a case failed; 2; ``128 + signal`` when stopped) and the failed cases.
    A case whose worker was killed is failed; the cases it had queued for writing and the
    cases after it go to a new worker. A worker killed before its first case ends the run.
    """
    if not hasattr(os, "fork"):  # pragma: no cover - not on Linux
        return _in_process(list(cases), work)
    remaining, failed, replacement = list(cases), [], False
    while remaining:
        status, started, ended, lost = _run_worker(remaining, work, replacement)
        replacement = True
        failed += [remaining[i] for i in sorted(lost)]
        if os.WIFEXITED(status):
            code = os.WEXITSTATUS(status)
            return (code if code else (1 if failed else 0)), failed
        signum = os.WTERMSIG(status)
        unfinished = [i for i in sorted(started) if i not in ended and i not in lost]
        why, hint = signal_name(signum), _oom_hint(signum)
        if unfinished:
            crashed = unfinished[-1]
            after = unfinished[:-1] + list(range(crashed + 1, len(remaining)))
            log.error("%s: failed: the process was killed by %s while predicting it%s; %d "
                      "case(s) left go on in a new process", _case_name(remaining[crashed]),
                      why, hint, len(after))
            failed.append(remaining[crashed])
        elif started:  # between two cases (reading the next one)
            after = list(range(max(started) + 1, len(remaining)))
            log.error("error: the process was killed by %s between cases%s; %d case(s) left "
                      "go on in a new process", why, hint, len(after))
        else:
            log.error("error: the process was killed by %s before its first case%s", why, hint)
            return 1, failed + remaining
        remaining = [remaining[i] for i in after]
    return (1 if failed else 0), failed


def _in_process(cases: list, work) -> tuple[int, list]:  # pragma: no cover - not on Linux
    stop_on_signals()
    try:
        return work(cases, Progress()), []
    except Stopped as stop:
        return 128 + stop.signum, []


def _run_worker(cases: list, work,
                replacement: bool) -> tuple[int, set[int], set[int], set[int]]:
    """Fork, let the child run ``work`` on ``cases``; (wait status, started, ended, failed)."""
    read_end, write_end = os.pipe()
    flush_streams()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_end)
        code = 1
        try:
            _raise_own_oom_score()
            stop_on_signals()
            _stop_with(parent)
            code = work(cases, Progress(write_end, replacement))
        except Stopped as stop:
            code = 128 + stop.signum
            if os.getppid() != parent:
                log.error("error: the parent process is gone (killed?): stopped; the masks "
                          "written are complete")
        except BaseException:  # a bug: show it, and let the parent go on
            log.exception("error: the worker failed")
            code = 1
        finally:
            logging.shutdown()
            flush_streams()
            os._exit(code)  # no interpreter teardown (see inference.__main__)
    os.close(write_end)
    forwarded = _forward_signals(pid)
    marks = {"start": set(), "end": set(), "fail": set()}
    try:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                kind, _, index = line.decode().strip().partition(" ")
                marks[kind].add(int(index))
        _, status = _wait(pid)
    finally:
        for each, previous in forwarded.items():
            signal.signal(each, previous)
    return status, marks["start"], marks["end"] | marks["fail"], marks["fail"]


def flush_streams() -> None:
    """Flush stdout and stderr; a stream whose reader is gone (EPIPE) loses its text, and
    the process (a forked worker above all, which must reach its ``os._exit``) goes on."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def _forward_signals(pid: int) -> dict:
    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    return {each: signal.signal(each, forward) for each in STOP_SIGNALS}


def _wait(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:  # pragma: no cover - PEP 475 retries already
            continue


def _stop_with(parent: int) -> None:
    """Have the kernel send this worker SIGTERM when ``parent`` dies (Linux's
    PR_SET_PDEATHSIG): an orphan stops as a stopped run does, keeping its whole masks,
    instead of predicting for no one."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not on Linux
        return
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _raise_own_oom_score() -> None:
    """Make the worker the out-of-memory killer's first choice (raising needs no privilege)."""
    try:
        Path("/proc/self/oom_score_adj").write_text("1000")
    except OSError:
        pass


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _oom_hint(signum: int) -> str:
    """Why a SIGKILL most likely came: the memory limit, read from the cgroup."""
    if signum != signal.SIGKILL:
        return ""
    from inference.budget import host_memory_limit_mb

    limit = host_memory_limit_mb()
    if limit is None:
        return " (out of memory?)"
    return f" (out of memory? the container's memory limit is {limit:.0f} MB)"


def _case_name(case) -> str:
    return case[0] if isinstance(case, tuple) else str(case)
