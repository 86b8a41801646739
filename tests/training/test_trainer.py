"""Training: temperature schedule, a killed run resumed, DDP with 2 gloo processes, export."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inference.model import build_model
from inference.plans import Plan
from training.export import run_export
from training.loss import DeepSupervisionLoss
from training.trainer import T_END, T_START, amp_dtype, temperature

REPO = Path(__file__).resolve().parents[2]


def test_temperature_anneals_linearly_from_30_to_1():
    assert temperature(0, 100) == T_START == 30.0
    assert temperature(50, 100) == pytest.approx(15.5)
    assert temperature(100, 100) == T_END == 1.0
    assert temperature(10_000, 100) == 1.0 and temperature(5, 0) == 1.0
    values = [temperature(s, 40) for s in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_amp_dtype_fp16_on_cuda_bf16_on_the_cpu_only_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(cuda, "auto") == amp_dtype(cuda, "on") == torch.float16
    assert amp_dtype(cuda, "off") is None and amp_dtype(cpu, "off") is None
    assert amp_dtype(cpu, "on") == torch.bfloat16
    assert amp_dtype(cpu, "auto") is None


def test_bf16_training_step_follows_fp32():
    """One forward/backward under CPU bf16 autocast: same loss and gradient direction.

    bf16 keeps 8 significant bits, so single layers' gradients can be off by tens of
    percent at initialisation (measured: 40 % of the norm in the first convolutions, whose
    gradient is a small difference of large terms after instance normalisation); the whole
    gradient stays close (cosine 0.95 here), much closer than two mini-batches are (two
    random batches of this size: cosine 0.2).
    """
    torch.manual_seed(0)
    net = build_model("tiny", patch_size=(32, 32), in_channels=3)
    net.set_dynamic_form("grouped")
    net.set_temperature(1.0)
    x = torch.randn(4, 3, 32, 32)
    y = torch.zeros(4, 32, 32, dtype=torch.long)
    y[:, 10:18, 12:20] = 1
    loss_fn = DeepSupervisionLoss()

    def step(dtype):
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype or torch.float32, enabled=dtype is not None):
            outputs = net(x)
        loss = loss_fn([o.float() for o in outputs], y)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in net.parameters()
                                       if p.grad is not None])

    loss32, grad32 = step(None)
    loss16, grad16 = step(torch.bfloat16)
    assert torch.isfinite(grad16).all()
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.nn.functional.cosine_similarity(grad16, grad32, dim=0) > 0.9
    assert grad16.norm() == pytest.approx(grad32.norm().item(), rel=0.1)


@pytest.fixture(scope="module")
def small_plan(planned, tmp_path_factory):
    """The dataset's plan with 32x32 patches: a tiny network that trains in seconds."""
    plan = Plan.load(planned)
    plan.patch_size = (32, 32)
    plan.batch_size = 2
    return plan.save(tmp_path_factory.mktemp("small") / "plans.json")


def _train_cmd(plans, cache, run, epochs, iterations, *extra):
    return [sys.executable, "-m", "training", "train", "-p", str(plans), "-c", str(cache),
            "-o", str(run), "--epochs", str(epochs), "--iterations-per-epoch", str(iterations),
            "--val-cases", "phantom_000", "--device", "cpu", "--anneal-epochs", "1",
            "--disable-progress-bar", *extra]


def _run(cmd, timeout, **kwargs):
    """subprocess.run that also ends the command's children (torchrun workers) on a timeout."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _epochs(run):
    with open(run / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def test_killed_run_resumes_and_loses_at_most_one_epoch(small_plan, cache, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(small_plan, cache, run, 50, 6), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.csv").is_file() and len(_epochs(run)) >= 2:
            break
        time.sleep(0.2)
    time.sleep(0.3)  # well inside the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    saved = state["epoch"]
    assert saved >= 1
    done = _run(_train_cmd(small_plan, cache, run, saved + 3, 2, "--resume"), 180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {run / 'checkpoint_last.pt'} after epoch {saved}" in done.stderr
    assert _epochs(run) == list(range(saved + 3))  # nothing repeated, nothing missing
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == saved + 2
    assert (run / "curves.png").stat().st_size > 0
    assert "epoch" in (run / "train.log").read_text()


def test_ddp_two_gloo_processes(small_plan, cache, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training", "train", "-p", str(small_plan), "-c", str(cache),
           "-o", str(run), "--epochs", "1", "--iterations-per-epoch", "2", "--val-cases",
           "phantom_000", "--device", "cpu", "--disable-progress-bar"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = _run(cmd, 240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = dict(re.findall(r"rank (\d) of 2 done: weights digest (\S+)", done.stderr))
    assert set(digests) == {"0", "1"}, done.stderr[-3000:]
    assert digests["0"] == digests["1"]  # DDP kept the replicas identical
    state = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and not any(k.startswith("module.") for k in state["model"])


def test_export_writes_weights_that_agree_between_torch_and_onnx(small_plan, cache, tmp_path,
                                                                 capsys):
    run = tmp_path / "run"
    done = _run(_train_cmd(small_plan, cache, run, 1, 1), 180)
    assert done.returncode == 0, done.stderr[-2000:]
    weights = tmp_path / "weights"
    diff = run_export(run, weights, onnx_batch=4)
    assert diff < 1e-3
    assert "max |dp|" in capsys.readouterr().out
    for name in ("plans.json", "model.pt", "model.onnx", "model.json", "SHA256SUMS"):
        assert (weights / name).is_file()
    assert json.loads((weights / "model.json").read_text())["checkpoint"].startswith("checkpoint")


def test_thresholds_and_pseudolabel_cli_on_exported_weights(small_plan, cache, dataset, tmp_path,
                                                            capsys):
    from training.__main__ import main

    run = tmp_path / "run"
    assert _run(_train_cmd(small_plan, cache, run, 1, 1), 180).returncode == 0
    weights = tmp_path / "weights"
    run_export(run, weights, onnx_batch=4)
    assert main(["thresholds", "-w", str(weights), "-d", str(dataset), "-r", str(run),
                 "--volumes", "0", "100", "--confidences", "0", "0.9", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "1 validation cases" in out
    assert "tile step 0.5:" in out and "tile step 1:" in out
    chosen = float(out.split("chosen: tile step ")[1].split()[0])
    assert Plan.load(weights / "plans.json").tile_step == chosen
    assert main(["pseudolabel", "-w", str(weights), "-i", str(dataset / "imagesTr"), "-o",
                 str(tmp_path / "pseudo"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "pseudo" / "dataset.json").read_text())
    assert sum(meta["counts"].values()) == 5
