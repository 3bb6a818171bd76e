"""Distillation: fit the factors of a compressed model to the *original* model's outputs by gradient descent on
the calibration inputs — no labels and no training pipeline, only the inputs the user already calibrates with.

Compensation (:mod:`ttgraph.compensate`) fits each layer alone, in closed form, to its own original output;
what a layer's error does downstream (through activations, squeeze-excitation gates, a softmax) it cannot see.
Distillation optimizes what the user measures — the distance between the compressed and the original model's
outputs, end to end — with the compressed layers' factors and biases as the only free parameters (the same
ranks: the same params and MACs; ``train="all"`` also frees every other conv/matmul weight and bias). It starts
from the compensated factors and streams the calibration source once per epoch, the original model (the
teacher) running beside it in onnxruntime, so memory does not grow with the number of samples. Held-out inputs
it never fits are scored after every epoch: an epoch that makes their loss worse sends the factors back to the
best epoch so far and divides the step size by ten (a step size too large for the model costs an epoch, not the
whole run), and the best epoch is what is returned — the input model if none beat the start.

Loss per output: ``Σ(y − t)² / Σ(t − t̄)²`` (scale-free, so outputs of different magnitudes weigh alike),
averaged over samples. An output that is a Softmax is distilled on its logits, centred over the softmax axis
(a softmax ignores a common shift): there a wrong winner is a large error instead of a saturated one. Adam with a
step size warmed up linearly over the first tenth of the steps, then cosine-decayed.
"""

from __future__ import annotations

import functools
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ttgraph.calibration import expose_tensors
from ttgraph.errors import TTGraphError
from ttgraph.model_io import constant_tensors, constants_as_initializers
from ttgraph.progress import progress_bar
from ttgraph.torch_graph import GraphModule, check_agrees, require_torch, torch
from ttgraph.verify import Feed, session

__all__ = ["Distillation", "Target", "distill", "distill_targets", "factor_initializers", "weight_initializers"]

_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
SHUFFLE_BATCHES = 16  # samples are shuffled within a window of this many batches as the source streams past
BACKOFF = 10  # the step size is divided by this after an epoch that makes the held-out loss worse


def factor_initializers(model: onnx.ModelProto, layers: Sequence[str]) -> list[str]:
    """The float initializers the TT rewrite emitted for ``layers`` (named ``<layer>/tt/…``): the factors,
    cores and biases distillation may change."""
    prefixes = tuple(f"{label}/tt/" for label in layers)
    return [i.name for i in model.graph.initializer if i.name.startswith(prefixes) and i.data_type in _FLOATS]


def weight_initializers(model: onnx.ModelProto) -> list[str]:
    """Every float constant (initializer or Constant node) that is a Conv/ConvTranspose/MatMul/Gemm weight or
    bias, or a BatchNorm scale or shift: what ``train="all"`` fits (costs stay: only values change)."""
    floats = {name for name, t in constant_tensors(model).items() if t.data_type in _FLOATS}
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            picked = node.input[:3]
        elif node.op_type == "BatchNormalization":
            picked = node.input[1:3]
        else:
            continue
        names += [n for n in picked if n in floats and n not in names]
    return names


@dataclass(frozen=True)
class Target:
    """A tensor the loss compares: a graph output, or the logits of an output Softmax (``centre`` = the axes a
    common shift of which the softmax ignores)."""

    output: str
    tensor: str
    centre: tuple[int, ...] | None = None


def distill_targets(model: onnx.ModelProto) -> list[Target]:
    """What the loss compares for each graph output (see :class:`Target`)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    targets = []
    for out in model.graph.output:
        node = producers.get(out.name)
        while node is not None and node.op_type == "Identity":  # exporters end graphs with an Identity
            node = producers.get(node.input[0])
        if node is None or node.op_type != "Softmax":
            targets.append(Target(out.name, out.name))
            continue
        rank = len(out.type.tensor_type.shape.dim)
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1) % max(rank, 1)
        # before opset 13 Softmax normalizes over every axis from ``axis`` on (the input flattened to 2-D)
        axes = (axis,) if opset >= 13 else tuple(range(axis, rank))
        targets.append(Target(out.name, node.input[0], axes))
    return targets


@dataclass
class Distillation:
    """What distillation did: the model (the fitted one if ``kept``, else the input), and the loss before and
    after on the calibration samples it fitted and on held-out samples."""

    model: onnx.ModelProto
    train: str
    parameters: int
    epochs: int
    steps: int
    samples: int
    batch: int
    stacked: bool
    lr: float
    seconds: float
    train_before: float
    train_after: float
    heldout_samples: int
    heldout_before: float | None
    heldout_after: float | None
    kept: bool
    best_epoch: int = 0  # the epoch whose factors were kept (0: none beat the start)
    step_size_reductions: int = 0
    history: list[float] = field(default_factory=list, repr=False)
    heldout_curve: list[float] = field(default_factory=list, repr=False)  # held-out loss after each epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": True,
            "train": self.train,
            "parameters": self.parameters,
            "epochs": self.epochs,
            "steps": self.steps,
            "samples": self.samples,
            "batch": self.batch,
            "stacked": self.stacked,  # a step's samples ran as one stacked batch (else one by one)
            "lr": self.lr,
            "seconds": round(self.seconds, 3),
            "loss": "mean over samples of Σ_outputs ‖y − t‖² / Σ(t − mean t)² (a Softmax output: its centred logits)",
            "calibration_loss_before": self.train_before,
            "calibration_loss_after": self.train_after,
            "heldout_samples": self.heldout_samples,
            "heldout_loss_before": self.heldout_before,
            "heldout_loss_after": self.heldout_after,
            "kept": self.kept,
            "best_epoch": self.best_epoch,
            "step_size_reductions": self.step_size_reductions,
            "loss_curve": _curve(self.history),
            "heldout_loss_per_epoch": self.heldout_curve,
        }


class _Best:
    """The factors of the epoch with the lowest held-out loss so far (epoch 0: the factors distillation started
    from), to go back to when an epoch makes things worse and to return at the end."""

    def __init__(self, params: list[Any], loss: float | None):
        self.params, self.loss, self.epoch = params, loss, 0
        self.saved = [p.detach().clone() for p in params]

    def offer(self, loss: float, epoch: int) -> bool:
        """Remember the current factors if ``loss`` beats the best so far; say whether it did."""
        if self.loss is None:
            raise ValueError("no held-out loss to start from: there is nothing to compare epochs with")
        if not loss < self.loss:  # NaN is never better
            return False
        self.loss, self.epoch = loss, epoch
        self.saved = [p.detach().clone() for p in self.params]
        return True

    def restore(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self.params, self.saved, strict=True):
                p.copy_(saved)


def _curve(history: list[float], points: int = 100) -> list[float]:
    """The per-step training loss averaged over at most ``points`` equal stretches (for the report's plot)."""
    if not history:
        return []
    parts = np.array_split(np.asarray(history, dtype=float), min(points, len(history)))
    return [float(p.mean()) for p in parts]


class _Teacher:
    """The original model in onnxruntime, giving each sample's targets (softmax logits centred)."""

    def __init__(self, original: onnx.ModelProto, targets: list[Target]):
        exposed, _ = expose_tensors(original, [(t.tensor, np.dtype(np.float32)) for t in targets])
        self.sess, self.targets = session(exposed), targets

    def __call__(self, feed: Feed) -> list[np.ndarray]:
        values = self.sess.run([t.tensor for t in self.targets], dict(feed))
        return [_centred_np(v, t.centre) for v, t in zip(values, self.targets, strict=True)]


def _centred_np(value: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    return value if axes is None else value - value.mean(axis=axes, keepdims=True)


def _stacked(feeds: Sequence[Feed]) -> dict[str, Any]:
    """Samples stacked on axis 0 (each feed holds one of the model's batch-1 inputs)."""
    return {k: torch.from_numpy(np.concatenate([np.asarray(f[k]) for f in feeds])) for k in feeds[0]}


class _Student:
    """The compressed model in PyTorch, run ``batch`` samples at a time when that gives the same outputs as one
    at a time (checked once, on the first two samples), else one at a time with accumulated gradients."""

    def __init__(self, module: GraphModule, targets: list[Target], scale: list[float], probe: list[Feed], batch: int):
        self.module, self.targets, self.scale, self.batch = module, targets, scale, 1
        if batch > 1 and len(probe) > 1:
            with torch.no_grad():
                together = self.outputs(probe[:2])
                apart = [self.outputs([f]) for f in probe[:2]]
            self.batch = (
                batch if all(_close(t, torch.cat([a, b])) for t, a, b in zip(together, *apart, strict=True)) else 1
            )

    def outputs(self, feeds: Sequence[Feed]) -> list[Any]:
        values = self.module(_stacked(feeds), [t.tensor for t in self.targets], batch=len(feeds))
        return [
            v if t.centre is None else v - v.mean(dim=t.centre, keepdim=True)
            for v, t in zip(values, self.targets, strict=True)
        ]

    def loss(self, feeds: Sequence[Feed], teacher: Sequence[list[np.ndarray]], weight: float, backward: bool) -> float:
        """``weight`` × the mean loss over ``feeds`` (backpropagated when ``backward``), run in chunks of
        ``batch``."""
        total = 0.0
        for i in range(0, len(feeds), self.batch):
            part, wanted = feeds[i : i + self.batch], teacher[i : i + self.batch]
            loss: Any = 0  # a tensor once the first output's term is added
            for k, (y, s) in enumerate(zip(self.outputs(part), self.scale, strict=True)):
                diff = y - torch.from_numpy(np.concatenate([t[k] for t in wanted]))
                loss = loss + (diff * diff).sum() / s
            loss = loss * (weight / len(feeds))
            if backward:
                loss.backward()
            total += float(loss.detach())
        return total


def _close(a, b) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-5 * (float(b.abs().max()) + 1e-30)))


def _shuffled(source: Iterable[Feed], window: int, rng: np.random.Generator) -> Iterator[Feed]:
    """The samples of ``source`` in a random order within a sliding window (a single pass, bounded memory)."""
    pool: list[Feed] = []
    for feed in source:
        pool.append(feed)
        if len(pool) >= window:
            yield pool.pop(int(rng.integers(len(pool))))
    rng.shuffle(pool)  # type: ignore[arg-type]
    yield from pool


def _batches(source: Iterable[Feed], size: int) -> Iterator[list[Feed]]:
    """Consecutive lists of ``size`` samples (the last may be shorter), read lazily: memory holds one batch."""
    it = iter(source)
    while part := list(itertools.islice(it, size)):
        yield part


def _mean_loss(student: _Student, teacher: _Teacher, source: Iterable[Feed]) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for part in _batches(source, student.batch):
            total += student.loss(part, [teacher(f) for f in part], len(part), backward=False)
            count += len(part)
    return (total / count if count else float("nan")), count


def _leaves_torch_as_it_was(fn: Callable[..., Distillation]) -> Callable[..., Distillation]:
    """A library call must not reseed the caller's PyTorch random generator or change its thread count."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Distillation:
        require_torch()
        threads = torch.get_num_threads()
        try:
            with torch.random.fork_rng(devices=[]):
                return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@_leaves_torch_as_it_was
def distill(
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    layers: Sequence[str],
    calibration: Iterable[Feed],
    heldout: Iterable[Feed] | None = None,
    *,
    epochs: int = 4,
    batch: int = 16,
    lr: float = 1e-3,
    train: str = "factors",
    threads: int | None = None,
    progress: bool = False,
    seed: int = 0,
) -> Distillation:
    """Fit the factors of ``layers`` in ``compressed`` (the TT rewrite of ``original``, before lowering) to the
    original's outputs on ``calibration`` (read ``epochs`` times: a list, or a re-iterable source), keeping the
    result only if the loss on ``heldout`` (or, without held-out samples, on the calibration samples) went down.
    ``compressed`` is not modified."""
    require_torch()
    if train not in ("factors", "all"):
        raise TTGraphError("options", f"distillation trains 'factors' or 'all', got {train!r}")
    if epochs < 1 or batch < 1 or not lr > 0:
        raise TTGraphError(
            "options", f"distillation needs epochs ≥ 1, batch ≥ 1 and lr > 0 (got {epochs}, {batch}, {lr})"
        )
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.perf_counter()
    targets = distill_targets(compressed)
    names = factor_initializers(compressed, layers) if train == "factors" else weight_initializers(compressed)
    if train == "all":  # weights held in Constant nodes become initializers, which can be trained
        compressed = constants_as_initializers(compressed, names)
    if not names:
        raise TTGraphError("distill", "the model has no compressed layers to distill")
    teacher = _Teacher(original, distill_targets(original))
    probe = [f for _, f in zip(range(64), calibration, strict=False)]
    if not probe:
        raise TTGraphError("distill", "no calibration samples to distill on")
    wanted = [teacher(f) for f in probe]
    # per output: the teacher's spread Σ(t − t̄)² over one sample, averaged over the first samples
    spread = [
        max(float(np.mean([np.sum((w[k] - w[k].mean()) ** 2) for w in wanted])), 1e-12) for k in range(len(targets))
    ]
    check_agrees(compressed, probe[0], "<compressed model>")
    module = GraphModule(compressed, names)
    student = _Student(module, targets, spread, probe, batch)
    train_before, samples = _mean_loss(student, teacher, calibration)
    held_before, held_count = _mean_loss(student, teacher, heldout) if heldout is not None else (None, 0)
    if held_count == 0:
        held_before = None
    params = [module.parameter(n) for n in names]
    optimizer = torch.optim.Adam(params, lr=lr)
    per_epoch = math.ceil(samples / batch)
    total = epochs * per_epoch
    warmup = max(1, total // 10)  # Adam's first steps move every parameter by about lr: start small

    # a back-off (an epoch that made the held-out loss worse) divides the step size by BACKOFF and restarts the
    # warm-up at step ``since``: Adam's moments are reset with the factors, and fresh moments move every
    # parameter by about lr
    scale, since, cuts = 1.0, 0, 0

    def rate(step: int) -> float:
        cosine = 0.5 * (1 + math.cos(math.pi * max(0, step - warmup) / max(1, total - warmup)))
        return scale * min(1.0, (step - since + 1) / warmup) * cosine

    rng = np.random.default_rng(seed)
    history: list[float] = []
    held_curve: list[float] = []
    best = _Best(params, held_before)
    with progress_bar(total=total, desc="distill", unit="step", show=progress, leave=False) as bar:
        for _ in range(epochs):
            for part in _batches(_shuffled(calibration, SHUFFLE_BATCHES * batch, rng), batch):
                optimizer.zero_grad()
                history.append(student.loss(part, [teacher(f) for f in part], 1.0, backward=True))
                for group in optimizer.param_groups:
                    group["lr"] = lr * rate(len(history) - 1)
                optimizer.step()
                bar.update()
                bar.set_postfix(loss=f"{history[-1]:.4g}")
            if held_before is None or heldout is None:
                continue
            held_curve.append(_mean_loss(student, teacher, heldout)[0])
            if not best.offer(held_curve[-1], len(held_curve)):
                # worse than the best epoch so far (a step size too large for this model, or overfitting): go
                # back to the best factors, forget Adam's moments and continue with a smaller step
                best.restore()
                optimizer.state.clear()
                scale, since, cuts = scale / BACKOFF, len(history), cuts + 1
                bar.set_postfix(loss=f"{history[-1]:.4g}", step_size=f"{lr * scale:.2g}")
    if held_before is not None:
        best.restore()
    train_after, _ = _mean_loss(student, teacher, calibration)
    held_after = best.loss if held_before is not None else None
    kept = best.epoch > 0 if held_before is not None else train_after < train_before
    result = compressed
    if kept:
        result = onnx.ModelProto()
        result.CopyFrom(compressed)
        by_name = {i.name: i for i in result.graph.initializer}
        for name in names:
            init = by_name[name]
            dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
            init.CopyFrom(numpy_helper.from_array(module.parameter(name).detach().numpy().astype(dtype), name))
    return Distillation(
        model=result,
        train=train,
        parameters=int(sum(p.numel() for p in params)),
        epochs=epochs,
        steps=len(history),
        samples=samples,
        batch=batch,
        stacked=student.batch > 1,
        lr=lr,
        seconds=time.perf_counter() - start,
        train_before=train_before,
        train_after=train_after,
        heldout_samples=held_count,
        heldout_before=held_before,
        heldout_after=held_after,
        kept=bool(kept),
        best_epoch=best.epoch if held_before is not None else epochs,
        step_size_reductions=cuts,
        history=history,
        heldout_curve=held_curve,
    )
