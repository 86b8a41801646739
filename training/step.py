"""One training step in named pieces, and the levers that keep a GPU busy.

The pieces (``train_step``): the batch to the device (``step_inputs``), augmentation
(``step_augment``), forward (``step_forward``), Dice + CE over the deep-supervision levels
(``step_loss``), backward (``step_backward``) and the optimiser (``step_optimise``);
``benchmark.training.train_steps`` times each.

A small network's step is thousands of small operations; on a GPU each is a kernel launched
from Python, and the launches, not the arithmetic, set the time. The levers
(``StepOptions``, each a ``training train`` option):

- ``loss_kernels="batched"``: the loss over all levels in one pass (``training.loss``);
  the same value, a fraction of the operations.
- ``adam="fused"``: Adam in one kernel over all parameters (it also unscales fp16
  gradients itself, without asking the host whether they overflowed).
- ``compile``: ``torch.compile`` of forward + loss (its backward is compiled with it), in
  torch's modes; ``reduce-overhead`` replays both as CUDA graphs.
- ``cuda_graph``: forward, loss, backward and optimiser captured once as one CUDA graph
  and replayed each step with the batch copied in: one launch for the whole step. The
  step must then never wait on the device (the batched loss, augmentation that never asks
  which samples drew a transform, fused and capturable Adam with its learning rate in a
  tensor on the device), run in one process, and need no loss scaling (bf16 or fp32).

``auto`` picks the batched loss and fused Adam on CUDA, and today's eager path on the CPU,
where an operation costs no launch and the levers would only add work.
"""

from __future__ import annotations

import functools
import logging
import time

import torch

from inference.preprocess import pad_value
from training.augment import augment
from training.loss import DeepSupervisionLoss
from training.settings import ADAMS, COMPILE_MODES, STEP_LOSS_KERNELS, StepOptions

log = logging.getLogger(__name__)
GRAD_CLIP = 12.0  # gradient-norm clip of every step (nnU-Net's)
GRAPH_WARMUP = 3  # eager steps before the capture: lazy initialisation, optimiser state


def resolve_options(options: StepOptions, device: torch.device, precision,
                    world: int = 1) -> StepOptions:
    """``options`` with ``auto`` decided for ``device``; ValueError (one line) for a
    combination that cannot run."""
    for name, value, allowed in (("compile", options.compile, COMPILE_MODES),
                                 ("adam", options.adam, ADAMS),
                                 ("loss kernels", options.loss_kernels, STEP_LOSS_KERNELS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    cuda = device.type == "cuda"
    adam = options.adam if options.adam != "auto" else ("fused" if cuda else "default")
    loss = options.loss_kernels if options.loss_kernels != "auto" else \
        ("batched" if cuda or options.cuda_graph else "per-level")
    if options.cuda_graph:
        _check_graph(options, cuda, precision, world, loss)
        adam = "fused" if options.adam == "auto" else adam
        if adam != "fused":
            raise ValueError("--cuda-graph captures fused Adam only: leave --adam auto")
    return StepOptions(options.compile, options.cuda_graph, adam, loss)


def _check_graph(options: StepOptions, cuda: bool, precision, world: int, loss: str) -> None:
    if not cuda:
        raise ValueError("--cuda-graph needs a CUDA device")
    if world > 1:
        raise ValueError("--cuda-graph runs in one process; under DDP use --compile")
    if precision == torch.float16:
        raise ValueError("--cuda-graph: fp16 loss scaling cannot be captured; use --amp bf16 "
                         "or --amp off")
    if options.compile in ("reduce-overhead", "max-autotune"):
        raise ValueError(f"--compile {options.compile} replays CUDA graphs itself; with "
                         "--cuda-graph use --compile default or max-autotune-no-cudagraphs")
    if loss != "batched":
        raise ValueError("--cuda-graph needs --loss-kernels batched (the per-level loss asks "
                         "the device whether a sample is partial)")


def make_optimizer(parameters, lr: float, weight_decay: float, options: StepOptions,
                   device: torch.device) -> torch.optim.Adam:
    """Adam as ``options`` say: torch's default implementation (foreach on CUDA, a loop on
    the CPU), foreach or fused; for a CUDA graph also capturable, with the learning rate in
    a tensor the graph reads."""
    kwargs = {"fused": True} if options.adam == "fused" else \
        {"foreach": True} if options.adam == "foreach" else {}
    if options.cuda_graph:
        kwargs.update(capturable=True)
        lr = torch.tensor(float(lr), device=device)
    return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay, **kwargs)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, device: torch.device) -> None:
    """Set every group's learning rate; one held in a tensor (a CUDA graph's) is written in
    place on ``device`` (a loaded checkpoint may have brought it to the CPU)."""
    for group in optimizer.param_groups:
        current = group["lr"]
        if not torch.is_tensor(current):
            group["lr"] = lr
        elif same_device(current.device, torch.device(device)):
            current.fill_(lr)
        else:
            group["lr"] = torch.tensor(float(lr), device=device)


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` is ``b``, where ``cuda`` without an index means the current one."""
    if a.type != b.type:
        return False
    if a.type != "cuda" or a.index == b.index:
        return True
    current = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return (a.index if a.index is not None else current) == \
        (b.index if b.index is not None else current)


def set_up_step(run, options: StepOptions, lr: float, weight_decay: float,
                loss: dict) -> None:
    """The optimiser, loss scaling, loss and levers of ``run``'s steps.

    ``run`` holds ``network`` (on ``device``), ``device``, ``precision`` and ``world``;
    ``loss`` holds ``DeepSupervisionLoss``'s arguments but ``kernels``. ValueError for
    options that cannot run. Call ``prepare_step`` once ``run.model`` is final (DDP).
    """
    run.options = resolve_options(options, run.device, run.precision, run.world)
    # a frozen SAM encoder has no gradient: it stays out of the optimiser (and of DDP's
    # all-reduce, which skips parameters that need no gradient)
    run.optimizer = make_optimizer([p for p in run.network.parameters() if p.requires_grad],
                                   lr, weight_decay, run.options, run.device)
    run.scaler = torch.amp.GradScaler("cuda", enabled=run.precision == torch.float16)
    run.loss_fn = DeepSupervisionLoss(**loss, kernels=run.options.loss_kernels)
    # on a GPU, work no sample drew costs less than the host waiting to find that out
    run.sync_free = run.device.type == "cuda"


def prepare_step(run) -> None:
    """The compiled forward + loss and the CUDA graph of ``run``'s steps, as chosen."""
    run.forward_loss = functools.partial(forward_loss, run)
    if run.options.compile != "off":
        mode = None if run.options.compile == "default" else run.options.compile
        run.forward_loss = torch.compile(run.forward_loss, mode=mode, dynamic=False)
    run.graphed = GraphedStep(run) if run.options.cuda_graph else None


def apply_gradients(network, optimizer, scaler, max_norm: float = GRAD_CLIP) -> None:
    """The optimiser half of a step: unscale (fp16), clip the gradient norm, step, rescale."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()


def train_step(run, batch: dict) -> torch.Tensor:
    """One optimiser step on one batch; returns its loss (a tensor on the device)."""
    image, label, partial = step_inputs(run, batch)
    image, label = step_augment(run, image, label)
    if run.graphed is not None:
        return run.graphed(image, label, partial)
    if run.options.compile in ("reduce-overhead", "max-autotune"):
        torch.compiler.cudagraph_mark_step_begin()
    loss = run.forward_loss(image, label, partial)
    step_backward(run, loss)
    step_optimise(run)
    # a copy: an output of compiled CUDA graphs is overwritten by the next replay
    return loss.detach().clone()


def step_inputs(run, batch: dict):
    """The batch's image, label and partial flags on the device (asynchronous from pinned
    memory: the host does not wait for the copy)."""
    device = run.device
    return tuple(batch[key].to(device, non_blocking=True)
                 for key in ("image", "label", "partial"))


def step_augment(run, image, label):
    """Augmented (or centre-cropped) patches of the sampled windows."""
    plan = run.plan
    if run.aug is not None:
        return augment(image, label, plan.patch_size, run.aug, pad_value(plan), run.generator,
                       sync_free=run.sync_free)
    return centre(image, label, plan.patch_size)


def step_forward(run, image):
    with torch.autocast(run.device.type, run.precision or torch.float32,
                        enabled=run.precision is not None,
                        cache_enabled=not run.options.cuda_graph):  # a graph needs it off
        return run.model(image)


def step_loss(run, outputs, label, partial):
    if run.loss_fn.kernels == "batched":  # casts once, after joining the levels
        return run.loss_fn(outputs, label, partial)
    return run.loss_fn([o.float() for o in outputs], label, partial)


def forward_loss(run, image, label, partial):
    """Forward and loss: what ``--compile`` compiles."""
    return step_loss(run, step_forward(run, image), label, partial)


def step_backward(run, loss) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()


def step_optimise(run) -> None:
    apply_gradients(run.network, run.optimizer, run.scaler)


def centre(image, label, patch):
    """The centre ``patch`` of (B, C, Wy, Wx) windows and their labels."""
    wy, wx = image.shape[-2:]
    oy, ox = (wy - patch[0]) // 2, (wx - patch[1]) // 2
    return (image[..., oy:oy + patch[0], ox:ox + patch[1]].float(),
            label[..., oy:oy + patch[0], ox:ox + patch[1]])


class GraphedStep:
    """Forward, loss, backward and optimiser of ``run`` as one CUDA graph.

    The first ``GRAPH_WARMUP`` calls are eager steps on a side stream (they initialise
    what is lazy, the optimiser's state among it); the next captures the step on static
    copies of its inputs, and every call from then on copies the batch in and replays it.
    Each call is one real step. The temperature buffers and the learning-rate tensor are
    read by the graph where they lie, so writing them in place reaches it.
    """

    def __init__(self, run):
        self.run, self.calls, self.graph = run, 0, None
        self.inputs, self.loss = None, None

    def __call__(self, image, label, partial) -> torch.Tensor:
        self.calls += 1
        if self.calls <= GRAPH_WARMUP:
            return self._eager(image, label, partial)
        if self.graph is None:
            self._capture(image, label, partial)
        else:
            for static, value in zip(self.inputs, (image, label, partial)):
                static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.loss.clone()

    def _eager(self, image, label, partial) -> torch.Tensor:
        run = self.run
        stream = torch.cuda.Stream(run.device)
        stream.wait_stream(torch.cuda.current_stream(run.device))
        with torch.cuda.stream(stream):
            loss = run.forward_loss(image, label, partial)
            step_backward(run, loss)
            step_optimise(run)
        torch.cuda.current_stream(run.device).wait_stream(stream)
        return loss.detach().clone()

    def _capture(self, image, label, partial) -> None:
        run, start = self.run, time.perf_counter()
        self.inputs = [t.clone() for t in (image, label, partial)]
        run.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes them anew
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            loss = run.forward_loss(*self.inputs)
            loss.backward()
            step_optimise(run)
        self.loss = loss.detach()
        log.info("step captured as a CUDA graph in %.1f s", time.perf_counter() - start)
