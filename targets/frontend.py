"""Make a third-party ONNX model that onnxruntime runs acceptable to TVM's Relax ONNX importer.

Exported models (Paddle, PyTorch, TF converters) carry dynamic input dims, shape arithmetic done at run
time (``Shape → Gather → Concat → Reshape``), weights as ``Constant`` nodes, old opsets and Resize nodes
with empty ``roi``/``scales`` inputs. onnxruntime copes with all of that; TVM 0.27's importer does not
(``Reshape requires the input new shape to be Shape``, ``Only one of scales and sizes can be provided in
Resize``...). :func:`prepare_for_tvm` turns such a model into a static one, in this order:

1. fix every input's shape (``input_shapes``, or a dynamic batch dim alone defaults to 1);
2. upgrade opsets older than 13 with ``onnx.version_converter`` (attribute-style axes/splits become
   inputs, which is what the importer's converters implement);
3. simplify with **onnxslim**: shape inference, constant folding of the shape subgraphs, dead-code and
   common-subexpression elimination, Conv+BatchNorm/Mul/Add fusion;
4. clean Resize nodes: drop empty or ignored ``roi``/``scales`` inputs, refuse what TVM would compute wrongly.

Why onnxslim rather than onnxsim: onnxslim is pure Python on top of onnx and onnxruntime (no native
extension to match against the installed onnx/protobuf, wheels for every platform and Python), is
released often and is used by large projects (Ultralytics' exporter), and it takes the fixed input
shapes and size limits as plain arguments. onnxsim ships a C++ extension per Python version and lags
new onnx releases. Its fusions emit only standard ONNX ops, so the result still runs in onnxruntime
(the tests compare both).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.model_io import (
    ModelSource,
    checked_input_shapes,
    constant_tensors,
    graph_inputs,
    input_dims,
    load_model,
    set_input_shapes,
    source_name,
    static_dims,
)
from ttgraph.process_state import shared, stdout_into

#: Opsets older than this are upgraded before import.
MIN_OPSET = 13


@dataclass
class PreparedModel:
    """A static, simplified model ready for ``from_onnx`` and what it takes and gives."""

    model: onnx.ModelProto
    input_shapes: dict[str, list[int]]
    input_dtypes: dict[str, str]
    output_names: list[str]
    steps: list[str] = field(default_factory=list)  # what was done, in order, for logs and reports


UNUSED_INPUTS = "unused input(s)"  # the step that says which inputs the library does not take


def prepare_for_tvm(
    source: ModelSource, input_shapes: Mapping[str, Sequence[int]] | None = None, *, simplify: bool = True
) -> PreparedModel:
    """Load ``source`` (path, bytes or ModelProto, never modified) and return a model TVM can import.

    >>> prepared = prepare_for_tvm("det.onnx", {"x": [1, 3, 640, 640]})  # doctest: +SKIP
    >>> prepared.input_shapes  # doctest: +SKIP
    {'x': [1, 3, 640, 640]}
    """
    name = source_name(source)
    model = load_model(source, check=False)
    steps: list[str] = []
    shapes = _static_shapes(model, checked_input_shapes(input_shapes) or {}, name, steps)
    set_input_shapes(model, shapes, name)

    opset = _default_opset(model)
    if opset < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
            steps.append(f"upgraded opset {opset} -> {MIN_OPSET}")
        except Exception as err:  # the converter raises bare RuntimeErrors from C++
            steps.append(f"kept opset {opset} (version converter failed: {_first_line(err)})")

    if simplify:
        before, declared = len(model.graph.node), [i.name for i in graph_inputs(model)]
        model = _slim(model, name)
        steps.append(f"onnxslim: {before} -> {len(model.graph.node)} nodes")
        kept = {i.name for i in graph_inputs(model)}
        dropped = [n for n in declared if n not in kept]
        if dropped:  # the library's main then takes fewer arguments than the ONNX model has inputs
            steps.append(f"{UNUSED_INPUTS} {', '.join(map(repr, dropped))}: not arguments of the library's main")
    cleaned = _clean_resize(model, name)
    if cleaned:
        steps.append(f"cleaned {cleaned} Resize node(s)")

    inputs = graph_inputs(model)
    dtypes = {i.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name for i in inputs}
    return PreparedModel(
        model=model,
        input_shapes={i.name: shapes[i.name] for i in inputs},
        input_dtypes=dtypes,
        output_names=[o.name for o in model.graph.output],
        steps=steps,
    )


def _static_shapes(
    model: onnx.ModelProto, given: Mapping[str, Sequence[int]], name: str, steps: list[str]
) -> dict[str, list[int]]:
    """One fully static shape per graph input: the given one, the declared one, or batch 1 for ``?×3×H×W``."""
    inputs = {i.name: i for i in graph_inputs(model)}
    unknown = [k for k in given if k not in inputs]
    if unknown:
        raise TTGraphError(
            name, f"input_shapes names unknown input {unknown[0]!r} (inputs: {', '.join(inputs) or 'none'})"
        )
    shapes: dict[str, list[int]] = {}
    for input_name, value in inputs.items():
        if not value.type.HasField("tensor_type"):
            raise TTGraphError(name, f"input {input_name!r} is not a tensor; only tensor inputs can be compiled")
        dims = input_dims(value)
        if input_name in given:
            shapes[input_name] = [int(d) for d in given[input_name]]
            continue
        if dims and dims[0] is None and all(d is not None for d in dims[1:]):
            dims = [1, *dims[1:]]
            steps.append(f"input {input_name!r}: dynamic batch dim set to 1")
        fixed = static_dims(dims)
        if fixed is None:
            shown = ",".join("?" if d is None else str(d) for d in dims)
            example = ",".join(_placeholder(axis, len(dims)) if d is None else str(d) for axis, d in enumerate(dims))
            raise TTGraphError(
                name,
                f"input {input_name!r} has dynamic dims [{shown}]; give a fixed shape, "
                f"e.g. input_shapes={{{input_name!r}: ({example.replace(',', ', ')})}}",
            )
        shapes[input_name] = fixed
    return shapes


def _placeholder(axis: int, rank: int) -> str:
    if axis == 0:
        return "1"
    if rank >= 3 and axis >= rank - 2:
        return "HW"[axis - rank + 2]
    return f"D{axis}"


def _default_opset(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


@contextlib.contextmanager
def _onnxslim_at_warning() -> Iterator[None]:
    logger = logging.getLogger("onnxslim")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _slim(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    try:
        import onnxslim
    except ImportError as err:
        raise TTGraphError("onnxslim", "is not installed; pip install 'ttgraph[tvm]'") from err
    # onnxslim logs and prints progress; keep the CLI's output to our own lines (the caller's level restored after)
    try:
        with shared("onnxslim-logger", _onnxslim_at_warning), stdout_into(io.StringIO()):
            slimmed = onnxslim.slim(model)
    except Exception as err:  # onnxslim surfaces onnx/onnxruntime/graphsurgeon errors of many types
        raise TTGraphError(name, f"onnxslim could not simplify the model: {_first_line(err)}") from err
    if slimmed is None:
        raise TTGraphError(name, "onnxslim returned no model")
    return slimmed


def _clean_resize(model: onnx.ModelProto, name: str) -> int:
    """Rewrite Resize nodes into the one form TVM's importer handles; returns how many changed."""
    consts = constant_tensors(model)
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Resize" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        where = node.name or node.output[0]
        if int(attrs.get("antialias", 0)) != 0:
            raise TTGraphError(name, "Resize with antialias=1 is not supported by TVM's importer", node=where)
        if "axes" in attrs:
            raise TTGraphError(name, "Resize with an 'axes' attribute is not supported by TVM's importer", node=where)
        if attrs.get("keep_aspect_ratio_policy", b"stretch") not in (b"stretch", "stretch"):
            raise TTGraphError(name, "Resize keep_aspect_ratio_policy other than stretch is not supported", node=where)
        inputs = list(node.input) + [""] * (4 - len(node.input))
        before = list(inputs)
        mode = attrs.get("coordinate_transformation_mode", b"half_pixel")
        for slot in (1, 2, 3):
            tensor = consts.get(inputs[slot])
            if tensor is not None and int(np.prod(tensor.dims)) == 0:
                inputs[slot] = ""  # an empty roi/scales/sizes means "not given"
        if inputs[1] and mode not in (b"tf_crop_and_resize", "tf_crop_and_resize"):
            inputs[1] = ""  # roi is ignored by every other coordinate mode
        if inputs[2] and inputs[3]:
            inputs[2] = ""  # both given: sizes wins (the spec allows only one)
        if not inputs[2] and not inputs[3]:
            raise TTGraphError(name, "Resize has neither scales nor sizes after constant folding", node=where)
        for slot in (2, 3):
            if inputs[slot] and inputs[slot] not in consts:
                raise TTGraphError(
                    name, "Resize scales/sizes are computed at run time; TVM needs them constant", node=where
                )
        while inputs and not inputs[-1]:
            inputs.pop()
        if inputs != before[: len(inputs)] or len(inputs) != len(node.input):
            del node.input[:]
            node.input.extend(inputs)
            changed += 1
    return changed


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
