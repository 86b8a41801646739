"""The network: shapes, dynamic convolution, CBAM, gradients, bad input."""

import pytest
import torch
import torch.nn.functional as F

from inference.model import (
    CBAM,
    PRESETS,
    DynamicConv2d,
    ModelConfigError,
    build_model,
    count_parameters,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_shapes_per_preset(preset):
    model = build_model(preset)
    c = model.config
    x = torch.randn(2, 3, *c.patch_size)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 2, *c.patch_size)
    model.train()
    outs = model(x)
    assert len(outs) == c.n_stages - 1
    for i, o in enumerate(outs):
        assert o.shape == (2, 2, c.patch_size[0] // 2**i, c.patch_size[1] // 2**i)


def test_paper_preset_is_close_to_the_paper():
    # The paper reports 74.2M parameters.
    params = count_parameters(build_model("paper")) / 1e6
    assert abs(params - 74.2) / 74.2 < 0.02


def _loop_reference(conv: DynamicConv2d, x):
    """Per-sample aggregated kernel, one sample at a time: the definition."""
    a = conv.attention(x)
    outs = []
    for i in range(x.shape[0]):
        w = (a[i][:, None, None, None, None] * conv.weight).sum(0)
        b = (a[i][:, None] * conv.bias).sum(0)
        outs.append(F.conv2d(x[i:i + 1], w, b, conv.stride, conv.padding))
    return torch.cat(outs)


@pytest.mark.parametrize("stride", [1, 2])
def test_dynamic_forms_match_the_definition(stride):
    conv = DynamicConv2d(6, 5, stride=stride, n_kernels=4, temperature=1.0)
    x = torch.randn(3, 6, 16, 16)
    ref = _loop_reference(conv, x)
    for form in ("grouped", "branches"):
        conv.form = form
        assert torch.allclose(conv(x), ref, atol=1e-5), form


def test_dynamic_equals_static_when_k_is_one():
    conv = DynamicConv2d(4, 7, n_kernels=1)
    static = torch.nn.Conv2d(4, 7, 3, padding=1)
    static.weight.data.copy_(conv.weight[0])
    static.bias.data.copy_(conv.bias[0])
    x = torch.randn(2, 4, 12, 12)
    for form in ("grouped", "branches"):
        conv.form = form
        assert torch.allclose(conv(x), static(x), atol=1e-5)


def test_dynamic_equals_static_when_attention_is_one_hot():
    conv = DynamicConv2d(4, 7, n_kernels=4, temperature=1.0)
    with torch.no_grad():
        conv.fc2.weight.zero_()
        conv.fc2.bias.copy_(torch.tensor([0.0, 0.0, 1000.0, 0.0]))
    static = torch.nn.Conv2d(4, 7, 3, padding=1)
    static.weight.data.copy_(conv.weight[2])
    static.bias.data.copy_(conv.bias[2])
    x = torch.randn(2, 4, 12, 12)
    assert torch.equal(conv.attention(x), torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 2))
    for form in ("grouped", "branches"):
        conv.form = form
        assert torch.allclose(conv(x), static(x), atol=1e-5)


def test_temperature_flattens_attention_and_survives_state_dict():
    model = build_model("tiny")
    model.set_temperature(3.5)
    state = model.state_dict()
    keys = [k for k in state if k.endswith("temperature")]
    assert len(keys) == len(model.dynamic_convs()) > 0
    fresh = build_model("tiny")
    assert all(m.temperature.item() == 30.0 for m in fresh.dynamic_convs())
    fresh.load_state_dict(state)
    assert all(m.temperature.item() == 3.5 for m in fresh.dynamic_convs())
    conv = fresh.dynamic_convs()[3]
    x = torch.randn(2, conv.in_channels, 8, 8)
    conv.set_temperature(1e6)
    assert torch.allclose(conv.attention(x), torch.full((2, 4), 0.25), atol=1e-4)


def test_static_switch_has_no_dynamic_convolutions():
    model = build_model("tiny", dynamic=False)
    assert model.dynamic_convs() == []
    assert count_parameters(model) < count_parameters(build_model("tiny"))


def test_cbam_gates_lie_in_unit_interval():
    cbam = CBAM(32, ratio=4)
    x = torch.randn(3, 32, 10, 10) * 50
    channel, spatial = cbam.gates(x)
    for g in (channel, spatial):
        assert g.min() >= 0 and g.max() <= 1
    assert channel.shape == (3, 32, 1, 1) and spatial.shape == (3, 1, 10, 10)
    assert torch.allclose(cbam(x), x * channel * spatial)


def test_every_parameter_gets_a_gradient():
    model = build_model("tiny")
    model.train()
    x = torch.randn(2, 3, 64, 64)
    loss = sum(o.square().mean() for o in model(x))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert any(n.startswith("sam.") for n, _ in model.named_parameters())


def test_freeze_sam_stops_its_gradients():
    model = build_model("tiny")
    model.freeze_sam()
    sum(o.mean() for o in model(torch.randn(1, 3, 64, 64))).backward()
    assert all(p.grad is None for p in model.sam.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_wrong_channel_count_is_one_clear_line():
    model = build_model("tiny").eval()
    with pytest.raises(ModelConfigError,
                       match=r"expected input \(batch, 3, H, W\).*\(1, 1, 64, 64\)"):
        model(torch.zeros(1, 1, 64, 64))


def test_patch_not_divisible_by_stride():
    with pytest.raises(ModelConfigError, match="not divisible by the network's total stride 16"):
        build_model("tiny", patch_size=(64, 70))
    model = build_model("tiny").eval()
    with pytest.raises(ModelConfigError, match="not divisible"):
        model(torch.zeros(1, 3, 64, 72))


def test_unknown_preset():
    with pytest.raises(ModelConfigError,
                       match="unknown preset 'huge'; choose one of paper, fast, tiny"):
        build_model("huge")
