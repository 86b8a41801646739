"""The FLARE24 Task 1 winner's 3D nnU-Net as an nnU-Net v2 results folder with random weights.

    <folder>/dataset.json                   the channel (CT) and the labels (background, lesion)
    <folder>/plans.json                     the plan, architecture included (nnU-Net rebuilds
                                            the network from it)
    <folder>/fold_0/checkpoint_final.pth    weights of nnU-Net's own network for that plan,
                                            initialised by nnU-Net from a seed

The plan: a plain 3D U-Net of 4 stages with 32, 64, 128 and 256 features (two 3x3x3
convolutions per stage, stride 2 between stages), target spacing 3x2x2 mm (z, y, x), patch
96x128x128, CT normalisation, nnU-Net's default resampling. The weights are random: the
masks mean nothing, and the predictor's work (resampling, sliding window, export) is the
same whatever the weights say, so the time is honest.

CT normalisation clips to the foreground's 0.5 and 99.5 percentiles and z-scores with its
mean and standard deviation; those numbers come from our shipped plan, so both tools
normalise alike. Writing the JSON files needs nothing of nnU-Net; the checkpoint needs the
``peers`` extra (torch and nnunetv2), imported only there.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmark.machine import ROOT
from inference.folders import atomic_temporary

SPACING_ZYX = (3.0, 2.0, 2.0)
PATCH_ZYX = (96, 128, 128)
FEATURES = (32, 64, 128, 256)
CONFIGURATION = "3d_fullres"
TRAINER = "nnUNetTrainer"
PLANS = "nnUNetPlans"
FOLD = 0
CHECKPOINT = "checkpoint_final.pth"
NNUNET_CLI = "nnUNetv2_predict_from_modelfolder"  # the predictor's command for a results folder
DATASET = "Dataset900_FLARE24Task1Peer"
# The FLARE labelled set's median case (512x512x121 at 0.8x0.8x3.0 mm): planning metadata
# nnU-Net stores beside the plan; the predictor does not use it.
MEDIAN_SHAPE_ZYX = (121, 512, 512)
MEDIAN_SPACING_ZYX = (3.0, 0.8, 0.8)
OUR_PLAN = ROOT / "weights" / "plans.json"
_RESAMPLING = "resample_data_or_seg_to_shape"


def architecture() -> dict:
    """nnU-Net's ``architecture`` entry: the network class and its arguments."""
    stages = len(FEATURES)
    return {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages,
            "features_per_stage": list(FEATURES),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "n_conv_per_stage": [2] * stages,
            "n_conv_per_stage_decoder": [2] * (stages - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }


def intensity_properties(plan_path: str | Path = OUR_PLAN) -> dict:
    """CT statistics in nnU-Net's form, from our plan's normalisation."""
    from inference.plans import Plan

    norm = Plan.load(plan_path).normalization
    return {"mean": norm.mean, "median": norm.mean, "std": norm.std,
            "min": norm.clip_low, "max": norm.clip_high,
            "percentile_00_5": norm.clip_low, "percentile_99_5": norm.clip_high}


def dataset_json() -> dict:
    return {"name": DATASET, "description": "pan-cancer lesions in CT (speed comparison only)",
            "channel_names": {"0": "CT"}, "labels": {"background": 0, "lesion": 1},
            "numTraining": 0, "file_ending": ".nii.gz"}


def plans(intensity: dict | None = None) -> dict:
    """nnU-Net v2's ``plans.json`` with the one configuration, ``3d_fullres``."""
    def resampling(is_seg: bool, order: int) -> dict:
        return {"is_seg": is_seg, "order": order, "order_z": 0, "force_separate_z": None}

    median_voxels = [round(n * s / t) for n, s, t in
                     zip(MEDIAN_SHAPE_ZYX, MEDIAN_SPACING_ZYX, SPACING_ZYX)]
    configuration = {
        "data_identifier": f"{PLANS}_{CONFIGURATION}",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(PATCH_ZYX),
        "median_image_size_in_voxels": median_voxels,
        "spacing": list(SPACING_ZYX),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": _RESAMPLING,
        "resampling_fn_seg": _RESAMPLING,
        "resampling_fn_data_kwargs": resampling(False, 3),
        "resampling_fn_seg_kwargs": resampling(True, 1),
        "resampling_fn_probabilities": _RESAMPLING,
        "resampling_fn_probabilities_kwargs": resampling(False, 1),
        "architecture": architecture(),
        "batch_dice": True,
    }
    return {
        "dataset_name": DATASET,
        "plans_name": PLANS,
        "original_median_spacing_after_transp": list(MEDIAN_SPACING_ZYX),
        "original_median_shape_after_transp": list(MEDIAN_SHAPE_ZYX),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": {CONFIGURATION: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {
            "0": intensity if intensity is not None else intensity_properties()},
    }


def write_plan_files(folder: str | Path, intensity: dict | None = None) -> Path:
    """``dataset.json`` and ``plans.json`` into ``folder`` (made if missing)."""
    from inference.folders import write_text_atomically

    folder = Path(folder)
    write_text_atomically(folder / "dataset.json", json.dumps(dataset_json(), indent=2) + "\n")
    write_text_atomically(folder / "plans.json", json.dumps(plans(intensity), indent=2) + "\n")
    return folder


def build_network(plan: dict, seed: int = 0):
    """nnU-Net's own network for ``plan``, initialised by nnU-Net after seeding torch."""
    import torch
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    arch = plan["configurations"][CONFIGURATION]["architecture"]
    torch.manual_seed(seed)
    return get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"],
                                  arch["_kw_requires_import"], input_channels=1,
                                  output_channels=len(dataset_json()["labels"]),
                                  allow_init=True, deep_supervision=False)


def write_model_folder(folder: str | Path, seed: int = 0, intensity: dict | None = None) -> dict:
    """The whole results folder (needs the ``peers`` extra); returns what was written:
    ``folder``, ``checkpoint`` and ``parameters`` (the network's parameter count)."""
    import torch

    folder = write_plan_files(folder, intensity)
    network = build_network(json.loads((folder / "plans.json").read_text()), seed)
    checkpoint = folder / f"fold_{FOLD}" / CHECKPOINT
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with atomic_temporary(checkpoint) as temporary:
        torch.save({"network_weights": network.state_dict(), "trainer_name": TRAINER,
                    "init_args": {"configuration": CONFIGURATION, "fold": FOLD},
                    "inference_allowed_mirroring_axes": (0, 1, 2), "current_epoch": 0,
                    "note": f"random weights (seed {seed}) for a speed comparison"}, temporary)
    return {"folder": folder, "checkpoint": checkpoint,
            "parameters": sum(p.numel() for p in network.parameters())}
