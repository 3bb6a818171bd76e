"""Find the pointwise (1×1) convolutions a TT rewrite can replace, and say why every other conv is skipped.

A candidate is a ``Conv`` whose kernel is all ones, with ``group == 1``, zero padding, and a constant
floating-point weight (initializer or ``Constant`` node) that no other node reads. Stride, dilation and a
constant bias are all fine: dilation does nothing to a 1×1 kernel and stride is a subsampling of the input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ttgraph.shapes import Shape

QUANTIZED_CONVS = ("QLinearConv", "ConvInteger")
FLOAT_DTYPES = (np.float32, np.float64, np.float16)


@dataclass
class PointwiseConv:
    """A 1×1 conv that can be rewritten; ``weight`` is the ``Cout × Cin`` matrix."""

    label: str
    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    strides: tuple[int, ...]
    weight_dtype: np.dtype
    input_shape: Shape | None
    output_shape: Shape | None
    fixed_output_shape: Shape | None = None  # derived from fixed graph inputs alone: safe to bake in

    @property
    def cout(self) -> int:
        return int(self.weight.shape[0])

    @property
    def cin(self) -> int:
        return int(self.weight.shape[1])

    @property
    def spatial_rank(self) -> int:
        return len(self.strides)

    @property
    def pixels(self) -> int | None:
        """Output positions (batch × spatial); an unknown batch counts as 1, unknown spatial gives None."""
        shape = self.output_shape
        if shape is None or len(shape) != 2 + self.spatial_rank or any(d is None for d in shape[2:]):
            return None
        return (shape[0] or 1) * math.prod(d for d in shape[2:] if d is not None)

    @property
    def params(self) -> int:
        return self.weight.size + (self.bias.size if self.bias is not None else 0)

    @property
    def macs(self) -> int | None:
        pixels = self.pixels
        return None if pixels is None else self.cout * self.cin * pixels


@dataclass
class SkippedConv:
    """A convolution that stays as it is, and why."""

    label: str
    op: str
    reason: str


@dataclass
class FoundConvs:
    candidates: list[PointwiseConv] = field(default_factory=list)
    skipped: list[SkippedConv] = field(default_factory=list)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a tensor that is an initializer or the output of a ``Constant`` node, else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    producers = tensor.inputs
    if len(producers) == 1 and producers[0].op == "Constant":
        value = producers[0].attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def node_labels(nodes: list[gs.Node]) -> dict[int, str]:
    """A unique, readable label per node: its name, else its first output's name; duplicates get ``#k``."""
    labels: dict[int, str] = {}
    seen: dict[str, int] = {}
    for node in nodes:
        base = node.name or (f"{node.op}@{node.outputs[0].name}" if node.outputs else node.op)
        count = seen.get(base, 0)
        seen[base] = count + 1
        labels[id(node)] = base if count == 0 else f"{base}#{count}"
    return labels


class FindPointwiseConvs:
    """Analysis pass: list rewritable 1×1 convs (with shapes, when known) and every skipped conv with a reason."""

    def __init__(
        self,
        shapes: dict[str, Shape] | None = None,
        fed: frozenset[str] | set[str] = frozenset(),
        fixed_shapes: dict[str, Shape] | None = None,
    ):
        self.shapes = shapes or {}
        self.fed = fed  # initializers that are graph inputs too: defaults a caller may replace at run time
        self.fixed_shapes = fixed_shapes or {}  # see ttgraph.shapes.shapes_from_inputs

    def __call__(self, graph: gs.Graph) -> FoundConvs:
        found = FoundConvs()
        labels = node_labels(graph.nodes)
        for node in graph.nodes:
            label = labels[id(node)]
            if node.op in QUANTIZED_CONVS:
                found.skipped.append(SkippedConv(label, node.op, f"quantized convolution ({node.op}) is not rewritten"))
            elif node.op == "Conv" and (node.domain or "") in ("", "ai.onnx"):
                result = self._classify(node, label)
                if isinstance(result, PointwiseConv):
                    found.candidates.append(result)
                else:
                    found.skipped.append(result)
            elif node.op == "ConvTranspose" and (node.domain or "") in ("", "ai.onnx"):
                found.skipped.append(SkippedConv(label, node.op, "transposed convolution: only Conv is rewritten"))
            elif node.op.endswith("Conv"):  # com.microsoft.FusedConv, NhwcConv, … (saved optimized models)
                op = f"{node.domain}.{node.op}"
                found.skipped.append(
                    SkippedConv(label, op, f"{op} is a runtime's own conv op: only ONNX Conv is rewritten")
                )
            for sub in _subgraphs(node):
                for inner in _convs_in(sub):
                    found.skipped.append(
                        SkippedConv(
                            inner.name or inner.op,
                            inner.op,
                            f"inside a subgraph of {node.op} node {label!r}; only the main graph is rewritten",
                        )
                    )
        for function in getattr(graph, "functions", []):
            for inner in _convs_in(function):
                reason = f"inside local function {function.name!r}; only the main graph is rewritten"
                found.skipped.append(SkippedConv(inner.name or inner.op, inner.op, reason))
        return found

    def _classify(self, node: gs.Node, label: str) -> PointwiseConv | SkippedConv:
        def skip(reason: str) -> SkippedConv:
            return SkippedConv(label, node.op, reason)

        if len(node.inputs) < 2 or not node.outputs:
            return skip("malformed Conv: needs an input and a weight")
        w_tensor = node.inputs[1]
        weight = constant_value(w_tensor)
        if weight is None:
            source = w_tensor.inputs[0].op if w_tensor.inputs else "a graph input"
            if source == "DequantizeLinear":
                return skip("weight is quantized (QDQ: DequantizeLinear); quantized convs are not rewritten")
            return skip(f"weight {w_tensor.name!r} is not a constant (comes from {source})")
        for tensor in node.inputs[1:3]:
            if tensor.name in self.fed:
                return skip(f"{tensor.name!r} is a graph input with a default value: it may be fed at run time")
        if weight.ndim < 3:
            return skip(f"weight has rank {weight.ndim}, a Conv weight needs rank ≥ 3")
        kernel = tuple(int(k) for k in weight.shape[2:])
        declared = node.attrs.get("kernel_shape")
        if declared is not None and tuple(int(k) for k in declared) != kernel:
            return skip(f"kernel_shape attribute {list(declared)} disagrees with the weight's kernel {list(kernel)}")
        group = int(node.attrs.get("group", 1))
        kernel_text = "×".join(map(str, kernel))
        if any(k != 1 for k in kernel):
            kind = " depthwise" if group > 1 and group == weight.shape[0] else (" grouped" if group > 1 else "")
            return skip(f"kernel {kernel_text}{kind} is not 1×1")
        if group != 1:
            cin = weight.shape[1] * group
            kind = "depthwise" if group == cin else "grouped"
            return skip(f"{kind} 1×1 (group = {group}); only group = 1 is rewritten")
        if weight.shape[0] == 0 or weight.shape[1] == 0:
            return skip(f"weight {w_tensor.name!r} is empty ({'×'.join(map(str, weight.shape))}): nothing to factor")
        if min(weight.shape[0], weight.shape[1]) == 1:  # any factor pair holds Cin + Cout > Cin·Cout values
            side = "output" if weight.shape[0] == 1 else "input"
            return skip(f"one {side} channel ({weight.shape[0]}×{weight.shape[1]}): no factorization is smaller")
        consumers = len(w_tensor.outputs)
        if consumers > 1:
            return skip(f"weight {w_tensor.name!r} is shared by {consumers} nodes")
        if weight.dtype.type not in FLOAT_DTYPES:
            return skip(f"weight dtype {weight.dtype} is not a supported float type (float32/float64/float16)")
        if not np.isfinite(weight).all():
            return skip(f"weight {w_tensor.name!r} holds NaN or infinite values")
        pads = [int(p) for p in node.attrs.get("pads", [])]
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if auto_pad == "NOTSET" and any(pads):
            return skip(f"padded 1×1 (pads = {pads}): its border is not a matrix product")
        bias = None
        if len(node.inputs) > 2 and node.inputs[2].name:
            bias = constant_value(node.inputs[2])
            if bias is None:
                return skip(f"bias {node.inputs[2].name!r} is not a constant")
        strides = tuple(int(s) for s in node.attrs.get("strides") or [1] * len(kernel))  # [] reads as absent
        if len(strides) != len(kernel):
            return skip(f"strides {list(strides)} do not match the {len(kernel)}-d kernel")
        return PointwiseConv(
            label=label,
            node=node,
            weight=weight.reshape(weight.shape[0], weight.shape[1]),
            bias=None if bias is None else bias.reshape(-1),
            strides=strides,
            weight_dtype=weight.dtype,
            input_shape=self.shapes.get(node.inputs[0].name),
            output_shape=self.shapes.get(node.outputs[0].name),
            fixed_output_shape=self.fixed_shapes.get(node.outputs[0].name),
        )


def _subgraphs(node: gs.Node) -> list[gs.Graph]:
    subs: list[gs.Graph] = []
    for value in node.attrs.values():
        if isinstance(value, gs.Graph):
            subs.append(value)
        elif isinstance(value, list):
            subs.extend(v for v in value if isinstance(v, gs.Graph))
    return subs


def _convs_in(graph: gs.Graph) -> list[gs.Node]:
    found = []
    for node in graph.nodes:
        if node.op.endswith("Conv") or node.op in (*QUANTIZED_CONVS, "ConvTranspose"):
            found.append(node)
        for sub in _subgraphs(node):
            found.extend(_convs_in(sub))
    return found
