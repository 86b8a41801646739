"""The demo weights from scratch on this machine (``python -m training demo``).

phantoms (train, seed 0) -> plan -> preprocess -> train (time-boxed) -> export into the
weights folder -> thresholds on tuning phantoms (seed 3000) that training never saw ->
held-out phantoms (seed 1000) predicted by ``predict.sh``'s own CLI (``python -m
inference``) and scored with ``python -m evaluation``. Each stage is the public
CLI in a subprocess, so the log shows the exact commands; a stage whose output exists is
skipped (rerun to resume; delete WORK_DIR to start over). The summary lands in
WORK_DIR/summary.json.
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

from inference.folders import write_text_atomically
from training.reporting import mean_scores

log = logging.getLogger(__name__)

# The shipped weights' recipe: a short run of a small network on realistic 512x512 slices
# with few of them; the spacing is drawn per case, so the model meets the variety it will
# see. Each choice was kept only where it beat the one before it on held-out phantoms
# (benchmark/results/README.md): distinct phantoms rather than repeated epochs over few;
# small patches in large batches (more samples per step); anti-aliased downsampling (plan
# --smoothing), so low-contrast lesions stand out of the noise at network spacing; CT-sized
# augmentation; half the samples on a lesion; the Dice averaged per sample (--dice sample),
# so a small lesion beside a large one still gets a gradient; the coarsest output at loss
# weight 0 (--deep-supervision nnunet). Thresholds are chosen on tuning phantoms of their
# own: the few validation cases are too few to choose a confidence cut. As many torch
# threads as an idle machine of the demo's size has cores. The last checkpoint is exported,
# as nnU-Net does: with few validation cases "best" chases noise. fp32 and the per-branch
# dynamic-convolution form, as the shipped weights were trained. Enough held-out phantoms
# that the mean lesion DSC of two runs can be compared.
SHIPPED_RECIPE = dict(
    train_cases=80, test_cases=64, tune_cases=32, shape=(512, 512, 48), preset="tiny",
    patch=(64, 64), batch=16, spacing=(2.0, 2.0, 3.0), epochs=70, iterations=250, anneal=5,
    val_every=5, val_fraction=0.1, lr=2e-3, smoothing=True, augmentation="light",
    oversample=0.5, dice="sample", threads=2, checkpoint="last", amp="off",
    dynamic_form="branches", deep_supervision="nnunet")
# --quick: every stage once, in seconds (tests run it).
SMOKE_RECIPE = {**SHIPPED_RECIPE, **dict(
    train_cases=5, test_cases=3, tune_cases=2, shape=(128, 128, 16), batch=2, epochs=1,
    iterations=2, anneal=1, val_every=1, val_fraction=0.2, lr=1e-3, threads=1,
    dynamic_form="auto")}


def _run(args: list[str], log_file: Path | None = None) -> str:
    command = [sys.executable, *args]
    log.info("$ python %s", shlex.join(args))
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if log_file is not None:
        with open(log_file, "a") as f:
            f.write(f"$ python {shlex.join(args)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        from training.trainer import TrainingError

        raise TrainingError(f"`python {shlex.join(args)}` failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    log.info("  %.1f s", time.perf_counter() - t)
    return done.stdout


def run_demo(args) -> dict:
    cfg = SMOKE_RECIPE if args.quick else SHIPPED_RECIPE
    work, weights = Path(args.output), Path(args.weights)
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "commands.log"
    shape = [str(v) for v in cfg["shape"]]
    quiet = ["--quiet", "--disable-progress-bar"]
    timings = {}
    t = time.perf_counter()
    for name, n, seed in (("data", cfg["train_cases"], 0), ("test", cfg["test_cases"], 1000),
                          ("tune", cfg["tune_cases"], 3000)):
        if not has_cases(work / name, n):
            _run(["-m", "training.phantoms", "-o", str(work / name), "-n", str(n),
                  "--shape", *shape, "--seed", str(seed), *quiet], logs)
    timings["phantoms_s"] = time.perf_counter() - t
    plans, cache, run = work / "plans.json", work / "cache", work / "run"
    t = time.perf_counter()
    if not plans.is_file():
        _run(["-m", "training", "plan", "-d", str(work / "data"), "-o", str(plans),
              "--preset", cfg["preset"], "--patch", *map(str, cfg["patch"]),
              "--batch-size", str(cfg["batch"]),
              "--target-spacing", *map(str, cfg["spacing"]),
              *(["--smoothing"] if cfg["smoothing"] else []), *quiet], logs)
    _run(["-m", "training", "preprocess", "-d", str(work / "data"), "-p", str(plans),
          "-o", str(cache), "--workers", "2", *quiet], logs)
    timings["plan_preprocess_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _run(["-m", "training", "train", "-p", str(plans), "-c", str(cache), "-o", str(run),
          "--epochs", str(cfg["epochs"]), "--iterations-per-epoch", str(cfg["iterations"]),
          "--anneal-epochs", str(cfg["anneal"]), "--val-every", str(cfg["val_every"]),
          "--val-fraction", str(cfg["val_fraction"]), "--lr", str(cfg["lr"]),
          "--augmentation", cfg["augmentation"], "--oversample", str(cfg["oversample"]),
          "--dice", cfg["dice"], "--deep-supervision", cfg["deep_supervision"],
          "--device", "cpu", "--threads", str(cfg["threads"]), "--amp", cfg["amp"],
          "--dynamic-form", cfg["dynamic_form"], "--resume",
          "--time-limit-min", str(args.minutes), *quiet], logs)
    timings["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    _run(["-m", "training", "export", "-r", str(run), "-o", str(weights),
          "--checkpoint", cfg["checkpoint"], *quiet], logs)
    tune = work / "tune"
    table = _run(["-m", "training", "thresholds", "-w", str(weights), "-d", str(tune),
                  "--cases", *case_ids(tune), "--workers", str(cfg["threads"]), *quiet], logs)
    timings["export_thresholds_s"] = time.perf_counter() - t
    t = time.perf_counter()
    predictions = work / "test_predictions"
    _run(["-m", "inference", "-i", str(work / "test" / "imagesTr"), "-o", str(predictions),
          "--weights", str(weights), "--device", "cpu", *quiet], logs)
    scores = work / "test_scores.csv"
    _run(["-m", "evaluation", "--pred", str(predictions), "--gt",
          str(work / "test" / "labelsTr"), "--csv", str(scores)], logs)
    timings["test_predict_evaluate_s"] = time.perf_counter() - t
    summary = {"config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
               "timings": timings, "test": summarise_scores(scores, work / "test"),
               "thresholds_table": table}
    write_text_atomically(work / "summary.json", json.dumps(summary, indent=1) + "\n")
    log.info("held-out phantoms: %s", json.dumps(summary["test"]))
    return summary


def has_cases(dataset: Path, n: int) -> bool:
    """Whether ``dataset`` already holds exactly ``n`` labelled cases (a finished stage)."""
    meta = dataset / "dataset.json"
    return meta.is_file() and len(json.loads(meta.read_text()).get("training", [])) == n


def case_ids(dataset: Path) -> list[str]:
    """The case ids a phantom set's ``dataset.json`` lists."""
    return [e["id"] for e in json.loads((dataset / "dataset.json").read_text())["training"]]


def summarise_scores(scores_csv: Path, dataset: Path) -> dict:
    """Mean DSC/NSD on lesion-bearing cases and the share of healthy cases predicted empty."""
    meta = json.loads((dataset / "dataset.json").read_text())
    lesion_free = {e["id"] for e in meta["training"] if e["n_lesions"] == 0}
    with open(scores_csv) as f:
        rows = list(csv.DictReader(f))
    lesion = [r for r in rows if r["case"] not in lesion_free]
    healthy = [r for r in rows if r["case"] in lesion_free]
    lesion_means, all_means = mean_scores(lesion), mean_scores(rows)
    return {
        "n_cases": len(rows), "n_lesion_cases": len(lesion), "n_healthy": len(healthy),
        "lesion_dsc": lesion_means["dsc"], "lesion_nsd": lesion_means["nsd"],
        # a healthy case scores 1/1 exactly when the prediction is empty
        "healthy_empty_fraction": (sum(float(r["dsc"]) == 1.0 for r in healthy) / len(healthy)
                                   if healthy else float("nan")),
        "all_dsc": all_means["dsc"], "all_nsd": all_means["nsd"],
    }
