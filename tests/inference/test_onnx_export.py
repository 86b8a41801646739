"""ONNX export of every preset agrees with torch in fp32."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from inference.model import PRESETS, build_model
from inference.onnx_export import export_onnx

TOLERANCE = 1e-3


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _model(preset):
    torch.manual_seed(1)
    model = build_model(preset).eval()
    # Annealed temperature: attention far from uniform, so a wrong mix would show.
    model.set_temperature(1.0)
    return model


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_grouped_form_fixed_batch_parity(preset, tmp_path):
    model = _model(preset)
    x = torch.randn(2, 3, *model.config.patch_size)
    path = export_onnx(model, tmp_path / f"{preset}.onnx", batch_size=2, form="grouped")
    with torch.no_grad():
        expected = model(x).numpy()
    got = _run(path, x.numpy())
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.parametrize("preset", ["tiny", "fast"])
def test_branch_form_dynamic_batch_parity(preset, tmp_path):
    model = _model(preset)
    path = export_onnx(model, tmp_path / "m.onnx", batch_size=None, form="branches")
    assert all(m.form == "grouped" for m in model.dynamic_convs())  # restored
    for batch in (1, 3):
        x = torch.randn(batch, 3, *model.config.patch_size)
        with torch.no_grad():
            expected = model(x).numpy()
        assert np.abs(_run(path, x.numpy()) - expected).max() <= TOLERANCE


def test_grouped_form_refuses_a_dynamic_batch(tmp_path):
    with pytest.raises(ValueError, match="only with a fixed batch"):
        export_onnx(_model("tiny"), tmp_path / "m.onnx", batch_size=None, form="grouped")


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_sam_image_encoder_exports_with_both_exporters(dynamo, tmp_path):
    encoder = _model("tiny").sam.encoder
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "encoder.onnx"
    kwargs = {"dynamic_shapes": {"x": {0: torch.export.Dim("batch")}}} if dynamo else {
        "dynamic_axes": {"x": {0: "batch"}}}
    torch.onnx.export(encoder, (x,), str(path), opset_version=18, input_names=["x"],
                      dynamo=dynamo, **kwargs)
    for batch in (2, 3):
        xb = torch.randn(batch, 3, 64, 64)
        with torch.no_grad():
            expected = encoder(xb).numpy()
        assert np.abs(_run(path, xb.numpy()) - expected).max() <= TOLERANCE
