"""Training: temperature and learning-rate schedules, a time-limited run, a killed run
resumed, DDP with 2 gloo processes, export."""

import csv
import dataclasses
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from inference.model import build_model
from inference.plans import Plan
from training import step, trainer
from training.export import run_export
from training.loss import DeepSupervisionLoss
from training.sampling import load_cases
from training.trainer import T_END, T_START, amp_dtype, cosine_lr, progress, temperature
from training.validation import validate

REPO = Path(__file__).resolve().parents[2]


def test_temperature_anneals_linearly_from_30_to_1():
    assert temperature(0, 100) == T_START == 30.0
    assert temperature(50, 100) == pytest.approx(15.5)
    assert temperature(100, 100) == T_END == 1.0
    assert temperature(10_000, 100) == 1.0 and temperature(5, 0) == 1.0
    values = [temperature(s, 40) for s in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_learning_rate_without_time_limit_is_torchs_cosine_annealing_per_epoch():
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=7, eta_min=1e-5)
    for epoch in range(7):
        optimizer.step()
        scheduler.step()
        ours = cosine_lr(progress(epoch + 1, 7, elapsed_s=1e9, budget_s=0), 1e-3, 1e-5)
        assert ours == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12)
    assert cosine_lr(progress(7, 7, 0.0), 1e-3, 1e-5) == 1e-5


def test_learning_rate_follows_the_time_budget_when_it_runs_out_first():
    assert progress(2, 10, elapsed_s=50, budget_s=100) == 0.5  # time is further along
    assert progress(8, 10, elapsed_s=50, budget_s=100) == 0.8  # epochs are further along
    assert progress(3, 10, elapsed_s=150, budget_s=100) == 1.0
    assert cosine_lr(1.0, 1e-3, 1e-5) == 1e-5 and cosine_lr(0.0, 1e-3, 1e-5) == 1e-3


def test_amp_dtype_fp16_on_cuda_bf16_on_the_cpu_only_when_asked():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(cuda, "auto") == amp_dtype(cuda, "on") == torch.float16
    assert amp_dtype(cuda, "bf16") == amp_dtype(cpu, "bf16") == torch.bfloat16
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
    plan.network = dataclasses.replace(plan.network, patch_size=(32, 32))
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


class Killed(Exception):
    pass


@pytest.fixture
def in_process_training(monkeypatch):
    """Run ``train`` here on a fake clock: every optimiser step takes one second.

    Returns ``run(argv, kill_after_steps=None, clock_start=0.0)``: ``train`` with the CLI's
    ``argv``, its step count from zero and its clock from ``clock_start``, as in a fresh
    process; it raises ``Killed`` instead of the step after ``kill_after_steps`` steps.
    """
    from training.__main__ import parser
    from training.settings import TrainSettings

    root = logging.getLogger()
    handlers = {h: h.level for h in root.handlers}
    level, threads = root.level, torch.get_num_threads()
    clock = SimpleNamespace(steps=0, start=0.0, kill=None)
    real_apply = step.apply_gradients

    def apply_gradients(*args, **kwargs):
        if clock.steps == clock.kill:
            raise Killed
        real_apply(*args, **kwargs)
        clock.steps += 1

    monkeypatch.setattr(step, "apply_gradients", apply_gradients)
    monkeypatch.setattr(trainer, "time",
                        SimpleNamespace(perf_counter=lambda: clock.start + clock.steps))

    def run(argv, kill_after_steps=None, clock_start=0.0):
        clock.steps, clock.start, clock.kill = 0, clock_start, kill_after_steps
        args = parser().parse_args(["train", *map(str, argv)])
        return trainer.train(TrainSettings.from_args(args))

    yield run
    for handler in root.handlers[:]:  # a killed run leaves its log file open
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler, handler_level in handlers.items():
        handler.setLevel(handler_level)
    root.setLevel(level)
    torch.set_num_threads(threads)


def _timed_argv(plans, cache, run, budget_steps):
    """10 epochs of 2 steps with a time limit of ``budget_steps`` fake seconds."""
    return [*_train_cmd(plans, cache, run, 10, 2)[4:], "--val-every", "100",
            "--time-limit-min", budget_steps / 60]


def test_time_limited_run_anneals_the_learning_rate_to_its_minimum(small_plan, cache, tmp_path,
                                                                   in_process_training):
    # 9.5 s: the run stops after the fifth of its ten epochs (10 steps)
    history = in_process_training(_timed_argv(small_plan, cache, tmp_path / "run", 9.5))["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    lrs = [row["lr"] for row in history]
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-9)  # eta_min = lr / 100: fully annealed
    assert lrs[0] == pytest.approx(cosine_lr(2 / 9.5, 1e-3, 1e-5))  # 2 of 9.5 s, not 1 of 10
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert all(0 <= row["data_wait_fraction"] <= 1 for row in history)
    with open(tmp_path / "run" / "metrics.csv") as f:
        assert "data_wait_fraction" in next(csv.DictReader(f))
    state = torch.load(tmp_path / "run" / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-5, abs=1e-9)


def test_killed_time_limited_run_resumes_on_the_same_schedule(small_plan, cache, tmp_path,
                                                              in_process_training):
    whole = in_process_training(_timed_argv(small_plan, cache, tmp_path / "whole", 9.5))
    run = tmp_path / "killed"
    with pytest.raises(Killed):  # in the fourth epoch, after the third one's checkpoint
        in_process_training(_timed_argv(small_plan, cache, run, 9.5), kill_after_steps=7)
    assert torch.load(run / "checkpoint_last.pt", weights_only=False)["epoch"] == 2
    resumed = in_process_training([*_timed_argv(small_plan, cache, run, 9.5), "--resume"],
                                  clock_start=1234.0)  # a new process's clock
    assert [r["epoch"] for r in resumed["history"]] == [r["epoch"] for r in whole["history"]]
    assert [r["lr"] for r in resumed["history"]] == pytest.approx(
        [r["lr"] for r in whole["history"]], rel=1e-12)
    # the budget is spent: resuming again trains nothing
    again = in_process_training([*_timed_argv(small_plan, cache, run, 9.5), "--resume"])
    assert len(again["history"]) == len(whole["history"])


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


# the CLI with the trainer's per-rank DEBUG lines on stderr (its own INFO handler keeps them
# off the console otherwise)
DEBUG_MAIN = """import logging, sys
handler = logging.StreamHandler()
handler.setLevel(logging.DEBUG)
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                    handlers=[handler])
logging.getLogger("training.trainer").setLevel(logging.DEBUG)
from training.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def low_threshold_plan(small_plan, tmp_path_factory):
    """The small plan cut at p = 0.02 and keeping every component: a barely trained network
    (p near its prior 0.01) then scores each case a small DSC of its own, so a mean over
    the validation cases tells which cases went into it."""
    plan = Plan.load(small_plan)
    plan.postprocessing.threshold = 0.02
    plan.postprocessing.min_volume_mm3 = 0.0
    return plan.save(tmp_path_factory.mktemp("low") / "plans.json")


def test_ddp_two_gloo_processes(low_threshold_plan, cache, tmp_path):
    """Same weights on both ranks; the logged loss is both ranks' mean; the validation split is
    shared between the ranks, each case scored once, to the score one process gives. With
    the levers a GPU's DDP run uses by default (the batched loss, fused Adam)."""
    run, val_ids = tmp_path / "ddp", ["phantom_000", "phantom_001", "phantom_002"]
    script = tmp_path / "debug_main.py"
    script.write_text(DEBUG_MAIN)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), "train", "-p", str(low_threshold_plan), "-c", str(cache),
           "-o", str(run), "--epochs", "1", "--iterations-per-epoch", "2", "--val-cases",
           *val_ids, "--device", "cpu", "--disable-progress-bar", "--loss-kernels", "batched",
           "--adam", "fused"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = _run(cmd, 240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ends = {r: (digest, best) for r, digest, best in re.findall(
        r"rank (\d) of 2 done: weights digest (\S+), best score (\S+)", done.stderr)}
    assert set(ends) == {"0", "1"}, done.stderr[-3000:]
    assert ends["0"] == ends["1"]  # DDP kept the replicas identical; both chose the same best
    state = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and not any(k.startswith("module.") for k in state["model"])
    with open(run / "metrics.csv") as f:
        logged = next(csv.DictReader(f))

    per_rank = {r: (float(loss), float(fg)) for r, loss, fg in re.findall(
        r"rank (\d) epoch 0: loss (\S+), foreground fraction (\S+) over 2 steps", done.stderr)}
    assert set(per_rank) == {"0", "1"}, done.stderr[-3000:]
    assert per_rank["0"][0] != per_rank["1"][0]  # else the mean would prove nothing
    assert float(logged["train_loss"]) == pytest.approx(
        (per_rank["0"][0] + per_rank["1"][0]) / 2, rel=1e-6)
    assert float(logged["foreground_fraction"]) == pytest.approx(
        (per_rank["0"][1] + per_rank["1"][1]) / 2, rel=1e-6, abs=1e-9)

    shards = dict(re.findall(r"rank (\d) validates (.*)", done.stderr))
    assert set(shards) == {"0", "1"}, done.stderr[-3000:]
    validated = [case for r in "01" for case in shards[r].split(", ")]
    assert sorted(validated) == val_ids  # every case once, on one rank or the other
    network = trainer.build_network(Plan.load(run / "plans.json"))
    network.load_state_dict(state["model"])
    network.set_dynamic_form("grouped")  # as the run did (--dynamic-form auto)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks did: the same rounding
    try:
        alone = validate(network, load_cases(cache, val_ids), Plan.load(run / "plans.json"),
                         "cpu")
    finally:
        torch.set_num_threads(threads)
    assert [row["dsc"] > 0 for row in alone["cases"]] == [True] * 3
    assert float(logged["val_score"]) == pytest.approx(alone["val_score"], abs=1e-9)
    assert float(ends["0"][1]) == pytest.approx(alone["val_score"], abs=1e-6)


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


class _RunsCode:
    """A pickle that would run code when unpickled (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_checkpoints_that_would_run_code_are_refused_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    bad = tmp_path / "handed.pt"
    torch.save({"model": {}, "extra": _RunsCode(marker)}, bad)
    with pytest.raises(trainer.TrainingError) as info:
        trainer.load_checkpoint(bad)
    assert not marker.exists()
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    # resume, --init-weights and export all go through it
    for source in ("training/trainer.py", "training/export.py"):
        text = (REPO / source).read_text()
        assert "weights_only=False" not in text and "load_checkpoint(" in text
    plain = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3, "best": float("-inf"),
                "history": [{"loss": 0.5}], "plan": Plan().to_dict()}, plain)
    state = trainer.load_checkpoint(plain)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
