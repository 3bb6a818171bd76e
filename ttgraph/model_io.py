"""Reading and writing ONNX models safely: any source in, checked; atomic writes out; the input never touched.

Models come from users who did not write them, so every failure here becomes a one-line
:class:`~ttgraph.errors.TTGraphError` naming the file and what is wrong.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ttgraph.errors import TTGraphError
from ttgraph.files import check_output_path, staging_dir, write_atomic

ModelSource = str | os.PathLike[str] | bytes | onnx.ModelProto
InputShapes = Mapping[str, Sequence[int]]

# Protobuf cannot serialize a message of 2 GiB or more; such models keep their weights outside.
PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this big go to the external data file


def source_name(source: ModelSource) -> str:
    """How error messages name a model source."""
    if isinstance(source, onnx.ModelProto):
        return "<model>"
    if isinstance(source, bytes | bytearray):
        return "<bytes>"
    return os.fspath(source)


def parse_input_shapes(specs: Sequence[str] | None) -> dict[str, list[int]]:
    """Parse ``["x=1,3,640,640", ...]`` (the ``--input-shape`` option) into ``{"x": [1, 3, 640, 640]}``.

    >>> parse_input_shapes(["x=1,3,64,64"])
    {'x': [1, 3, 64, 64]}
    """
    shapes: dict[str, list[int]] = {}
    for spec in specs or ():
        name, sep, dims = spec.partition("=")
        try:
            values = [int(d) for d in dims.split(",")] if sep and dims else None
        except ValueError:
            values = None
        if not name or values is None or any(v <= 0 for v in values):
            raise TTGraphError(
                "--input-shape", f"expected NAME=D1,D2,... with positive integers, got {spec!r}"
            )
        shapes[name] = values
    return shapes


def load_model(
    source: ModelSource, input_shapes: InputShapes | None = None, *, check: bool = True
) -> onnx.ModelProto:
    """Load a model from a path, bytes or a ModelProto (copied, never mutated), with its external data.

    ``input_shapes`` fixes or overrides the shapes of graph inputs (for models with dynamic dims).
    The model is validated with ``onnx.checker`` unless ``check`` is False.
    """
    name = source_name(source)
    if isinstance(source, onnx.ModelProto):
        model = copy.deepcopy(source)
    elif isinstance(source, bytes | bytearray):
        model = _parse(bytes(source), name)
    else:
        model = _load_path(Path(source))
    if check:
        check_model(model, name)
    if input_shapes:
        set_input_shapes(model, input_shapes, name)
    return model


def _load_path(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise TTGraphError(path, "no such file")
    if not path.is_file():
        raise TTGraphError(path, "not a regular file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TTGraphError(path, f"cannot read: {err.strerror or err}") from err
    model = _parse(data, os.fspath(path))
    if any(
        t.data_location == onnx.TensorProto.EXTERNAL
        for t in onnx.external_data_helper._get_all_tensors(model)
    ):
        try:
            onnx.external_data_helper.load_external_data_for_model(model, os.fspath(path.parent))
        except Exception as err:  # OSError, ValueError or onnx's ValidationError for a missing/escaping file
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise TTGraphError(path, f"cannot load external data: {first}") from err
    return model


def _parse(data: bytes, name: str) -> onnx.ModelProto:
    if not data:
        raise TTGraphError(name, "empty file, expected an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as err:
        reason = str(err).split(": ")[-1] or type(err).__name__
        raise TTGraphError(
            name, f"cannot parse as an ONNX model (truncated, corrupt or another format): {reason}"
        ) from err
    if not model.HasField("graph") or not model.opset_import:
        raise TTGraphError(
            name, "not an ONNX model: it has no graph or no opset_import (truncated or another format?)"
        )
    return model


def check_model(model: onnx.ModelProto, name: str = "<model>") -> None:
    """Run ``onnx.checker`` and turn its complaint into a one-line error."""
    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                big = os.path.join(tmp, "model.onnx")
                # save_model with external data rewrites the tensors it is given: work on a copy.
                onnx.save_model(copy.deepcopy(model), big, save_as_external_data=True, location="model.data")
                onnx.checker.check_model(big)
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TTGraphError(name, f"fails onnx.checker: {first}") from err


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (old IRs also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def input_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """Dims of a tensor value: an int where static and positive, else None."""
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
        for d in value.type.tensor_type.shape.dim
    ]


def set_input_shapes(model: onnx.ModelProto, shapes: InputShapes, name: str = "<model>") -> None:
    """Fix the named inputs' shapes in place; intermediate value_info is dropped so it is re-inferred."""
    inputs = {i.name: i for i in graph_inputs(model)}
    for input_name, dims in shapes.items():
        if input_name not in inputs:
            known = ", ".join(inputs) or "none"
            raise TTGraphError(name, f"--input-shape names unknown input {input_name!r} (inputs: {known})")
        value = inputs[input_name]
        current = input_dims(value)
        if len(current) != len(dims):
            raise TTGraphError(
                name, f"input {input_name!r} has rank {len(current)}, --input-shape gives {len(dims)} dims"
            )
        for axis, (have, want) in enumerate(zip(current, dims, strict=True)):
            if have is not None and have != want:
                raise TTGraphError(
                    name,
                    f"input {input_name!r} has fixed size {have} on axis {axis}, --input-shape gives {want}",
                )
        shape = value.type.tensor_type.shape
        for dim, want in zip(shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = int(want)
    del model.graph.value_info[:]


def save_model(
    model: onnx.ModelProto, path: str | os.PathLike[str], *, source: ModelSource | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when over 2 GB.

    Refuses to overwrite ``source`` (the file the model came from). Nothing is left behind on failure.
    """
    inputs = (source,) if isinstance(source, str | os.PathLike) else ()
    target = check_output_path(path, inputs)
    if model.ByteSize() < PROTOBUF_LIMIT:
        return write_atomic(target, model.SerializeToString())
    data_name = f"{target.name}.data"
    with staging_dir(target) as tmp:
        staged = tmp / target.name
        onnx.save_model(  # on a copy: external-data saving rewrites the tensors it is given
            copy.deepcopy(model),
            staged,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=_EXTERNAL_THRESHOLD,
        )
        os.replace(tmp / data_name, target.parent / data_name)
        os.replace(staged, target)
    return target
