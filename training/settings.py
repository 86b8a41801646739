"""The values each option of ``python -m training train`` may take, defined once.

Free of torch, so that the command line can offer them as choices before anything heavy
is imported; the modules that act on a value (``training.loss``, ``training.step``,
``training.sampling``, ``training.augment``, ``training.trainer``) check it against the
same tuple.
"""

from __future__ import annotations

from inference.network_config import DYNAMIC_FORMS

AMP_MODES = ("auto", "on", "off", "bf16")  # training.trainer.amp_dtype
AUGMENTATION_NAMES = ("nnunet", "light", "none")  # training.augment.AUGMENTATIONS
PARTIAL_MODES = ("ignore", "plain")  # training.loss
DICE_MODES = ("batch", "sample")
DEEP_SUPERVISION = ("halving", "nnunet")
LOSS_KERNELS = ("per-level", "batched")
LESION_SAMPLING = ("voxel", "lesion")  # training.sampling
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune",  # training.step
                 "max-autotune-no-cudagraphs")
ADAMS = ("auto", "default", "foreach", "fused")
STEP_LOSS_KERNELS = ("auto", *LOSS_KERNELS)
DYNAMIC_FORM_CHOICES = ("auto", *DYNAMIC_FORMS)  # auto: grouped
CHECKPOINTS = ("best", "last")  # what training export exports (training.export.load_run)
