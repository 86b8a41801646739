"""``python -m training <stage>``: plan, preprocess, train, export, thresholds, pseudolabel, demo,
ceiling.

Each stage's user errors end as one line and exit code 2 (nothing could be done) or 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from inference.network_config import (
    DEFAULT_PATCH_SIZE,
    DEFAULT_PRESET,
    PRESETS,
    SAM_INPUTS,
    SAM_KINDS,
    SAM_NORMALIZATIONS,
    SAM_RESIZES,
)
from inference.plans import DEFAULT_BATCH_SIZE
from inference.weights import DEFAULT_ONNX_BATCH
from training.settings import (
    ADAMS,
    AMP_MODES,
    AUGMENTATION_NAMES,
    CHECKPOINTS,
    COMPILE_MODES,
    DEEP_SUPERVISION,
    DICE_MODES,
    DYNAMIC_FORM_CHOICES,
    LESION_SAMPLING,
    PARTIAL_MODES,
    STEP_LOSS_KERNELS,
    StepOptions,
    TrainSettings,
)

log = logging.getLogger("training")


def _add_output_options(p) -> None:
    """What every stage prints: --quiet and --disable-progress-bar."""
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--disable-progress-bar", action="store_true")


def parser(prog: str = "python -m training") -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog=prog,
                                   description="Train the nnSAM lesion network for the container.")
    sub = root.add_subparsers(dest="stage", required=True)
    for add in (_add_plan, _add_ceiling, _add_preprocess, _add_train, _add_export,
                _add_thresholds, _add_pseudolabel, _add_demo):
        add(sub)
    return root


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="dataset fingerprint -> plans.json")
    p.add_argument("-d", "--dataset", required=True, metavar="DATASET")
    p.add_argument("-o", "--output", required=True, metavar="PLANS.json")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="mm (default: in-plane 2x the median, slices max(median, 3))")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=tuple(PRESETS),
                   help=f"network preset (default {DEFAULT_PRESET})")
    p.add_argument("--patch", type=int, nargs=2, default=DEFAULT_PATCH_SIZE, metavar=("Y", "X"),
                   help=f"in-plane patch (default {DEFAULT_PATCH_SIZE[0]} {DEFAULT_PATCH_SIZE[1]})")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"training samples per step (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--smoothing", action="store_true",
                   help="box-average over the downsampling factor before resampling "
                        "(anti-aliasing: less noise at network resolution)")
    p.add_argument("--sam", choices=(*SAM_KINDS, "none"), default=None,
                   help="SAM branch: vit (trained from scratch, the preset's; the paper's "
                        "entry), mobile_sam (MobileSAM's TinyViT, as nnSAM) or sam_vit_b "
                        "(segment-anything's ViT-B), both pretrained and frozen and needing "
                        "--sam-checkpoint, or none")
    p.add_argument("--sam-checkpoint", type=Path, default=None, metavar="FILE",
                   help="pretrained SAM weights (a segment-anything or MobileSAM checkpoint)")
    p.add_argument("--sam-input", choices=SAM_INPUTS, default=None,
                   help="what the encoder sees: the context slices as its 3 channels, or the "
                        "centre slice repeated (default: slices for vit, centre for the "
                        "pretrained kinds, as nnSAM)")
    p.add_argument("--sam-resize", choices=SAM_RESIZES, default=None,
                   help="resize to the encoder's image size and back (default bilinear)")
    p.add_argument("--sam-normalization", choices=SAM_NORMALIZATIONS, default=None,
                   help="none: the z-scored input as it is (default, as nnSAM); sam: the "
                        "plan's CT window onto 0..255 and SAM's pixel mean and std")
    _add_output_options(p)


def _add_ceiling(sub) -> None:
    p = sub.add_parser("ceiling", help="best DSC/NSD a perfect network could score under a "
                                       "plan (its spacing and minimum lesion volume)")
    p.add_argument("-d", "--dataset", required=True, metavar="DATASET")
    p.add_argument("-p", "--plans", required=True, metavar="PLANS.json")
    p.add_argument("--target-spacing", type=float, nargs=3, action="append",
                   metavar=("X", "Y", "Z"), help="mm; repeat to compare (default: the plan's)")
    p.add_argument("--min-volume", type=float, action="append", metavar="MM3",
                   help="minimum component volume; repeat to compare (default: the plan's)")
    p.add_argument("--threshold", type=float, action="append", metavar="P",
                   help="decision threshold; repeat to compare (default: the plan's)")
    p.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                   help="minimum mean probability of a component (default 0: a lesion "
                        "fraction is no confidence, and the plan's would drop small lesions)")
    p.add_argument("--csv", metavar="FILE", help="per-case scores")
    _add_output_options(p)


def _add_preprocess(sub) -> None:
    p = sub.add_parser("preprocess", help="dataset -> memory-mappable training cache")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("-p", "--plans", required=True)
    p.add_argument("-o", "--output", required=True, metavar="CACHE")
    p.add_argument("--workers", type=int, default=1)
    _add_output_options(p)


def _add_train(sub) -> None:
    d = TrainSettings  # the defaults
    p = sub.add_parser("train", help="train on the cache (torchrun for many GPUs)")
    p.add_argument("-p", "--plans", required=True)
    p.add_argument("-c", "--cache", required=True)
    p.add_argument("-o", "--output", required=True, metavar="RUN_DIR")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--iterations-per-epoch", dest="iterations", type=int, default=d.iterations)
    p.add_argument("--batch-size", type=int, help="default: the plan's")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--val-fraction", type=float, default=d.val_fraction)
    group.add_argument("--val-cases", nargs="+", metavar="CASE")
    p.add_argument("--val-every", type=int, default=d.val_every, metavar="EPOCHS")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--partial-mode", choices=PARTIAL_MODES, default=d.partial_mode,
                   help="partially labelled cases: ignore far lesion-like background "
                        "(default) or the paper's plain loss")
    p.add_argument("--partial-margin", type=int, default=d.partial_margin, metavar="VOXELS")
    p.add_argument("--dice", choices=DICE_MODES, default=d.dice,
                   help="Dice term: batch (default): one Dice over the batch (nnU-Net's 2D "
                        "default); sample: the mean Dice of the samples holding lesion voxels, "
                        "so small lesions weigh as much as large ones")
    p.add_argument("--deep-supervision", choices=DEEP_SUPERVISION, default=d.deep_supervision,
                   help="loss weights of the outputs: halving per level (default), or nnunet: "
                        "the same with the coarsest output left out")
    p.add_argument("--num-workers", type=int, default=d.num_workers, metavar="N",
                   help="processes that make the batches ahead of the step (default: none "
                        "on the CPU; on CUDA one fewer than the cores per process, at most 8)")
    p.add_argument("--oversample", type=float, default=d.oversample,
                   help=f"fraction of samples centred on a lesion (default {d.oversample:.3g})")
    p.add_argument("--lesion-sampling", choices=LESION_SAMPLING, default=d.lesion_sampling,
                   help="how a lesion-centred sample picks its voxel: voxel: uniformly over "
                        "the case's lesion voxels (nnU-Net; large lesions dominate); lesion: "
                        "a lesion (connected component) first, uniformly, then a voxel in it")
    p.add_argument("--anneal-epochs", type=int, default=d.anneal_epochs,
                   help="epochs over which the dynamic convolutions' temperature falls to 1 "
                        f"(default {d.anneal_epochs})")
    p.add_argument("--dynamic-form", choices=DYNAMIC_FORM_CHOICES, default=d.dynamic_form,
                   help="dynamic-convolution form, same function either way (auto: grouped)")
    p.add_argument("--amp", choices=AMP_MODES, default=d.amp,
                   help="mixed precision: fp16 on CUDA, bf16 on the CPU; auto (default): on "
                        "CUDA only (bf16 on the CPU gave faster steps, no better weights); "
                        "bf16: bf16 on either (no loss scaling, so --cuda-graph can capture "
                        "the step)")
    _add_step_levers(p)
    p.add_argument("--augmentation", choices=AUGMENTATION_NAMES, default=d.augmentation,
                   help="nnunet: nnU-Net's 2D ranges (rotation to 180 degrees, scaling "
                        "0.7-1.4); light: CT-sized ranges for short runs (rotation 15 "
                        "degrees, scaling 0.85-1.25, milder intensity); none")
    p.add_argument("--no-augment", action="store_true", help="same as --augmentation none")
    p.add_argument("--init-weights", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fresh optimiser and schedule)")
    p.add_argument("--lesion-prior", type=float, default=d.lesion_prior,
                   help="initial lesion probability of the output heads (0: keep 0.5)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (default 1: this small network gains nothing from "
                        "more, and loses badly when the cores are shared)")
    p.add_argument("--time-limit-min", type=float, default=d.time_limit_min,
                   help="training time budget, counted across --resume: the learning "
                        "rate anneals over it (or over --epochs where those end first) and "
                        "training stops after the epoch that passes it (0: none)")
    _add_output_options(p)


def _add_step_levers(p) -> None:
    """What keeps a GPU busy (training.step); each is off on the CPU by default."""
    o = StepOptions  # the defaults
    p.add_argument("--compile", default=o.compile, choices=COMPILE_MODES,
                   help="torch.compile forward + loss (and so its backward) in this mode; "
                        "reduce-overhead replays them as CUDA graphs (default off)")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA, one process: capture forward, loss, backward and optimiser as "
                        "one CUDA graph and replay it each step (needs --amp bf16 or off)")
    p.add_argument("--adam", choices=ADAMS, default=o.adam,
                   help="Adam's implementation: torch's default (foreach on CUDA, a loop on the "
                        "CPU), foreach, or fused (one kernel); auto: fused on CUDA")
    p.add_argument("--loss-kernels", choices=STEP_LOSS_KERNELS, default=o.loss_kernels,
                   help="the deep-supervision loss level by level, or all levels in one pass "
                        "(the same value, fewer kernels); auto: batched on CUDA")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="run -> weights folder (+ torch/onnx parity check)")
    p.add_argument("-r", "--run", required=True, metavar="RUN_DIR")
    p.add_argument("-o", "--output", required=True, metavar="WEIGHTS_DIR")
    p.add_argument("--checkpoint", choices=CHECKPOINTS, default="best")
    p.add_argument("--onnx-batch", type=int, default=DEFAULT_ONNX_BATCH)
    _add_output_options(p)


def _add_thresholds(sub) -> None:
    p = sub.add_parser("thresholds", help="grid-search post-processing on validation cases")
    p.add_argument("-w", "--weights", required=True, metavar="WEIGHTS_DIR")
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--cases", nargs="+", help="case ids (default: --run's validation split)")
    p.add_argument("-r", "--run", metavar="RUN_DIR", help="take the validation split from here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tile-steps", "--steps", dest="tile_steps", type=float, nargs="+",
                   metavar="STEP", help="tile steps to try (default 0.5 1.0); the largest "
                                        "within 0.01 of the best score is kept")
    p.add_argument("--decision-thresholds", type=float, nargs="+", metavar="P",
                   help="lesion-probability cuts to try (default 0.3 0.4 0.5)")
    p.add_argument("--volumes", type=float, nargs="+", metavar="MM3")
    p.add_argument("--confidences", type=float, nargs="+")
    p.add_argument("--workers", type=int, default=1,
                   help="processes scoring the cases (the grid, not the prediction)")
    p.add_argument("--dry-run", action="store_true", help="print the table, keep the plan")
    _add_output_options(p)


def _add_pseudolabel(sub) -> None:
    p = sub.add_parser("pseudolabel", help="confident pseudo-labels for unlabelled scans")
    p.add_argument("-w", "--weights", required=True)
    p.add_argument("-i", "--input", required=True, metavar="IMAGES_DIR")
    p.add_argument("-o", "--output", required=True, metavar="OUT_DATASET")
    p.add_argument("--min-confidence", type=float, default=0.9)
    p.add_argument("--healthy-max-probability", type=float, default=0.3)
    p.add_argument("--device", default="cpu")
    _add_output_options(p)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="phantoms -> plan -> preprocess -> train -> export -> "
                                    "thresholds -> evaluation, on this machine")
    p.add_argument("-o", "--output", default="demo/training", metavar="WORK_DIR")
    p.add_argument("--weights", default="weights", metavar="WEIGHTS_DIR")
    p.add_argument("--minutes", type=float, default=30.0, help="training time budget")
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds)")
    _add_output_options(p)


def main(argv=None, prog: str = "python -m training") -> int:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from inference.folders import InputError
    from inference.model import ModelConfigError
    from inference.plans import PlanError
    from inference.weights import WeightsError
    from training.dataset import DatasetError
    from training.trainer import TrainingError

    start = time.perf_counter()
    progress = not (args.disable_progress_bar or args.quiet)
    try:
        if args.stage == "plan":
            from training.planning import run_plan

            run_plan(args.dataset, args.output, args.target_spacing, args.preset,
                     tuple(args.patch), args.batch_size, progress, args.smoothing, args.sam,
                     args.sam_checkpoint, sam_options={
                         "sam_input": args.sam_input, "sam_resize": args.sam_resize,
                         "sam_normalization": args.sam_normalization})
        elif args.stage == "ceiling":
            from training.ceiling import run_ceiling

            run_ceiling(args.dataset, args.plans, args.target_spacing, args.min_volume,
                        args.threshold, args.csv, args.min_confidence)
        elif args.stage == "preprocess":
            from training.preprocessing import run_preprocess

            run_preprocess(args.dataset, args.plans, args.output, args.workers, progress)
        elif args.stage == "train":
            from training.trainer import train

            train(TrainSettings.from_args(args))
        elif args.stage == "export":
            from training.export import run_export

            run_export(args.run, args.output, args.checkpoint, args.onnx_batch)
        elif args.stage == "thresholds":
            from training.thresholds import run_thresholds

            run_thresholds(args)
        elif args.stage == "pseudolabel":
            from training.pseudolabel import run_pseudolabel

            run_pseudolabel(args)
        elif args.stage == "demo":
            from training.demo import run_demo

            run_demo(args)
    except (DatasetError, PlanError, InputError, WeightsError, ModelConfigError,
            TrainingError) as error:
        log.error("%s", error)
        return 2
    log.info("%s done in %.1f s", args.stage, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
