"""Export the network to ONNX for the onnxruntime backend.

Dynamic convolution has two exact forms (see ``DynamicConv2d``). The grouped form,
the fast one, folds the batch into the convolution's groups, so its graph is only valid
for the batch it was exported with: the runtime pads the last batch of tiles. The
K-branch form costs K times the convolution work but exports with a dynamic batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from inference.folders import atomic_temporary
from inference.model import LesionProbability, NnSam

OPSET = 18


def export_onnx(model: NnSam, path: str | Path, batch_size: int | None = 8,
                form: str = "grouped", dynamo: bool = False, output: str = "logits") -> Path:
    """Write ``model`` in eval mode to ``path``; ``batch_size=None`` means a dynamic batch.

    ``output="logits"`` keeps the (batch, classes, y, x) logits; ``"probability"``
    exports the one-channel lesion probability (batch, y, x) that inference uses.

    A dynamic batch needs ``form="branches"`` when the network has dynamic convolutions.
    The model's own dynamic form and training mode are restored afterwards.
    """
    path = Path(path)
    if batch_size is None and form == "grouped" and model.config.dynamic:
        raise ValueError("the grouped dynamic-convolution form exports only with a fixed "
                         "batch size; pass batch_size or form='branches'")
    config = model.config
    was_training = model.training
    previous_forms = [m.form for m in model.dynamic_convs()]
    model.eval()
    model.set_dynamic_form(form)
    example = torch.zeros(batch_size or 2, config.in_channels, *config.patch_size)
    if output not in ("logits", "probability"):
        raise ValueError(f"output must be 'logits' or 'probability', got {output!r}")
    graph = LesionProbability(model) if output == "probability" else model
    kwargs = dict(opset_version=OPSET, input_names=["tiles"], output_names=[output],
                  dynamo=dynamo)
    if batch_size is None:
        if dynamo:
            kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch")}}
        else:
            kwargs["dynamic_axes"] = {"tiles": {0: "batch"}, output: {0: "batch"}}
    try:
        with atomic_temporary(path, keep_suffix=True) as temporary, warnings.catch_warnings(), \
                torch.no_grad():
            # The TorchScript exporter warns that InstanceNorm in eval mode uses input
            # statistics: that is exactly what InstanceNorm does in both modes.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (example,), str(temporary), **kwargs)
    finally:
        for m, f in zip(model.dynamic_convs(), previous_forms):
            m.form = f
        model.train(was_training)
    return path
