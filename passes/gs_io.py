"""Import and export through onnx-graphsurgeon without its blind spots: a list attribute with no entries, and
the doc strings and metadata it does not carry.

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
    """``gs.export_onnx``, with what graphsurgeon drops put back from ``original`` where the node, input or
    output still exists: empty list attributes, doc strings and metadata_props (an exporter's provenance, e.g.
    ``pkg.torch.onnx.*``), and the graph's own doc string and metadata."""
    exported = gs.export_onnx(graph)
    stash = _empty_lists(original)
    before = {n.output[0]: n for n in original.graph.node if n.output}
    for node in exported.graph.node:
        old = before.get(node.output[0]) if node.output else None
        if old is None or old.op_type != node.op_type:
            continue
        have = {a.name for a in node.attribute}
        node.attribute.extend(a for a in stash.get(node.output[0], []) if a.name not in have)
        _carry(old, node)
    for field in ("input", "output"):
        kept = {v.name: v for v in getattr(original.graph, field)}
        for value in getattr(exported.graph, field):
            if value.name in kept:
                _carry(kept[value.name], value)
    _carry(original.graph, exported.graph)
    return exported


def _carry(source: onnx.NodeProto | onnx.ValueInfoProto | onnx.GraphProto, target: object) -> None:
    """``source``'s doc string and metadata_props onto ``target`` where it has none of its own."""
    if source.doc_string and not target.doc_string:  # type: ignore[attr-defined]
        target.doc_string = source.doc_string  # type: ignore[attr-defined]
    props = getattr(source, "metadata_props", None)  # onnx ≥ 1.16 (IR 10)
    if props and not target.metadata_props:  # type: ignore[attr-defined]
        target.metadata_props.extend(props)  # type: ignore[attr-defined]
