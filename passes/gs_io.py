"""Import and export through onnx-graphsurgeon without its blind spot: a list attribute with no entries.

graphsurgeon imports ``axes=[]`` (a Squeeze-11 that passes the checker and runs) as a plain empty list and
then cannot export it ("Could not infer attribute type from empty iterator"). Such attributes are taken off a
copy before import and put back on the same nodes (found by their first output, unique in an SSA graph) after
export.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

_LISTS = (
    onnx.AttributeProto.INTS,
    onnx.AttributeProto.FLOATS,
    onnx.AttributeProto.STRINGS,
    onnx.AttributeProto.TENSORS,
    onnx.AttributeProto.GRAPHS,
)


def _is_empty_list(attr: onnx.AttributeProto) -> bool:
    return attr.type in _LISTS and not (attr.ints or attr.floats or attr.strings or attr.tensors or attr.graphs)


def _empty_lists(model: onnx.ModelProto) -> dict[str, list[onnx.AttributeProto]]:
    """The empty list attributes of the top graph's nodes, by the node's first output."""
    found: dict[str, list[onnx.AttributeProto]] = {}
    for node in model.graph.node:
        empty = [a for a in node.attribute if _is_empty_list(a)]
        if empty and node.output:
            found[node.output[0]] = empty
    return found


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``gs.import_onnx``; a model with empty list attributes is imported from a copy without them."""
    if not _empty_lists(model):
        return gs.import_onnx(model)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for node in copy.graph.node:
        kept = [a for a in node.attribute if not _is_empty_list(a)]
        del node.attribute[:]
        node.attribute.extend(kept)
    return gs.import_onnx(copy)


def export_model(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """``gs.export_onnx``, with ``original``'s empty list attributes back on the nodes that still exist."""
    exported = gs.export_onnx(graph)
    stash = _empty_lists(original)
    if stash:
        for node in exported.graph.node:
            have = {a.name for a in node.attribute}
            for attr in stash.get(node.output[0] if node.output else "", []):
                if attr.name not in have:
                    node.attribute.append(attr)
    return exported
