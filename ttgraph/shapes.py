"""Static shapes of every tensor in a model, so costs (MACs) can be counted exactly.

ONNX shape inference (with data propagation) resolves most graphs once the inputs are fixed; when it
leaves a tensor we need unresolved and every input is static, one onnxruntime run on zeros reads the
real shapes instead.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import onnx

from ttgraph.model_io import fits_protobuf, graph_inputs, inferred_from_inputs, input_dims, static_dims

Shape = tuple[int | None, ...]


def _value_shapes(values: Iterable[onnx.ValueInfoProto]) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for v in values:
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            out[v.name] = tuple(input_dims(v))
    return out


def is_static(shape: Shape | None) -> bool:
    return shape is not None and all(d is not None for d in shape)


def infer_shapes(model: onnx.ModelProto, wanted: Iterable[str] = ()) -> dict[str, Shape]:
    """Shapes of the model's tensors (None for unknown dims); ``wanted`` tensors get the onnxruntime fallback.

    Shapes come from the graph inputs first: a model's own value_info and output shapes may be stale (exported
    at 16×16, its inputs edited to 8×8 since) and are used only for tensors nothing else resolves — trusting
    them counted MACs at the old size and let a written model exceed its MACs budget."""
    inferred = inferred_from_inputs(model, output_shapes=False)
    values = [*model.graph.input] if inferred is None else [*inferred.input, *inferred.value_info, *inferred.output]
    shapes = _value_shapes(values)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    missing = [t for t in wanted if not is_static(shapes.get(t))]
    if missing:
        shapes.update(_probe_with_onnxruntime(model, missing))
    declared = _value_shapes([*model.graph.value_info, *model.graph.output])
    for name, shape in declared.items():
        known = shapes.get(name)
        if known is None or (not is_static(known) and len(known) == len(shape)):
            shapes[name] = tuple(k if k is not None else d for k, d in zip(known or shape, shape, strict=True))
    return shapes


def shapes_from_inputs(model: onnx.ModelProto) -> dict[str, Shape]:
    """The shapes ONNX inference derives from the graph inputs alone: value_info set aside and no onnxruntime
    probe. Only these may be baked into a rewrite as constants; a stale value_info (a batch-1 export made
    dynamic) or a probe on zeros (a Pad whose pads are an input) need not hold at run time."""
    if not all(is_static(tuple(input_dims(i))) for i in graph_inputs(model)):
        return {}
    inferred = inferred_from_inputs(model)
    if inferred is None:
        return {}
    return {name: shape for name, shape in _value_shapes(inferred.value_info).items() if is_static(shape)}


def _probe_with_onnxruntime(model: onnx.ModelProto, tensors: list[str]) -> dict[str, Shape]:
    """Run the model once on zeros with ``tensors`` exposed as outputs and read their shapes."""
    import onnxruntime as ort

    inputs = graph_inputs(model)
    known = {i.name: static_dims(input_dims(i)) for i in inputs}
    dims = {name: d for name, d in known.items() if d is not None}
    if len(dims) < len(known) or not fits_protobuf(model):
        return {}
    probe = copy.deepcopy(model)
    have = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in have:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    feeds = {}
    for i in inputs:
        elem = i.type.tensor_type.elem_type
        feeds[i.name] = np.zeros(dims[i.name], dtype=onnx.helper.tensor_dtype_to_np_dtype(elem))
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4  # errors reach the user as our one line, not as ORT log spam
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(tensors, feeds)
    except Exception:
        return {}
    return {name: tuple(int(d) for d in np.shape(v)) for name, v in zip(tensors, values, strict=True)}
