"""Replace chosen 1×1 convs by their TT cores, as plain ONNX ops every runtime runs fast.

- d = 1 (low-rank): two 1×1 Convs, the stride on the first, the bias on the last.
- d ≥ 2: an optional strided Slice, then per contraction step a Reshape and a MatMul with a constant
  matrix (see :mod:`ttgraph.contraction`), a final Reshape back to NCHW and the bias as an Add.
  No Transpose, no Einsum. Node and tensor names start with the original conv's label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from passes.find_pointwise import PointwiseConv
from passes.names import FreshNames
from ttgraph.contraction import contraction_steps, step_matrix
from ttgraph.shapes import is_static
from ttgraph.tt import format_of

INT64_MAX = np.iinfo(np.int64).max


@dataclass
class LayerRewrite:
    """What to put in place of one conv: its cores (float64, ``(r_{k-1}, m_k, n_k, r_k)``) and the order."""

    conv: PointwiseConv
    cores: list[np.ndarray]
    order: tuple[int, ...] | None = None


class RewriteAsTT:
    """Transform pass: emit each :class:`LayerRewrite` and remove the conv it replaces."""

    def __init__(self, rewrites: Sequence[LayerRewrite]):
        self.rewrites = list(rewrites)

    def __call__(self, graph: gs.Graph) -> gs.Graph:
        names = FreshNames(graph)
        opset = int(graph.opset or 13)
        runtime_shapes = False
        for rewrite in self.rewrites:
            emitter = _Emitter(graph, rewrite, names, opset)
            emitter.emit()
            runtime_shapes |= emitter.reads_shape
        if runtime_shapes:
            _forget_intermediate_shapes(graph)
        return graph.cleanup().toposort()


def _forget_intermediate_shapes(graph: gs.Graph) -> None:
    """Drop the dims (not the types) the model's value_info gave its intermediate tensors. onnxruntime trusts
    them over its own inference and would fold a ``Shape`` we read at run time to a stale export-time size
    (a batch-1 export made dynamic), breaking the model at every other size."""
    ends = {id(t) for t in [*graph.inputs, *graph.outputs]}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and id(tensor) not in ends:
            tensor.shape = None


class _Emitter:
    def __init__(self, graph: gs.Graph, rewrite: LayerRewrite, names: FreshNames, opset: int):
        self.graph, self.rewrite, self.names, self.opset = graph, rewrite, names, opset
        self.conv = rewrite.conv
        self.dtype = self.conv.weight_dtype
        self.prefix = f"{self.conv.label}/tt"
        self.reads_shape = False  # whether the output shape is read at run time

    def const(self, suffix: str, value: np.ndarray) -> gs.Constant:
        return gs.Constant(self.names(f"{self.prefix}/{suffix}"), np.ascontiguousarray(value))

    def node(self, op: str, suffix: str, inputs: list, attrs: dict | None = None, output=None) -> gs.Variable:
        out = output if output is not None else gs.Variable(self.names(f"{self.prefix}/{suffix}:0"))
        node = gs.Node(op, self.names(f"{self.prefix}/{suffix}"), attrs or {}, inputs, [out])
        self.graph.nodes.append(node)
        return out

    def emit(self) -> None:
        node = self.conv.node
        x, y = node.inputs[0], node.outputs[0]
        # Detach the original conv; graph.cleanup() then drops it and its now unused weights.
        node.inputs.clear()
        node.outputs.clear()
        fmt = format_of(self.rewrite.cores)
        if fmt.is_lowrank:
            self._emit_convs(x, y)
        else:
            self._emit_matmuls(x, y)

    def _emit_convs(self, x: gs.Tensor, y: gs.Tensor) -> None:
        first, second = (
            step_matrix(c, s.side)
            for c, s in zip(self.rewrite.cores, contraction_steps(format_of(self.rewrite.cores), (0, 1)), strict=True)
        )
        ones = [1] * self.conv.spatial_rank
        w0 = first.reshape(*first.shape, *ones).astype(self.dtype)
        w1 = second.reshape(*second.shape, *ones).astype(self.dtype)
        hidden = self.node(
            "Conv",
            "conv0",
            [x, self.const("conv0.w", w0)],
            {"kernel_shape": ones, "strides": list(self.conv.strides)},
        )
        inputs = [hidden, self.const("conv1.w", w1)]
        if self.conv.bias is not None:
            inputs.append(self.const("conv1.b", self.conv.bias))
        self.node("Conv", "conv1", inputs, {"kernel_shape": ones}, output=y)

    def _emit_matmuls(self, x: gs.Tensor, y: gs.Tensor) -> None:
        cores = self.rewrite.cores
        fmt = format_of(cores)
        data = x
        if any(s != 1 for s in self.conv.strides):
            data = self._strided(data)
        sliced = data
        for k, step in enumerate(contraction_steps(fmt, self.rewrite.order)):
            view = np.array([0, step.left, step.contracted, -1], dtype=np.int64)
            data = self.node("Reshape", f"reshape{k}", [data, self.const(f"reshape{k}.shape", view)])
            matrix = step_matrix(cores[step.core], step.side).astype(self.dtype)
            data = self.node("MatMul", f"matmul{k}", [self.const(f"core{step.core}", matrix), data])
        bias = self.conv.bias
        out = y if bias is None else None
        data = self.node("Reshape", "reshape_out", [data, self._output_shape(sliced)], output=out)
        if bias is not None:
            shaped = bias.reshape(-1, *[1] * self.conv.spatial_rank).astype(bias.dtype)
            self.node("Add", "bias", [data, self.const("bias", shaped)], output=y)

    def _strided(self, data: gs.Tensor) -> gs.Variable:
        rank = self.conv.spatial_rank
        axes = list(range(2, 2 + rank))
        steps = list(self.conv.strides)
        if self.opset < 10:  # Slice took attributes and had no steps before opset 10
            raise ValueError(f"{self.conv.label}: strided 1×1 rewrite needs opset ≥ 10, model has {self.opset}")
        inputs = [
            data,
            self.const("stride.starts", np.zeros(rank, np.int64)),
            self.const("stride.ends", np.full(rank, INT64_MAX, np.int64)),
            self.const("stride.axes", np.array(axes, np.int64)),
            self.const("stride.steps", np.array(steps, np.int64)),
        ]
        return self.node("Slice", "stride", inputs)

    def _output_shape(self, sliced: gs.Tensor) -> gs.Tensor:
        """``[N, Cout, *spatial]``: a constant when fixed graph inputs alone determine the conv's output shape,
        else read at run time (a dynamic input, or a size that depends on an input's value)."""
        shape = self.conv.fixed_output_shape
        if shape is not None and is_static(shape) and len(shape) == 2 + self.conv.spatial_rank:
            return self.const("out.shape", np.array(shape, np.int64))
        self.reads_shape = True
        rank = self.conv.spatial_rank
        dims = self.node("Shape", "in_shape", [sliced])
        batch = self.node("Gather", "batch", [dims, self.const("batch.idx", np.array([0], np.int64))], {"axis": 0})
        spatial_idx = np.arange(2, 2 + rank, dtype=np.int64)
        spatial = self.node("Gather", "spatial", [dims, self.const("spatial.idx", spatial_idx)], {"axis": 0})
        cout = self.const("cout", np.array([self.conv.cout], np.int64))
        return self.node("Concat", "out_shape", [batch, cout, spatial], {"axis": 0})
