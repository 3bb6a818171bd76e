"""Multiply-accumulate counts of a model's compute nodes, read from its tensor shapes.

Used for the share of model MACs a layer holds and to check that the MACs the report claims for a
rewritten layer are the MACs its emitted Conv/MatMul nodes really do. Unknown batch dims count as 1.
"""

from __future__ import annotations

import math

import onnx

from ttgraph.model_io import static_dims
from ttgraph.shapes import Shape

COUNTED_OPS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "ConvInteger",  # the quantized forms: the same MACs in int8
    "QLinearConv",
    "MatMulInteger",
    "QLinearMatMul",
    "LSTM",  # recurrent and Einsum layers: an audio or OCR model's MACs are there as much as in its convs
    "GRU",
    "RNN",
    "Einsum",
)
_WEIGHT_AT = {"QLinearConv": 3}  # where the weight is among the inputs, when not second


def _dims(shape: Shape | None) -> list[int] | None:
    """Static dims with an unknown leading (batch) dim taken as 1; None if anything else is unknown."""
    if shape is None:
        return None
    dims = list(shape)
    if dims and dims[0] is None:
        dims[0] = 1
    return static_dims(dims)


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    """MACs of one node of :data:`COUNTED_OPS`, or None when a shape it needs is unknown."""
    ins = [_dims(shapes.get(name)) if name else None for name in node.input]
    outs = [_dims(shapes.get(name)) for name in node.output]
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):
        w, y = ins[_WEIGHT_AT.get(node.op_type, 1)], outs[0]
        return None if w is None or y is None else math.prod(y) * math.prod(w[1:])
    if node.op_type in ("LSTM", "GRU", "RNN"):  # per step and sequence: every gate's W·x and R·h
        x, w, r = ins[0], ins[1], ins[2]
        return None if x is None or w is None or r is None else x[0] * x[1] * (math.prod(w) + math.prod(r))
    if node.op_type == "Einsum":
        return _einsum_macs(node, ins)
    if node.op_type == "ConvTranspose":
        x, w = ins[0], ins[1]
        return None if x is None or w is None else math.prod(x) * math.prod(w[1:])
    if node.op_type in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a, y = ins[0], outs[0]
        if a is None or y is None:
            return None
        return math.prod(y) * a[-1]
    if node.op_type == "Gemm":
        a, y = ins[0], outs[0]
        if a is None or y is None:
            return None
        trans_a = any(at.name == "transA" and at.i for at in node.attribute)
        return math.prod(y) * (a[0] if trans_a else a[-1])
    return None


def _einsum_macs(node: onnx.NodeProto, ins: list[list[int] | None]) -> int | None:
    """A plain evaluation's MACs: the product of every index's size (``bij,bjk->bik``: b·i·j·k); None for an
    ellipsis or an unknown shape."""
    equation = next((a.s.decode() for a in node.attribute if a.name == "equation"), "").replace(" ", "")
    terms = equation.split("->")[0].split(",")
    if "." in equation or len(terms) != len(ins) or any(d is None for d in ins):
        return None
    sizes: dict[str, int] = {}
    for term, dims in zip(terms, ins, strict=True):
        if dims is None or len(term) != len(dims):
            return None
        for letter, size in zip(term, dims, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)  # a broadcast 1 against its real size
    return math.prod(sizes.values())


def model_macs(model: onnx.ModelProto, shapes: dict[str, Shape]) -> tuple[int, int]:
    """Total MACs of the main graph's counted ops, and how many of them had unknown shapes."""
    total, unknown = 0, 0
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            macs = node_macs(node, shapes)
            if macs is None:
                unknown += 1
            else:
                total += macs
    return total, unknown


def human(value: int | float | None) -> str:
    """A count as people read it: 1234567 → '1.23M'; None (unknown) → '?'."""
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
