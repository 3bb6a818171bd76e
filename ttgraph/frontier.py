"""Run a model step by step over the same samples, keeping between steps only the tensors that cut the part
already run from the rest (the *frontier*), so that k passes which each need a little more of the model cost
about one pass, not k ever longer prefixes.

Compensation needs, per dependency level, the inputs of that level's convs in a model whose upstream layers
were just refitted. Rerunning the model up to each level makes it quadratic in depth (a residual chain of 160
convs: 108 s, against 16 s run piecewise; ``benchmarks/compensation_time.py``). The layers refitted at level k
lie downstream of the level-k frontier, and nothing upstream of it changes afterwards: each step runs only the
nodes between the previous frontier and the next, from the cached frontier values.

The cut is planned on the original graph and applied by tensor name to any rewrite of it that keeps the names
of the tensors between its rewritten nodes (the TT rewrite does). Memory: the frontier of every sample, which
the caller caps; a graph with control flow (subgraphs read outer names implicitly) is not planned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ttgraph.model_io import envelope

__all__ = ["FRONTIER_BYTES", "CutPlan", "NotATensor", "Piece", "plan_cuts", "segment"]

# The values kept at the cuts, all samples (compensation: of both models), by default; past it a caller runs the
# next step from the graph inputs instead (compensation: that level; sensitivity: every probe after it).
FRONTIER_BYTES = 1 << 30

_SUBGRAPH = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


@dataclass(frozen=True)
class CutPlan:
    """Per step, the tensors it must deliver (``targets``) and the tensors later steps still read (``frontiers``,
    after that step), in graph order."""

    targets: list[list[str]]
    frontiers: list[list[str]]


def _ancestors(graph: onnx.GraphProto, producer: Mapping[str, int], names: Sequence[str]) -> set[int]:
    """Indices of the nodes ``names`` depend on."""
    seen: set[int] = set()
    stack = [producer[n] for n in names if n in producer]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack.extend(producer[n] for n in graph.node[i].input if n in producer and producer[n] not in seen)
    return seen


def plan_cuts(model: onnx.ModelProto, targets: Sequence[Sequence[str]]) -> CutPlan | None:
    """The frontier after each step when step k must deliver ``targets[k]``; None for a graph that cannot be
    cut by tensor names (control flow, sparse initializers)."""
    graph = model.graph
    if graph.sparse_initializer or any(a.type in _SUBGRAPH for n in graph.node for a in n.attribute):
        return None
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    constants = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in constants]
    steps = [list(dict.fromkeys(t)) for t in targets]
    needed = _ancestors(graph, producer, [n for step in steps for n in step])
    done: set[int] = set()
    frontiers: list[list[str]] = []
    for k, step in enumerate(steps):
        done |= _ancestors(graph, producer, step)
        later = {n for s in steps[k + 1 :] for n in s}
        read = {n for i in needed - done for n in graph.node[i].input} | later
        made = [*inputs, *(out for i in sorted(done) for out in graph.node[i].output if out)]
        frontiers.append([n for n in dict.fromkeys(made) if n in read])
    return CutPlan(steps, frontiers)


def segment(
    model: onnx.ModelProto,
    given: Mapping[str, np.dtype],
    wanted: Sequence[str],
    types: Mapping[str, np.dtype] | None = None,
) -> tuple[onnx.ModelProto, list[str]]:
    """The nodes of ``model`` that compute ``wanted`` from the ``given`` tensors (name → dtype) and the model's
    constants, as a model of their own; and the names it outputs (``wanted`` less the given and the constants).
    Outputs are typed from ``types`` where it names them (a rewrite of the piece needs them), else left for
    onnxruntime to infer. Raises KeyError naming a tensor that is neither given, a constant nor computed."""
    graph = model.graph
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    initializers = {t.name: t for t in graph.initializer}
    outputs = [n for n in dict.fromkeys(wanted) if n not in given and n not in initializers]
    nodes: set[int] = set()
    used: dict[str, None] = {}
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if not name or name in given or name in used:
            continue
        if name in initializers:
            used[name] = None
        elif name in producer:
            i = producer[name]
            if i not in nodes:
                nodes.add(i)
                stack.extend(graph.node[i].input)
        else:
            raise KeyError(name)
    read = {n for i in nodes for n in graph.node[i].input} | set(outputs)
    part = envelope(model)
    part.graph.name = f"{graph.name}-segment"
    part.graph.node.extend(graph.node[i] for i in sorted(nodes))
    part.graph.initializer.extend(initializers[n] for n in used)
    for name, dtype in given.items():
        if name in read:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            part.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, None))
    for name in outputs:
        if types is not None and name in types:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(types[name]))
            part.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
        else:
            part.graph.output.append(onnx.ValueInfoProto(name=name))
    return part, outputs


class NotATensor(Exception):
    """A value crossing a cut that is not a tensor (a sequence, an optional): it cannot be kept per sample."""


class Piece:
    """A piece of a model (:func:`segment`, or a rewrite of one) in an onnxruntime session, run sample by sample
    from the values kept at its cut: what compensation and the sensitivity probes both do at every level."""

    def __init__(self, model: onnx.ModelProto, fetch: Sequence[str], name: str = "<piece>") -> None:
        from ttgraph.verify import session

        self.fetch = list(fetch)
        self.session = session(model, name=name) if self.fetch else None  # nothing to compute: no session
        self.inputs = [i.name for i in self.session.get_inputs()] if self.session is not None else []

    def run(self, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``values`` with what the piece computes from them added. Raises :class:`NotATensor` for an output
        that is not a tensor."""
        out = dict(values)
        if self.session is None:
            return out
        got = self.session.run(self.fetch, {n: values[n] for n in self.inputs})
        odd = [n for n, v in zip(self.fetch, got, strict=True) if not isinstance(v, np.ndarray)]
        if odd:
            raise NotATensor(", ".join(odd))
        out.update(zip(self.fetch, got, strict=True))
        return out
