"""Fast-lowering passes: exact ONNX rewrites that make a model run faster in onnxruntime and TVM.

Each pass is a small object with one job, called on an onnx-graphsurgeon graph; it edits the graph in place
and returns a :class:`PassResult` saying what it changed. They are exact up to float rounding (flushing
subnormals changes values below 1.2e-38 only). :class:`Lower` runs them in order.

- :class:`FuseHardSwish`: the exported ``x · Clip(x + 3, 0, 6) / 6`` (Add/Clip/Mul/Div) becomes the
  ``HardSwish`` op (opset ≥ 14) or ``x · HardSigmoid(x)`` (what onnxruntime runs as one fused kernel).
- :class:`FoldAffineIntoConv`: a per-channel ``BatchNormalization``/``Mul``/``Add``/``Div`` by a constant
  after a Conv is folded into the Conv's weight and bias; a per-channel ``Mul``/``Add`` before a 1×1
  Conv without padding is folded into it too (a padded kernel would see the shift at the borders).
- :class:`FlushSubnormals`: float32 constants below the normal range set to 0 (subnormal arithmetic is
  up to 15× slower on x86).

A pattern is left alone when an intermediate tensor is read by another node or is a graph output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from passes.find_pointwise import constant_value
from passes.names import FreshNames

TINY = float(np.finfo(np.float32).tiny)


@dataclass
class PassResult:
    """What one pass changed: ``count`` rewrites (fused patterns, folded nodes, flushed values)."""

    name: str
    count: int = 0
    nodes_removed: int = 0
    details: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"pass": self.name, "count": self.count, "nodes_removed": self.nodes_removed, "details": self.details}


def _graph_outputs(graph: gs.Graph) -> set[str]:
    return {t.name for t in graph.outputs}


def _only_consumer(tensor: gs.Tensor, graph_outputs: set[str]) -> gs.Node | None:
    """The single node reading ``tensor``, or None when several read it or it is a graph output."""
    if tensor.name in graph_outputs or len(tensor.outputs) != 1:
        return None
    return tensor.outputs[0]


def _scalar(tensor: gs.Tensor) -> float | None:
    value = constant_value(tensor)
    if value is None or value.size != 1 or not np.issubdtype(value.dtype, np.floating):
        return None
    return float(value.reshape(()))


def _rank_kept(x: gs.Tensor, const: gs.Tensor) -> bool:
    """Whether broadcasting ``x`` with the scalar-valued ``const`` keeps ``x``'s shape (a scalar of higher rank
    than ``x`` would add dims)."""
    value = constant_value(const)
    if value is None:
        return False
    return value.ndim <= 1 or (x.shape is not None and len(x.shape) >= value.ndim)


def _other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    ins = list(node.inputs)
    if len(ins) != 2:
        return None
    if ins[0] is tensor and ins[1] is not tensor:
        return ins[1]
    if ins[1] is tensor and ins[0] is not tensor:
        return ins[0]
    return None


def _clip_bounds(node: gs.Node) -> tuple[float | None, float | None] | None:
    """(min, max) of a Clip whose bounds are constants (attributes before opset 11, inputs after)."""
    if "min" in node.attrs or "max" in node.attrs:
        return node.attrs.get("min"), node.attrs.get("max")
    bounds: list[float | None] = []
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i].name:
            value = _scalar(node.inputs[i])
            if value is None:
                return None
            bounds.append(value)
        else:
            bounds.append(None)
    return bounds[0], bounds[1]


class FuseHardSwish:
    """``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` (or ``Mul(…, 1/6)``) → ``HardSwish(x)`` / ``x·HardSigmoid(x)``."""

    name = "fuse-hardswish"

    def __call__(self, graph: gs.Graph) -> PassResult:
        result = PassResult(self.name)
        outs = _graph_outputs(graph)
        opset = int(graph.opset or 13)
        for add in [n for n in graph.nodes if n.op == "Add"]:
            match = self._match(add, outs)
            if match is None:
                continue
            x, nodes, y = match
            for node in nodes:
                node.outputs.clear()
                node.inputs.clear()
            base = nodes[0].name or y.name
            if opset >= 14:
                graph.nodes.append(gs.Node("HardSwish", f"{base}/hardswish", inputs=[x], outputs=[y]))
                result.nodes_removed += len(nodes) - 1
            else:
                h = gs.Variable(f"{y.name}/hardsigmoid", dtype=y.dtype, shape=y.shape)
                graph.nodes.append(
                    gs.Node(
                        "HardSigmoid",
                        f"{base}/hardsigmoid",
                        attrs={"alpha": 1.0 / 6.0, "beta": 0.5},
                        inputs=[x],
                        outputs=[h],
                    )
                )
                graph.nodes.append(gs.Node("Mul", f"{base}/hardswish", inputs=[x, h], outputs=[y]))
                result.nodes_removed += len(nodes) - 2
            result.count += 1
        if result.count:
            graph.cleanup().toposort()
        return result

    @staticmethod
    def _match(add: gs.Node, outs: set[str]) -> tuple[gs.Tensor, list[gs.Node], gs.Tensor] | None:
        if len(add.inputs) != 2:
            return None
        for x in add.inputs:
            three = _other_input(add, x)
            if three is None or _scalar(three) != 3.0 or constant_value(x) is not None or not _rank_kept(x, three):
                continue
            clip = _only_consumer(add.outputs[0], outs)
            if clip is None or clip.op != "Clip" or clip.inputs[0] is not add.outputs[0]:
                continue
            if _clip_bounds(clip) != (0.0, 6.0):
                continue
            mul = _only_consumer(clip.outputs[0], outs)
            if mul is None or mul.op != "Mul" or _other_input(mul, clip.outputs[0]) is not x:
                continue
            last = _only_consumer(mul.outputs[0], outs)
            if last is None or last.inputs[0] is not mul.outputs[0] or len(last.inputs) != 2:
                continue
            k = _scalar(last.inputs[1])
            if not _rank_kept(x, last.inputs[1]):
                continue
            if not ((last.op == "Div" and k == 6.0) or (last.op == "Mul" and k is not None and abs(k - 1 / 6) < 1e-7)):
                continue
            return x, [add, clip, mul, last], last.outputs[0]
        return None


def _channel_vector(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts over an NC... tensor of ``rank`` dims per channel only, as a (C,) vector."""
    if value.ndim > rank or not np.issubdtype(value.dtype, np.floating):
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _conv_parts(conv: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """A Conv's constant weight and bias (zeros if absent), float64, or None."""
    if conv.op != "Conv" or len(conv.inputs) < 2:
        return None
    w = constant_value(conv.inputs[1])
    if w is None or w.dtype != np.float32:
        return None
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        b = constant_value(conv.inputs[2])
        if b is None:
            return None
    else:
        b = np.zeros(w.shape[0], np.float32)
    return w.astype(np.float64), b.astype(np.float64)


def _set_conv_parts(conv: gs.Node, w: np.ndarray, b: np.ndarray, names: FreshNames) -> None:
    """The folded weight and bias in place of the conv's own; no bias where it had none and the fold left it 0 (a
    Mul folded before a factor conv added r zeros, counted as params "folded in")."""
    base = conv.name or conv.outputs[0].name
    had_bias = len(conv.inputs) > 2 and bool(conv.inputs[2].name)
    weight = gs.Constant(names(f"{base}/folded_w"), np.ascontiguousarray(w.astype(np.float32)))
    while len(conv.inputs) > 1:
        conv.inputs.pop()
    conv.inputs.append(weight)
    if had_bias or np.any(b):
        conv.inputs.append(gs.Constant(names(f"{base}/folded_b"), np.ascontiguousarray(b.astype(np.float32))))


class FoldAffineIntoConv:
    """Fold per-channel constant affine ops next to a Conv into its weight and bias.

    After a Conv: ``BatchNormalization`` (inference form), ``Mul``/``Div``/``Add``/``Sub`` by a per-channel
    constant. Before a 1×1, unpadded, ungrouped Conv: ``Mul``/``Add``/``Sub`` by a per-channel constant.
    """

    name = "fold-affine"

    def __call__(self, graph: gs.Graph) -> PassResult:
        result = PassResult(self.name)
        outs = _graph_outputs(graph)
        names = FreshNames(graph)
        changed = True
        while changed:
            changed = False
            for conv in [n for n in graph.nodes if n.op == "Conv"]:
                if not conv.outputs:
                    continue
                for fold in (self._fold_after, self._fold_before):
                    label = fold(conv, outs, names)
                    if label:
                        result.count += 1
                        result.nodes_removed += 1
                        result.details.append(label)
                        changed = True
                        break
        if result.count:
            graph.cleanup().toposort()
        return result

    @staticmethod
    def _fold_after(conv: gs.Node, outs: set[str], names: FreshNames) -> str | None:
        y = conv.outputs[0]
        nxt = _only_consumer(y, outs)
        parts = _conv_parts(conv)
        if nxt is None or parts is None:
            return None
        w, b = parts
        cout, rank = w.shape[0], w.ndim
        if nxt.op == "BatchNormalization":
            if len(nxt.outputs) != 1 or nxt.attrs.get("training_mode", 0) or nxt.inputs[0] is not y:
                return None
            values = [constant_value(t) for t in nxt.inputs[1:5]]
            if any(v is None for v in values):
                return None
            scale, shift, mean, var = (v.astype(np.float64).reshape(-1) for v in values)  # type: ignore[union-attr]
            if any(v.size != cout for v in (scale, shift, mean, var)):
                return None
            a = scale / np.sqrt(var + float(nxt.attrs.get("epsilon", 1e-5)))
            c = shift - mean * a
        elif nxt.op in ("Mul", "Add", "Sub", "Div"):
            other = _other_input(nxt, y)
            value = None if other is None else constant_value(other)
            vec = None if value is None else _channel_vector(value, cout, rank)
            if vec is None or (nxt.op in ("Sub", "Div") and nxt.inputs[0] is not y):
                return None
            if nxt.op == "Div" and np.any(vec == 0):
                return None
            ones, zeros = np.ones(cout), np.zeros(cout)
            if nxt.op in ("Mul", "Div"):
                a, c = (vec if nxt.op == "Mul" else 1.0 / vec), zeros
            else:
                a, c = ones, (vec if nxt.op == "Add" else -vec)
        else:
            return None
        _set_conv_parts(conv, w * a.reshape((-1,) + (1,) * (rank - 1)), b * a + c, names)
        z = nxt.outputs[0]
        nxt.outputs.clear()
        nxt.inputs.clear()
        conv.outputs[0] = z
        return f"{nxt.op} {nxt.name or z.name} → {conv.name}"

    @staticmethod
    def _fold_before(conv: gs.Node, outs: set[str], names: FreshNames) -> str | None:
        x = conv.inputs[0]
        prev = x.inputs[0] if len(x.inputs) == 1 else None
        parts = _conv_parts(conv)
        if prev is None or parts is None or prev.op not in ("Mul", "Add", "Sub") or _only_consumer(x, outs) is None:
            return None
        w, b = parts
        if int(conv.attrs.get("group", 1)) != 1 or any(k != 1 for k in w.shape[2:]):
            return None
        if any(int(p) for p in conv.attrs.get("pads", [])) or conv.attrs.get("auto_pad", "NOTSET") not in (
            "NOTSET",
            "VALID",
        ):
            return None
        cin = w.shape[1]
        if prev.op == "Sub" and constant_value(prev.inputs[1]) is None:
            return None
        src = next((t for t in prev.inputs if constant_value(t) is None), None)
        other = None if src is None else _other_input(prev, src)
        value = None if other is None else constant_value(other)
        vec = None if value is None else _channel_vector(value, cin, w.ndim)
        if vec is None or src is None or (prev.op == "Sub" and prev.inputs[0] is not src):
            return None
        shape = src.shape
        if shape is None or len(shape) != w.ndim or shape[1] != cin:  # the constant must not broadcast src up
            return None
        if prev.op == "Mul":
            w2, b2 = w * vec.reshape((1, -1) + (1,) * (w.ndim - 2)), b
        else:
            shift = vec if prev.op == "Add" else -vec
            w2, b2 = w, b + w.reshape(w.shape[0], w.shape[1]) @ shift
        _set_conv_parts(conv, w2, b2, names)
        conv.inputs[0] = src
        prev.outputs.clear()
        prev.inputs.clear()
        return f"{prev.op} {prev.name or x.name} → {conv.name}"


class FlushSubnormals:
    """Set float32 constants with 0 < |v| < 1.18e-38 to zero (in initializers and Constant nodes)."""

    name = "flush-subnormals"

    def __call__(self, graph: gs.Graph) -> PassResult:
        result = PassResult(self.name)
        seen: set[int] = set()
        tensors = list(graph.tensors().values())
        tensors += [n.attrs["value"] for n in graph.nodes if n.op == "Constant" and "value" in n.attrs]
        for tensor in tensors:
            if not isinstance(tensor, gs.Constant) or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            values = tensor.values
            if not isinstance(values, np.ndarray) or values.dtype != np.float32:
                continue
            tiny = (values != 0) & (np.abs(values) < TINY)
            n = int(tiny.sum())
            if n:
                fixed = values.copy()
                fixed[tiny] = 0.0
                tensor.values = fixed
                result.count += n
                result.details.append(f"{tensor.name}: {n}")
        return result


PASSES = {p.name: p for p in (FuseHardSwish, FoldAffineIntoConv, FlushSubnormals)}
DEFAULT_PASSES: tuple[str, ...] = ("fuse-hardswish", "fold-affine", "flush-subnormals")


class Lower:
    """Run the named lowering passes in order; ``results`` holds what each changed."""

    def __init__(self, names: Sequence[str] = DEFAULT_PASSES):
        unknown = [n for n in names if n not in PASSES]
        if unknown:
            raise ValueError(f"unknown lowering pass {unknown[0]!r} (known: {', '.join(PASSES)})")
        self.names = list(names)
        self.results: list[PassResult] = []

    def __call__(self, graph: gs.Graph) -> gs.Graph:
        self.results = [PASSES[name]()(graph) for name in self.names]
        return graph.cleanup().toposort()
