"""The training step's levers: the same training, fewer operations, no waiting on the device."""

import collections
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from inference.model import build_model
from inference.plans import Plan
from training import step
from training.augment import AUGMENTATIONS, window_for
from training.step import StepOptions, resolve_options

CPU = torch.device("cpu")
# operations after which the host has to wait for the device
SYNCS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCS:
            self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _network(seed=0, **overrides):
    torch.manual_seed(seed)
    return build_model("tiny", **({"patch_size": (32, 32)} | overrides))


def _run(options: StepOptions, precision=None, sync_free=False, network=None, seed=0):
    """A Run of the tiny network (from ``seed``) at 32 px, batch 4, light augmentation."""
    plan = Plan(preset="tiny", patch_size=(32, 32))
    network = network or _network(seed)
    network.set_temperature(5.0)
    generator = torch.Generator().manual_seed(seed)
    run = SimpleNamespace(device=CPU, plan=plan, network=network, model=network, world=1,
                          precision=precision, aug=AUGMENTATIONS["light"], generator=generator)
    step.set_up_step(run, options, 1e-3, 3e-5, loss=dict(
        partial_mode="ignore", margin=4, dice="sample", deep_supervision="nnunet"))
    run.sync_free = sync_free
    step.prepare_step(run)
    return run


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    wy, wx = window_for((32, 32), AUGMENTATIONS["light"])
    out = []
    for i in range(n):
        label = (torch.rand(4, wy, wx, generator=g) > 0.9).to(torch.uint8)
        out.append({"image": torch.randn(4, 3, wy, wx, generator=g), "label": label,
                    "partial": torch.tensor([i % 2 == 0, False, True, False])})
    return out


def _train(run, batches, temperatures=None):
    losses = []
    for i, batch in enumerate(batches):
        if temperatures:
            run.network.set_temperature(temperatures[i])
        losses.append(float(step.train_step(run, batch)))
    return losses, torch.cat([p.detach().flatten() for p in run.network.parameters()])


def test_auto_keeps_todays_step_on_the_cpu_and_turns_the_levers_on_for_cuda():
    cpu = resolve_options(StepOptions(), CPU, None)
    assert (cpu.adam, cpu.loss_kernels, cpu.compile, cpu.cuda_graph) == \
        ("default", "per-level", "off", False)
    cuda = resolve_options(StepOptions(), torch.device("cuda", 0), torch.float16)
    assert (cuda.adam, cuda.loss_kernels) == ("fused", "batched")
    graph = resolve_options(StepOptions(cuda_graph=True), torch.device("cuda", 0),
                            torch.bfloat16)
    assert (graph.adam, graph.loss_kernels) == ("fused", "batched")


@pytest.mark.parametrize("options, device, precision, world, words", [
    (StepOptions(cuda_graph=True), "cpu", None, 1, "needs a CUDA device"),
    (StepOptions(cuda_graph=True), "cuda", torch.float16, 1, "--amp bf16"),
    (StepOptions(cuda_graph=True), "cuda", None, 2, "one process"),
    (StepOptions(cuda_graph=True, compile="reduce-overhead"), "cuda", None, 1, "itself"),
    (StepOptions(cuda_graph=True, loss_kernels="per-level"), "cuda", None, 1, "batched"),
    (StepOptions(cuda_graph=True, adam="foreach"), "cuda", None, 1, "fused"),
    (StepOptions(compile="fast"), "cpu", None, 1, "compile must be one of"),
])
def test_options_that_cannot_run_are_refused_in_one_line(options, device, precision, world,
                                                         words):
    with pytest.raises(ValueError) as info:
        resolve_options(options, torch.device(device), precision, world)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_the_cuda_path_never_waits_for_the_device():
    """The step a GPU runs by default (batched loss, fused Adam, augmentation that asks
    nothing), here on the CPU: no operation reads a value back to the host, so the host can
    run ahead of the device and the step can be captured as a CUDA graph."""
    run = _run(StepOptions(adam="fused", loss_kernels="batched"), torch.bfloat16,
               sync_free=True)
    batches = _batches(3)
    step.train_step(run, batches[0])  # lazy initialisation (Adam's state) outside the count
    with SyncCounter() as counter:
        for batch in batches[1:]:
            step.train_step(run, batch)
    assert counter.counts == {}
    today = _run(StepOptions())
    with SyncCounter() as counter:
        step.train_step(today, batches[1])
    assert counter.counts["nonzero"] >= 1  # the check can fail: today's step does wait


TEMPERATURES = [30.0, 20.0, 10.0, 1.0]


def _weights(network):
    return torch.cat([p.detach().flatten() for p in network.parameters()])


def test_batched_loss_and_augmentation_that_asks_nothing_train_as_the_eager_step_does():
    """After 4 steps (the temperature changing between them): the same losses and
    weights within float tolerance."""
    losses, weights = _train(_run(StepOptions()), _batches(4), TEMPERATURES)
    levers = _run(StepOptions(loss_kernels="batched"), sync_free=True)
    losses2, weights2 = _train(levers, _batches(4), TEMPERATURES)
    assert losses2 == pytest.approx(losses, rel=1e-5)
    assert torch.allclose(weights2, weights, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(weights, _weights(_network()), rtol=1e-3, atol=1e-5)  # it trained


def _trains_alike(run, reference, start):
    """``run`` trains 4 steps as ``reference`` did: the same losses, and an update of the
    weights whose difference from the reference's is a small part of it.

    Where a gradient is as small as Adam's epsilon, a different rounding of it moves single
    weights by up to the learning rate, so weights are compared as one update."""
    losses, weights = reference
    losses2, weights2 = _train(run, _batches(4), TEMPERATURES)
    assert losses2 == pytest.approx(losses, rel=1e-4)
    assert (weights2 - weights).norm() < 0.1 * (weights - start).norm()


def test_fused_adam_steps_as_torchs_default_adam_does():
    start = _weights(_network())
    reference = _train(_run(StepOptions()), _batches(4), TEMPERATURES)
    _trains_alike(_run(StepOptions(adam="fused")), reference, start)
    _, other = _train(_run(StepOptions()), _batches(4, seed=1), TEMPERATURES)
    # another sequence of batches: the check above can fail
    assert (other - reference[1]).norm() > 0.5 * (reference[1] - start).norm()


def test_compiled_step_trains_as_the_eager_step_does():
    """torch.compile (inductor, on the CPU) of forward + loss on a small network: the same
    training as eager over a few steps, without a graph break, the temperature annealing
    through 1 (a buffer the compiled code reads; a recompilation when it reaches 1)."""
    from torch._dynamo.utils import counters

    small = dict(n_stages=2, base_features=4, max_features=8, sam=False, cbam_ratio=2)
    start = _weights(_network(**small))
    reference = _train(_run(StepOptions(loss_kernels="batched"), network=_network(**small)),
                       _batches(4), TEMPERATURES)
    counters.clear()
    compiled = _run(StepOptions(loss_kernels="batched", compile="default"),
                    network=_network(**small))
    _trains_alike(compiled, reference, start)
    assert not counters["graph_break"]
    assert float(compiled.network.dynamic_convs()[0].temperature) == 1.0
    assert any(k.endswith("temperature") for k in compiled.network.state_dict())


def test_tensor_learning_rate_is_written_in_place_on_its_device():
    network = torch.nn.Linear(2, 2)
    optimizer = step.make_optimizer(network.parameters(), 1e-3, 0.0,
                                    dataclasses.replace(StepOptions(), cuda_graph=True,
                                                        adam="fused"), CPU)
    lr = optimizer.param_groups[0]["lr"]
    assert torch.is_tensor(lr)
    step.set_lr(optimizer, 5e-4, CPU)
    assert optimizer.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(5e-4)
    # "cuda" names the current GPU, as a tensor made there reports "cuda:0"
    assert step.same_device(torch.device("cuda", 0), torch.device("cuda"))
    assert not step.same_device(torch.device("cuda", 1), torch.device("cuda", 0))
    assert not step.same_device(torch.device("cpu"), torch.device("cuda"))
    plain = torch.optim.Adam(network.parameters(), lr=1e-3)
    step.set_lr(plain, 2e-4, CPU)
    assert plain.param_groups[0]["lr"] == 2e-4


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("options", [StepOptions(cuda_graph=True),
                                     StepOptions(compile="reduce-overhead")])
def test_cuda_graph_and_compiled_steps_train_as_eager_on_a_gpu(options):
    def run_on_gpu(opts):
        run = _run(StepOptions())
        run.device = torch.device("cuda", 0)
        run.network = run.model = run.network.to(run.device)
        run.generator = torch.Generator(device=run.device).manual_seed(0)
        run.precision = torch.bfloat16
        step.set_up_step(run, opts, 1e-3, 3e-5, loss=dict(partial_mode="ignore", margin=4))
        step.prepare_step(run)
        return _train(run, _batches(4), TEMPERATURES)

    start = _weights(_network())
    losses, weights = run_on_gpu(StepOptions(loss_kernels="batched", adam="fused"))
    losses2, weights2 = run_on_gpu(options)
    assert losses2 == pytest.approx(losses, rel=2e-2)  # bf16: coarser than on the CPU
    assert (weights2 - weights).norm() < 0.2 * (weights - start.to(weights.device)).norm()
