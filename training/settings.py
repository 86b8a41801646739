"""What ``python -m training train`` is told: its settings as one frozen value, and the values
each option may take.

The command line builds ``TrainSettings`` once (``from_args``) and the trainer reads it, as
the container reads its ``Plan``; its defaults are the command line's. Free of torch, so
that the command line can offer the choices before anything heavy is imported; the modules
that act on a value (``training.loss``, ``training.step``, ``training.sampling``,
``training.augment``, ``training.trainer``) check it against the same tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from inference.network_config import DYNAMIC_FORMS

AMP_MODES = ("auto", "on", "off", "bf16")  # training.trainer.amp_dtype
AUGMENTATION_NAMES = ("nnunet", "light", "none")  # training.augment.AUGMENTATIONS
PARTIAL_MODES = ("ignore", "plain")  # training.loss
DICE_MODES = ("batch", "sample")
DEEP_SUPERVISION = ("halving", "nnunet")
LOSS_KERNELS = ("per-level", "batched")
LESION_SAMPLING = ("voxel", "lesion")  # training.sampling
OVERSAMPLE = 1 / 3  # fraction of samples centred on a lesion
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune",  # training.step
                 "max-autotune-no-cudagraphs")
ADAMS = ("auto", "default", "foreach", "fused")
STEP_LOSS_KERNELS = ("auto", *LOSS_KERNELS)
DYNAMIC_FORM_CHOICES = ("auto", *DYNAMIC_FORMS)  # auto: grouped
CHECKPOINTS = ("best", "last")  # what training export exports (training.export.load_run)


@dataclass(frozen=True)
class StepOptions:
    """How a step runs; ``auto`` values depend on the device (``training.step``)."""

    compile: str = "off"
    cuda_graph: bool = False
    adam: str = "auto"
    loss_kernels: str = "auto"


@dataclass(frozen=True)
class TrainSettings:
    """Everything a training run is told (``python -m training train -h`` says what each
    does); ``None`` where the default depends on the plan or the device."""

    plans: Path
    cache: Path
    output: Path
    epochs: int = 1000
    iterations: int = 250  # batches per epoch and process
    batch_size: int | None = None  # None: the plan's
    lr: float = 1e-3
    weight_decay: float = 3e-5
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] = ()  # these instead of a random val_fraction
    val_every: int = 1
    device: str = "auto"
    resume: bool = False
    seed: int = 0
    partial_mode: str = "ignore"
    partial_margin: int = 8
    dice: str = "batch"
    deep_supervision: str = "halving"
    num_workers: int | None = None  # None: training.sampling.data_workers decides
    oversample: float = OVERSAMPLE
    lesion_sampling: str = "voxel"
    anneal_epochs: int = 10
    dynamic_form: str = "auto"
    amp: str = "auto"
    step: StepOptions = StepOptions()
    augmentation: str = "nnunet"
    init_weights: Path | None = None
    lesion_prior: float = 0.01
    threads: int = 1
    time_limit_min: float = 0.0  # 0: none
    show_progress: bool = True

    def __post_init__(self):
        for name, allowed in (("partial_mode", PARTIAL_MODES), ("dice", DICE_MODES),
                              ("deep_supervision", DEEP_SUPERVISION),
                              ("lesion_sampling", LESION_SAMPLING),
                              ("dynamic_form", DYNAMIC_FORM_CHOICES), ("amp", AMP_MODES),
                              ("augmentation", AUGMENTATION_NAMES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")

    @classmethod
    def from_args(cls, args) -> TrainSettings:
        """The settings of ``python -m training train``'s parsed arguments."""
        names = {f.name for f in fields(cls)} - {"val_cases", "step", "augmentation",
                                                 "show_progress"}
        values = {name: getattr(args, name) for name in names}
        for name in ("plans", "cache", "output", "init_weights"):
            values[name] = None if values[name] is None else Path(values[name])
        return cls(**values, val_cases=tuple(args.val_cases or ()),
                   step=StepOptions(args.compile, args.cuda_graph, args.adam,
                                    args.loss_kernels),
                   augmentation="none" if args.no_augment else args.augmentation,
                   show_progress=not args.disable_progress_bar)
