"""Fresh node and tensor names for graph passes: a pass that adds nodes must never reuse a name the graph has."""

from __future__ import annotations

import onnx_graphsurgeon as gs


class FreshNames:
    """``names("conv/tt/w")`` returns that name, or ``conv/tt/w_1``, ``_2``, … when the graph, one of its
    subgraphs (If/Loop/Scan bodies share the SSA namespace) or an earlier call already has it: node and
    tensor names share one namespace here, so neither can collide."""

    def __init__(self, graph: gs.Graph):
        self.used: set[str] = set()
        self._collect(graph)

    def _collect(self, graph: gs.Graph) -> None:
        self.used |= {n.name for n in graph.nodes} | set(graph.tensors().keys())
        for node in graph.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, list) else [value]:
                    if isinstance(sub, gs.Graph):
                        self._collect(sub)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name
