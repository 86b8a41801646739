"""Training: ``python -m training train`` (many GPUs: ``torchrun --nproc_per_node=N -m training``).

Per epoch: ``iterations`` batches of 2.5D samples per process (foreground
oversampling, ``training.sampling``), augmented on the device (``training.augment``),
Dice + CE with deep supervision (``training.loss``), Adam + cosine annealing per epoch
over the run's progress (``progress``: its epochs, or its time budget where that runs out
first), dynamic-convolution temperature annealed linearly 30 -> 1 over the first
``anneal_epochs`` (per iteration), mixed precision (fp16 with loss scaling on CUDA; bf16 on
the CPU with ``--amp on``, anywhere with ``--amp bf16``). The step itself and the levers
that keep a GPU busy are ``training.step``'s. Batches come from one stream for the whole run
(DataLoader workers, pinned memory on CUDA); each epoch logs the fraction of its steps
that waited for their batch. Then the validation split is scored (``training.validation``)
and rank 0 writes ``checkpoint_last.pt`` atomically (and ``checkpoint_best.pt`` on a
better validation score), ``metrics.csv``, ``curves.png``. A killed run resumed with
``--resume`` starts at the epoch after the last checkpoint, with the training time it had
spent, so the schedule and the time limit carry on where they were.

DDP: gloo on the CPU, nccl on CUDA; each rank samples with its own seed; gradients are
averaged by DistributedDataParallel, so every rank holds the same weights; the logged loss
and foreground fraction are means over all ranks' steps; every rank scores its share of the
validation cases (``rank::world``) and gets every rank's rows, so all ranks agree on the
score and the best epoch; rank 0's clock sets the learning rate and the last epoch; only
rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from inference.folders import atomic_temporary, write_text_atomically
from inference.model import NnSam, count_parameters
from inference.plans import Plan
from inference.preprocess import pad_value
from inference.sam_encoders import load_sam_checkpoint
from training.augment import AUGMENTATIONS
from training.host_memory import keep_freed_memory
from training.preprocessing import cached_cases
from training.reporting import METRICS_COLUMNS, add_log_file, plot_curves, write_csv
from training.sampling import (
    DATA_WAIT_S,
    BatchStream,
    PatchSampler,
    batch_loader,
    data_workers,
    load_cases,
    next_batch,
)
from training.settings import StepOptions, TrainSettings
from training.step import prepare_step, set_lr, set_up_step, train_step
from training.validation import validate, validation_metrics

log = logging.getLogger(__name__)

LAST, BEST, SPLIT = "checkpoint_last.pt", "checkpoint_best.pt", "split.json"
T_START, T_END = 30.0, 1.0


class TrainingError(RuntimeError):
    """A user-caused problem with a training run (one line)."""


def temperature(step: int, anneal_steps: int) -> float:
    """Dynamic-convolution softmax temperature: linear 30 -> 1 over ``anneal_steps``, then 1."""
    if anneal_steps <= 0 or step >= anneal_steps:
        return T_END
    return T_START + (T_END - T_START) * step / anneal_steps


def progress(epochs_done: int, epochs: int, elapsed_s: float, budget_s: float = 0) -> float:
    """The run's progress in [0, 1]: its fraction of epochs done, or of its time budget
    (``budget_s`` > 0) where that is further along."""
    fraction = epochs_done / epochs
    if budget_s > 0:
        fraction = max(fraction, elapsed_s / budget_s)
    return min(fraction, 1.0)


def cosine_lr(fraction: float, lr: float, eta_min: float) -> float:
    """Cosine annealing: ``lr`` at progress 0, ``eta_min`` at progress 1."""
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * fraction)) / 2


def amp_dtype(device: torch.device, mode: str = "auto"):
    """The autocast dtype of a training step, or None for fp32.

    CUDA: fp16 with loss scaling, unless ``off`` or ``bf16`` (bf16 needs no loss scaling,
    so a whole step can be captured as a CUDA graph). CPU: fp32 unless ``on`` or ``bf16``,
    which train in bf16. bf16 is opt-in on the CPU: where the CPU has native bf16 it makes
    steps faster, but demo runs with it scored no better on held-out phantoms than fp32
    (benchmark/results/README.md), and its gradients are measurably coarser
    (``tests/training/test_trainer.py``).
    Without native bf16 (``_native_bf16``) oneDNN emulates it, slower than fp32.
    """
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if mode == "bf16" else torch.float16
    if mode in ("on", "bf16"):
        if not _native_bf16():
            log.warning("--amp %s: this CPU has no native bf16; expect slower steps than fp32",
                        mode)
        return torch.bfloat16
    return None


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def split_cases(cases: list[str], val_fraction: float, val_cases=None, seed: int = 0):
    """(train, validation) case ids: ``val_cases`` if given, else a seeded random fraction."""
    if val_cases:
        unknown = sorted(set(val_cases) - set(cases))
        if unknown:
            raise TrainingError(f"--val-cases: {unknown[0]} is not in the cache")
        val = sorted(val_cases)
    else:
        n_val = int(round(len(cases) * val_fraction))
        if val_fraction > 0 and len(cases) > 1:
            n_val = min(max(n_val, 1), len(cases) - 1)
        val = sorted(random.Random(seed).sample(cases, n_val))
    train = [c for c in cases if c not in val]
    if not train:
        raise TrainingError("no training case left after the validation split")
    return train, val


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint's tensors and plain data; never code.

    ``weights_only`` unpickles tensors, numbers, strings and containers only, so a
    checkpoint someone hands you cannot run code when it is loaded (``--resume``,
    ``--init-weights``, export).
    """
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's message opens with advice to load it unsafely; the reason is further on
        reason = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                      lines[0] if lines else type(error).__name__)
        raise TrainingError(f"{path}: not a checkpoint of tensors and plain data, refused: "
                            f"{reason[:200]}") from None
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    return state


def _atomic_save(obj, path: Path) -> None:
    with atomic_temporary(path) as temporary:
        torch.save(obj, temporary)


def _setup_distributed(device_arg: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no GPU is visible to torch")
    if device_arg == "cuda":  # torch.cuda.set_device needs an index
        device_arg = f"cuda:{local if world > 1 else 0}"
    device = torch.device(device_arg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, rank, world


def build_network(plan: Plan):
    """The network the plan describes, field by field (``plan.network``)."""
    return NnSam(plan.network)


def init_lesion_prior(network, prior: float) -> None:
    """Start every output head at p(lesion) = ``prior`` (the focal-loss prior initialisation).

    Lesions are a tiny fraction of the voxels; from the default p = 0.5 the full-resolution
    head spends thousands of steps just learning that (benchmark/results/README.md links the
    loss from either start).
    """
    if not 0 < prior < 1:
        return
    with torch.no_grad():
        for head in network.heads:
            head.bias.zero_()
            head.bias[1] = -math.log((1 - prior) / prior)


def train(settings: TrainSettings) -> dict:
    """Run (or resume) training as ``settings`` say; returns the history.

    The named steps: ``_set_up`` (devices, split, sampler, network, optimiser),
    ``_restore`` (resume, pretrained SAM encoder, fine-tuning), ``train_step`` (one
    batch, ``training.step``), ``_end_epoch`` (schedule, validation, checkpoints).
    """
    run = _set_up(settings)
    start_epoch, best, history, spent_s = _restore(run)
    prepare_step(run)
    if run.main:
        frozen = count_parameters(run.network, trainable=False)
        log.info("training %s (%.2fM parameters%s) on %s x%d (%s): %d train / %d validation "
                 "cases, batch %d, patch %s, epochs %d x %d iterations", run.plan.preset,
                 count_parameters(run.network, trainable=True) / 1e6,
                 f", {frozen / 1e6:.2f}M frozen" if frozen else "", run.device,
                 run.world, str(run.precision or "fp32").replace("torch.", ""),
                 len(run.train_ids), len(run.val_ids), run.batch_size,
                 "x".join(map(str, run.plan.patch_size)), settings.epochs, settings.iterations)
        log.info("step: %s; %d data-loading workers%s", _describe(run.options), run.workers,
                 ", pinned memory" if run.device.type == "cuda" else "")
    run.started = time.perf_counter() - spent_s  # training time counts across --resume
    batches = iter(_loader(run, start_epoch))
    for epoch in range(start_epoch, settings.epochs):
        t0 = time.perf_counter()
        losses, foreground, waits = _run_epoch(run, epoch, batches)
        row, out_of_time = _end_epoch(run, epoch, losses, foreground, waits, t0)
        history.append(row)
        score = row.get("val_score", -math.inf) if run.val_set else -row["train_loss"]
        improved = score > best
        best = max(best, score)
        if run.main:
            _save_epoch(run, epoch, row, history, best, score, improved)
        if run.world > 1:  # the others wait here while rank 0 writes
            dist.barrier()
        if out_of_time:
            if run.main:
                log.warning("time limit of %.1f min reached after epoch %d; stopping",
                            settings.time_limit_min, epoch)
            break
    del batches  # its workers end
    digest = sum(float(p.double().abs().sum()) for p in run.network.state_dict().values()
                 if p.is_floating_point())
    log.info("rank %d of %d done: weights digest %.10e, best score %.6f", run.rank, run.world,
             digest, best)
    if run.world > 1:
        dist.destroy_process_group()
    if run.main:
        logging.getLogger().removeHandler(run.log_handler)
        run.log_handler.close()
    return {"history": history, "train": run.train_ids, "validation": run.val_ids}


@dataclass(eq=False)
class Run:
    """What one training run holds while it trains. ``_set_up`` fills the first part from
    the settings and the plan; ``training.step.set_up_step`` and ``prepare_step`` the step's."""

    settings: TrainSettings | None = None
    plan: Plan | None = None
    device: torch.device | None = None
    rank: int = 0
    world: int = 1
    run_dir: Path | None = None
    log_handler: logging.Handler | None = None
    batch_size: int = 0
    train_ids: list[str] = field(default_factory=list)
    val_ids: list[str] = field(default_factory=list)
    train_set: list = field(default_factory=list)
    val_set: list = field(default_factory=list)
    aug: object = None  # training.augment.AugmentConfig, None: no augmentation
    sampler: PatchSampler | None = None
    network: NnSam | None = None
    model: torch.nn.Module | None = None  # the network, wrapped in DDP under torchrun
    precision: torch.dtype | None = None  # autocast dtype; None: fp32
    budget_s: float = 0.0  # the time limit in seconds; 0: none
    workers: int = 0
    anneal_steps: int = 0
    generator: torch.Generator | None = None
    temperature: float | None = None  # the dynamic convolutions' current one
    first_step_s: float | None = None
    started: float = 0.0  # perf_counter at the start, less the time trained before --resume
    # training.step's
    options: StepOptions | None = None
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    loss_fn: torch.nn.Module | None = None
    sync_free: bool = False
    forward_loss: object = None
    graphed: object = None

    @property
    def main(self) -> bool:
        """Rank 0, the process that logs and writes."""
        return self.rank == 0


def _describe(options: StepOptions) -> str:
    return (f"compile {options.compile}, CUDA graph {'on' if options.cuda_graph else 'off'}, "
            f"Adam {options.adam}, loss {options.loss_kernels}")


def _set_up(settings: TrainSettings) -> Run:
    s = settings
    device, rank, world = _setup_distributed(s.device)
    if device.type == "cpu" and s.threads:
        # more threads than idle cores spin-wait on each other: on a shared small machine
        # one thread is faster than two (benchmark/results/README.md)
        torch.set_num_threads(s.threads)
    keep_freed_memory()  # before the first step's tensors (and the data workers' fork)
    run = Run(settings=s, device=device, rank=rank, world=world, run_dir=Path(s.output),
              plan=Plan.load(s.plans))
    run.batch_size = s.batch_size or run.plan.batch_size
    if run.main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        run.log_handler = add_log_file(run.run_dir / "train.log")
    torch.manual_seed(s.seed + rank)
    run.train_ids, run.val_ids = _split(run)
    run.train_set = load_cases(s.cache, run.train_ids)
    run.val_set = load_cases(s.cache, run.val_ids)
    # The sampler cuts windows sized for these ranges, so augmentation never pulls in padding.
    run.aug = AUGMENTATIONS[s.augmentation]
    run.sampler = PatchSampler(run.train_set, run.plan.patch_size, run.plan.context_slices,
                               oversample=s.oversample, pad_value=pad_value(run.plan),
                               lesion_sampling=s.lesion_sampling, augmentation=run.aug)
    network = build_network(run.plan)
    init_lesion_prior(network, s.lesion_prior)  # replaced by the checkpoint on --resume
    run.network = network.to(device)
    # The grouped form (the batch folded into the convolution's groups) is the faster one
    # on CUDA and on the CPU; both compute the same function, with different rounding.
    run.network.set_dynamic_form(s.dynamic_form if s.dynamic_form != "auto" else "grouped")
    # the time limit is a budget the schedule anneals over, or the last checkpoint of a
    # time-limited run would come from a learning rate still far from its minimum
    run.budget_s = 60 * (s.time_limit_min or 0)
    run.precision = amp_dtype(device, s.amp)
    try:
        set_up_step(run, s.step, s.lr, s.weight_decay, loss=dict(
            partial_mode=s.partial_mode, margin=s.partial_margin, dice=s.dice,
            deep_supervision=s.deep_supervision))
    except ValueError as error:
        raise TrainingError(str(error)) from None
    run.workers = data_workers(s.num_workers, device, world)
    run.anneal_steps = s.anneal_epochs * s.iterations
    run.generator = torch.Generator(device=device)
    return run


def _split(run: Run) -> tuple[list[str], list[str]]:
    """(train, validation) case ids: the run's own on --resume, else a new split, saved."""
    s, split_path = run.settings, run.run_dir / SPLIT
    if s.resume and split_path.is_file():
        split = json.loads(split_path.read_text())
        train_ids, val_ids = split["train"], split["validation"]
    else:
        train_ids, val_ids = split_cases(cached_cases(s.cache), s.val_fraction, s.val_cases,
                                         s.seed)
    if run.main:
        run.plan.save(run.run_dir / "plans.json")
        write_text_atomically(split_path, json.dumps(
            {"train": train_ids, "validation": val_ids, "cache": str(s.cache)}, indent=1) + "\n")
    return train_ids, val_ids


def _restore(run: Run) -> tuple[int, float, list, float]:
    """(first epoch, best score, history, seconds trained): from --resume, else a fresh
    start with the plan's pretrained SAM encoder or --init-weights; wraps DDP last."""
    s, network, run_dir = run.settings, run.network, run.run_dir
    start_epoch, best, history, spent_s = 0, -math.inf, [], 0.0
    if s.resume and (run_dir / LAST).is_file():
        state = load_checkpoint(run_dir / LAST)
        network.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])  # with the next epoch's rate
        lr = run.optimizer.param_groups[0]["lr"]
        set_lr(run.optimizer, float(lr), run.device)  # a CUDA graph's tensor, on its device
        run.scaler.load_state_dict(state["scaler"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        spent_s = state.get("elapsed_s", 0.0)
        if run.main:
            log.info("resuming %s after epoch %d (%.1f min of training)", run_dir / LAST,
                     state["epoch"], spent_s / 60)
        if run.budget_s and spent_s >= run.budget_s and start_epoch < s.epochs:
            if run.main:
                log.info("--resume: the time limit of %.1f min was reached before; nothing "
                         "left to train", s.time_limit_min)
            start_epoch = s.epochs
    else:
        if s.resume and run.main:
            log.info("--resume: no %s yet; starting from scratch", run_dir / LAST)
        if run.plan.sam_checkpoint and not s.init_weights:
            load_sam_checkpoint(network, run.plan.sam_checkpoint)
            if run.main:
                log.info("SAM encoder from %s%s", run.plan.sam_checkpoint,
                         " (frozen)" if run.plan.network.sam_frozen else "")
        if s.init_weights:  # fine-tuning: weights only, a fresh optimiser and schedule
            if not Path(s.init_weights).is_file():
                raise TrainingError(f"--init-weights {s.init_weights}: no such checkpoint")
            state = load_checkpoint(s.init_weights)
            network.load_state_dict(state["model"] if "model" in state else state)
            if run.main:
                log.info("initialised from %s", s.init_weights)
    run.model = network
    if run.world > 1:
        run.model = torch.nn.parallel.DistributedDataParallel(
            network, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return start_epoch, best, history, spent_s


def _loader(run: Run, start_epoch: int):
    s = run.settings
    return batch_loader(BatchStream(run.sampler, run.batch_size, s.iterations, s.seed,
                                    run.rank, start_epoch, s.epochs), run.workers, run.device)


def _run_epoch(run: Run, epoch: int, batches) -> tuple[list, list, list]:
    """One epoch of ``train_step``s: the losses (on the device), foreground fractions and the
    seconds each step waited for its batch."""
    s = run.settings
    run.generator.manual_seed(s.seed * 100003 + run.rank * 1009 + epoch)
    run.model.train()
    losses, foreground, waits = [], [], []
    bar = tqdm(range(s.iterations), desc=f"epoch {epoch}", unit="it",
               disable=not run.main or not s.show_progress, leave=False)
    for i in bar:
        batch, waited = next_batch(batches)
        waits.append(waited)
        _set_temperature(run, temperature(epoch * s.iterations + i, run.anneal_steps))
        t = time.perf_counter()
        # kept on the device: a .item() per step would wait for the GPU every step
        losses.append(train_step(run, batch))
        if run.first_step_s is None:
            run.first_step_s = time.perf_counter() - t
            _log_first_step(run)
        foreground.append(batch["foreground"].float().mean().item())
        if i % 25 == 24:
            bar.set_postfix(loss=f"{torch.stack(losses[-20:]).mean().item():.3f}")
    return losses, foreground, waits


def _set_temperature(run: Run, value: float) -> None:
    """The dynamic convolutions' temperature, written only when it changes (on a GPU each
    write is a launch per layer)."""
    if value != run.temperature:
        run.network.set_temperature(value)
        run.temperature = value


def _log_first_step(run: Run) -> None:
    if run.main and (run.options.compile != "off" or run.options.cuda_graph):
        log.info("first step %.1f s (compilation included)", run.first_step_s)


def _end_epoch(run: Run, epoch: int, losses: list, foreground: list, waits: list,
               t0: float) -> tuple[dict, bool]:
    """The epoch's row (loss and foreground over all ranks, schedule, validation) and
    whether the time limit is reached; sets the next epoch's learning rate."""
    s, device = run.settings, run.device
    sums = [float(torch.stack(losses).double().sum()), float(np.sum(foreground))]
    log.debug("rank %d epoch %d: loss %.9g, foreground fraction %.9g over %d steps", run.rank,
              epoch, sums[0] / len(losses), sums[1] / len(losses), len(losses))
    train_loss, foreground_fraction = _mean_over_ranks(sums, len(losses), device, run.world)
    elapsed_s = time.perf_counter() - run.started
    if run.world > 1:  # rank 0's clock for all: the same learning rate, the same last epoch
        clock = torch.tensor([elapsed_s], dtype=torch.float64, device=device)
        dist.broadcast(clock, 0)
        elapsed_s = float(clock.item())
    out_of_time = bool(run.budget_s) and elapsed_s > run.budget_s
    lr = cosine_lr(progress(epoch + 1, s.epochs, elapsed_s, run.budget_s), s.lr, s.lr * 1e-2)
    set_lr(run.optimizer, lr, device)
    convs = run.network.dynamic_convs()
    row = {"epoch": epoch, "train_loss": train_loss, "lr": lr,
           "temperature": float(convs[0].temperature) if convs else 1.0,
           "foreground_fraction": foreground_fraction,
           "data_wait_fraction": float(np.mean(np.asarray(waits) >= DATA_WAIT_S))}
    last = epoch + 1 == s.epochs or out_of_time
    if run.val_set and ((epoch + 1) % s.val_every == 0 or last):
        metrics = validate_shared(run.network, run.val_set, run.plan, device, run.rank,
                                  run.world)
        row.update({k: v for k, v in metrics.items() if k != "cases"})
    row["seconds"] = time.perf_counter() - t0
    return row, out_of_time


def _save_epoch(run: Run, epoch: int, row: dict, history: list, best: float, score: float,
                improved: bool) -> None:
    """Rank 0: checkpoints (atomic), metrics.csv, curves.png and the epoch's log line."""
    network, plan, run_dir = run.network, run.plan, run.run_dir
    state = {"model": network.state_dict(), "optimizer": run.optimizer.state_dict(),
             "scaler": run.scaler.state_dict(), "epoch": epoch, "best": best,
             "history": history, "elapsed_s": time.perf_counter() - run.started,
             "plan": plan.to_dict(), "preset": plan.preset}
    if improved:
        _atomic_save({"model": network.state_dict(), "epoch": epoch, "score": score,
                      "plan": plan.to_dict()}, run_dir / BEST)
    _atomic_save(state, run_dir / LAST)
    write_csv(history, run_dir / "metrics.csv", METRICS_COLUMNS)
    plot_curves(run_dir / "curves.png", history)
    log.info("epoch %d: loss %.4f%s, T %.2f, lr %.2e, %.1f s, %.0f%% of steps waited for "
             "data%s", epoch, row["train_loss"],
             "".join(f", {k[4:]} {row[k]:.3f}" for k in ("val_dsc", "val_nsd") if k in row),
             row["temperature"], row["lr"], row["seconds"], 100 * row["data_wait_fraction"],
             " (best)" if improved else "")


def _mean_over_ranks(sums: list[float], steps: int, device, world: int) -> list[float]:
    """Means over every rank's steps, from each rank's per-step ``sums`` over its ``steps``."""
    total = torch.tensor([*sums, steps], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(total)
    *sums, steps = total.tolist()
    return [value / steps for value in sums]


def validate_shared(network, cases: list, plan: Plan, device, rank: int = 0,
                    world: int = 1) -> dict:
    """``training.validation.validate`` over ``cases``, each rank scoring ``cases[rank::world]``.

    Every rank gets every rank's per-case rows and the means over all of them, so all ranks
    log the same score and agree on the best epoch; and none waits on another's whole
    validation split (NCCL's timeout).
    """
    shard = cases[rank::world]
    log.debug("rank %d validates %s", rank, ", ".join(c.case for c in shard) or "nothing")
    metrics = validate(network, shard, plan, device)
    if world == 1:
        return metrics
    parts = [None] * world
    dist.all_gather_object(parts, metrics.get("cases", []))
    order = {c.case: i for i, c in enumerate(cases)}
    rows = sorted((row for part in parts for row in part), key=lambda row: order[row["case"]])
    return validation_metrics(rows)
