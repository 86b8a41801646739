"""Interruptions: a killed worker, SIGTERM, temporaries left by a killed run, --continue."""

import fcntl
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import SimpleITK as sitk

from inference.folders import remove_stale_temporaries
from inference.supervise import supervise
from tests.inference.conftest import write_phantom_case
from tests.inference.test_cli import ROOT, check_outputs, run_cli


def test_a_case_that_kills_its_worker_costs_that_case_only(caplog):
    cases = [(f"c{i}", None) for i in range(5)]
    killed_once = []

    def work(part, report):
        for i, (case, _) in enumerate(part):
            report.started(i)
            if case == "c2" and not killed_once:
                killed_once.append(case)
                os.kill(os.getpid(), signal.SIGKILL)
            report.ended(i, ok=case != "c4")
        return 0

    code, failed = supervise(cases, work)
    assert code == 1
    assert [case for case, _ in failed] == ["c2", "c4"]  # c2 was killed, c4 failed alone
    err = caplog.text
    assert "c2: failed: the process was killed by SIGKILL while predicting it" in err
    assert "2 case(s) left go on in a new process" in err


def test_a_worker_killed_before_its_first_case_ends_the_run(caplog):
    def work(part, report):
        os.kill(os.getpid(), signal.SIGKILL)

    code, failed = supervise([("a", None), ("b", None)], work)
    assert code == 1 and [c for c, _ in failed] == ["a", "b"]
    assert "killed by SIGKILL before its first case" in caplog.text


def test_cases_queued_for_writing_when_the_worker_died_are_done_again(tmp_path):
    seen = tmp_path / "parts"  # the workers are forked: they tell the test through a file

    def work(part, report):
        with open(seen, "a") as f:
            f.write(" ".join(case for case, _ in part) + "\n")
        report.started(0)  # c0 computed, its write still queued ...
        if len(part) > 1:
            report.started(1)  # ... while c1 is computed, and the worker dies
            os.kill(os.getpid(), signal.SIGKILL)
        report.ended(0)
        return 0

    code, failed = supervise([("c0", None), ("c1", None)], work)
    assert [c for c, _ in failed] == ["c1"] and code == 1
    assert seen.read_text().splitlines() == ["c0 c1", "c0"]


def _start(inputs, outputs, weights, *extra):
    cmd = [sys.executable, "-m", "inference", "-i", str(inputs), "-o", str(outputs),
           "--weights", str(weights), "--disable-progress-bar", "--device", "cpu", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def many_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i in range(12):
        write_phantom_case(folder, f"case{i:02d}", i, shape=(160, 140, 40))
    return folder


def test_sigterm_stops_soon_and_leaves_only_whole_masks(many_cases, tmp_path, tiny_weights):
    out = tmp_path / "out"
    run = _start(many_cases, out, tiny_weights, "--backend", "onnx")
    _wait_for(lambda: out.is_dir() and any(out.glob("*.nii.gz")))
    run.send_signal(signal.SIGTERM)
    started = time.monotonic()
    _, err = run.communicate(timeout=60)
    assert time.monotonic() - started < 5  # docker stop's grace period is 10 s
    assert run.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    names = sorted(p.name for p in out.iterdir())
    assert names and all(n.endswith(".nii.gz") and not n.startswith(".") for n in names)
    assert len(names) < 12
    check_outputs(many_cases, out, [n[: -len(".nii.gz")] for n in names])


def test_a_killed_worker_loses_its_case_and_the_run_goes_on(many_cases, tmp_path,
                                                            tiny_weights):
    out = tmp_path / "out"
    run = _start(many_cases, out, tiny_weights, "--backend", "onnx")
    _wait_for(lambda: out.is_dir() and any(out.glob("*.nii.gz")))
    worker = _children(run.pid)
    assert len(worker) == 1
    os.kill(worker[0], signal.SIGKILL)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 1, err
    lost = [line for line in err.splitlines() if "was killed by SIGKILL" in line]
    assert len(lost) == 1, err
    case = lost[0].split(":")[0]
    written = sorted(p.name[: -len(".nii.gz")] for p in out.glob("*.nii.gz"))
    assert case not in written and len(written) == 11
    assert err.splitlines()[-1] == f"1 of 12 cases failed: {case}"
    check_outputs(many_cases, out, written)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_a_worker_whose_parent_is_killed_stops_quietly_keeping_whole_masks(many_cases,
                                                                          tmp_path,
                                                                          tiny_weights):
    out = tmp_path / "out"
    run = _start(many_cases, out, tiny_weights, "--backend", "onnx")
    _wait_for(lambda: out.is_dir() and any(out.glob("*.nii.gz")))
    assert len(_children(run.pid)) == 1
    os.kill(run.pid, signal.SIGKILL)
    _, err = run.communicate(timeout=60)  # until the orphan lets go of stderr: it ended
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert "the parent process is gone" in err.splitlines()[-1], err
    names = sorted(p.name for p in out.iterdir())
    assert all(n.endswith(".nii.gz") and not n.startswith(".") for n in names), names
    assert len(names) < 12  # it stopped instead of predicting for no one
    check_outputs(many_cases, out, [n[: -len(".nii.gz")] for n in names])


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry))
    return found


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    old = time.time() - 60
    stale = tmp_path / ".case.0123456789ab.partial"
    legacy = tmp_path / ".case.ba9876543210.nii.gz"  # the name earlier versions used
    live = tmp_path / ".other.00112233aabb.partial"
    fresh = tmp_path / ".new.445566778899.partial"
    mine = tmp_path / ".notes.txt"
    for path in (stale, legacy, live, fresh, mine):
        path.write_bytes(b"")
        if path is not fresh:
            os.utime(path, (old, old))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(live)!r}, os.O_RDONLY)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        removed = remove_stale_temporaries(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert sorted(removed) == sorted([stale, legacy])
    assert live.exists() and fresh.exists() and mine.exists()
    fd = os.open(live, os.O_RDONLY)  # the lock died with its process
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_a_run_clears_what_a_killed_run_left(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    write_phantom_case(inputs, "a", 1)
    out = tmp_path / "out"
    out.mkdir()
    left = out / ".a.0123456789ab.partial"
    left.write_bytes(b"")
    os.utime(left, (time.time() - 60,) * 2)
    result = run_cli(inputs, out, tiny_weights, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz"]
    assert "removed 1 temporary file(s)" in result.stderr


def test_continue_redoes_empty_and_cut_off_masks(tmp_path, tiny_weights):
    inputs = tmp_path / "in"
    for i, case in enumerate(("done", "empty", "cut")):
        write_phantom_case(inputs, case, i)
    out = tmp_path / "out"
    first = run_cli(inputs, out, tiny_weights, "--device", "cpu")
    assert first.returncode == 0, first.stderr
    whole = (out / "cut.nii.gz").read_bytes()
    (out / "empty.nii.gz").write_bytes(b"")
    (out / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    kept = (out / "done.nii.gz").stat().st_mtime_ns
    again = run_cli(inputs, out, tiny_weights, "--device", "cpu", "--continue")
    assert again.returncode == 0, again.stderr
    assert "--continue: 1 of 3 cases already written" in again.stderr
    for case in ("empty", "cut"):
        assert sum(f"predicting {case} again" in line
                   for line in again.stderr.splitlines()) == 1, again.stderr
    assert (out / "done.nii.gz").stat().st_mtime_ns == kept
    check_outputs(inputs, out, ["done", "empty", "cut"])


def test_continue_redoes_a_mask_that_is_not_this_cases(tmp_path, tiny_weights):
    inputs, out = tmp_path / "in", tmp_path / "out"
    wrong = ("small", "ct_copy", "moved", "label_2")
    for i, case in enumerate(("done", *wrong)):
        write_phantom_case(inputs, case, i)
    assert run_cli(inputs, out, tiny_weights, "--device", "cpu").returncode == 0
    kept = (out / "done.nii.gz").stat().st_mtime_ns
    sitk.WriteImage(sitk.Image([16, 16, 8], sitk.sitkUInt8), str(out / "small.nii.gz"))
    shutil.copy(inputs / "ct_copy_0000.nii.gz", out / "ct_copy.nii.gz")  # the int16 CT itself
    moved = sitk.ReadImage(str(out / "moved.nii.gz"))
    moved.SetOrigin([v + 1.0 for v in moved.GetOrigin()])
    sitk.WriteImage(moved, str(out / "moved.nii.gz"))
    raw = bytearray(gzip.decompress((out / "label_2.nii.gz").read_bytes()))
    raw[-1] = 2  # its own header and grid, a value that is not 0 or 1
    (out / "label_2.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    again = run_cli(inputs, out, tiny_weights, "--device", "cpu", "--continue")
    assert again.returncode == 0, again.stderr
    assert "--continue: 1 of 5 cases already written" in again.stderr
    for case in wrong:
        said = [line for line in again.stderr.splitlines() if f"predicting {case} again" in line]
        assert len(said) == 1, again.stderr
    assert (out / "done.nii.gz").stat().st_mtime_ns == kept
    check_outputs(inputs, out, ["done", *wrong])


def test_under_a_tight_memory_limit_the_next_case_is_read_after_this_one(tmp_path,
                                                                          tiny_weights):
    from inference.budget import may_read_ahead

    assert may_read_ahead(None, 10**9, 10**9)  # no limit: always
    assert not may_read_ahead(64.0, 10**8, 10**8) and may_read_ahead(10**6, 10**8, 10**8)
    inputs = tmp_path / "in"
    for i, case in enumerate(("a", "b", "c")):
        write_phantom_case(inputs, case, i)
    out = tmp_path / "out"
    result = run_cli(inputs, out, tiny_weights, "--device", "cpu", "--memory-limit-mb", "1")
    assert result.returncode == 0, result.stderr
    later = [line for line in result.stderr.splitlines() if "read after the case before" in line]
    assert [line.split(":")[0] for line in later] == ["b_0000.nii.gz", "c_0000.nii.gz"]
    check_outputs(inputs, out, ["a", "b", "c"])


@pytest.mark.parametrize("name, keep_suffix, ends", [
    ("plans.json", False, ".partial"), ("ct.png", True, ".partial.png"),
    ("mask.nii.gz", True, ".partial.nii.gz"), ("mask.nii.gz", False, ".partial")])
def test_any_file_appears_whole_or_not_at_all(tmp_path, name, keep_suffix, ends):
    from inference.folders import atomic_temporary, write_text_atomically

    target = tmp_path / "sub" / name  # its folder is made
    write_text_atomically(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_temporary(target, keep_suffix) as temporary:
            assert temporary.parent == target.parent and temporary.name.startswith(".")
            assert temporary.name.endswith(ends)
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in target.parent.iterdir()) == [name]
    write_text_atomically(target, "new")
    assert target.read_text() == "new" and len(list(target.parent.iterdir())) == 1


def test_continue_beside_an_input_itk_cannot_read_says_so_and_goes_on(tmp_path, tiny_weights):
    inputs, out = tmp_path / "in", tmp_path / "out"
    write_phantom_case(inputs, "good", 1)
    write_phantom_case(inputs, "broken", 2)
    assert run_cli(inputs, out, tiny_weights, "--device", "cpu").returncode == 0
    (inputs / "broken_0000.nii.gz").write_bytes(b"")  # its mask is there, its input is not
    again = run_cli(inputs, out, tiny_weights, "--device", "cpu", "--continue")
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    said = [line for line in again.stderr.splitlines() if "predicting broken again" in line]
    assert len(said) == 1 and "broken_0000.nii.gz" in said[0], again.stderr
    assert "the file is empty" in again.stderr  # the read of the case says why, in one line
