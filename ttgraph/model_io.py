"""Reading and writing ONNX models safely: any source in, checked; atomic writes out; the input never touched.

Models come from users who did not write them, so every failure here becomes a one-line
:class:`~ttgraph.errors.TTGraphError` naming the file and what is wrong.
"""

from __future__ import annotations

import copy
import numbers
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError, EncodeError

from ttgraph.errors import TTGraphError
from ttgraph.files import Staging, check_output_path, staged_writes

ModelSource = str | os.PathLike[str] | bytes | bytearray | onnx.ModelProto
# dims as ints, numpy ints or an integer array: what a pipeline has at hand
InputShapes = Mapping[str, Sequence[int | np.integer[Any]] | np.ndarray[Any, np.dtype[np.integer[Any]]]]

# Protobuf cannot serialize a message of 2 GiB or more; such models keep their weights outside.
PROTOBUF_LIMIT = 2**31 - 1
_EXTERNAL_THRESHOLD = 1024  # bytes: tensors at least this big go to the external data file
_PAGE = 4096  # external data offsets are page-aligned
_SMALL_MODEL = 64 << 20  # bytes: a .onnx file this small is read again to find its external data files


def fits_protobuf(model: onnx.ModelProto) -> bool:
    """Whether the model serializes as one protobuf message (under 2 GiB); bigger ones need external data.

    Protobuf refuses even to *measure* a message over the limit (``ByteSize`` raises), so that is the answer too.
    """
    # Summing the initializers first is cheap and spares protobuf a failing walk over gigabytes.
    if sum(tensor_nbytes(t) for t in model.graph.initializer) >= PROTOBUF_LIMIT:
        return False
    try:
        return model.ByteSize() < PROTOBUF_LIMIT
    except EncodeError:
        return False


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """The size of a tensor's data from its dims and type: protobuf's ByteSize encodes the message to measure it,
    which takes seconds per gigabyte."""
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return tensor.ByteSize()
    if tensor.data_type == onnx.TensorProto.STRING:
        return tensor.ByteSize()
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count * itemsize


def envelope(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model's top-level fields (IR version, opsets, producer, metadata, functions) without
    its graph — cheap even when the graph holds gigabytes of weights."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    return out


def adopt_envelope(model: onnx.ModelProto, original: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (a freshly exported graph) with the original's envelope — IR version, opsets, producer, metadata —
    in place of its own, the graph not copied; before IR 4 every initializer is also listed as a graph input.
    From IR 4 on, an initializer the original listed as an input too (a default the caller may feed) is listed
    again: onnx-graphsurgeon imports it as a constant and exports it without the input. A ``training_info`` that
    binds weights the graph no longer has (the rewrite replaced them) is dropped: it trained the original's."""
    for descriptor in model.DESCRIPTOR.fields:
        if descriptor.name != "graph":
            model.ClearField(descriptor.name)
    model.MergeFrom(envelope(original))
    listed = {i.name for i in model.graph.input}
    kept = {i.name for i in model.graph.initializer}
    model.graph.input.extend(i for i in original.graph.input if i.name in kept and i.name not in listed)
    weights = {i.name for i in model.graph.initializer} | {i.name for i in model.graph.input}
    trainable = [
        t for t in model.training_info if all(b.key in weights for b in [*t.update_binding, *t.initialization_binding])
    ]
    if len(trainable) != len(model.training_info):  # it trains weights the rewrite replaced: no longer valid
        del model.training_info[:]
        model.training_info.extend(trainable)
    if model.ir_version < 4:
        listed = {i.name for i in model.graph.input}
        for init in model.graph.initializer:
            if init.name not in listed:
                model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return model


def fed_initializers(model: onnx.ModelProto) -> set[str]:
    """Initializers listed among the graph inputs: defaults the caller may override (onnx-graphsurgeon imports
    them as constants and drops them from the inputs; :func:`adopt_envelope` puts them back). No pass may read
    them as constants."""
    if model.ir_version < 4:  # there every initializer must be listed as an input: none is meant to be fed
        return set()
    return {i.name for i in model.graph.initializer} & {i.name for i in model.graph.input}


def input_defaults(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The values of those ``names`` that are graph inputs with an initializer: what the model reads when a
    feed leaves them out (IR < 4 lists every initializer as an input, and none is fed either)."""
    inputs = {i.name for i in model.graph.input} & set(names)
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in inputs}


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    """Copy every set field but ``skip`` from one protobuf message to another of the same type."""
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):  # repeated
            getattr(target, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):  # message
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def skeleton(
    model: onnx.ModelProto, threshold: int = 1 << 20, stubs: dict[str, dict[str, str]] | None = None
) -> onnx.ModelProto:
    """A copy of the model whose top-graph initializers of ``threshold`` bytes or more carry no data (marked
    external, pointing at ``stubs[name]``'s location/offset/length where given): what shape inference, the
    checker and a file with external data need, without copying gigabytes of weights."""
    out = envelope(model)
    _copy_fields(model.graph, out.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor_nbytes(tensor) < threshold:
            out.graph.initializer.append(tensor)
            continue
        stub = out.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (stubs or {}).get(tensor.name, {"location": "ttgraph-stripped-weights"}).items():
            stub.external_data.add(key=key, value=value)
    return out


def write_external(model: onnx.ModelProto, directory: str | os.PathLike[str], filename: str) -> Path:
    """Write ``model`` as ``directory/filename`` with its big initializers in ``filename.data`` beside it.

    Unlike ``onnx.save_model(save_as_external_data=True)`` this neither copies nor rewrites the in-memory
    model: each big tensor's bytes go straight to the data file (page-aligned offsets, so onnxruntime can map
    them) and a skeleton that references them is serialized.
    """
    directory = Path(directory)
    data_name = f"{filename}.data"
    stubs: dict[str, dict[str, str]] = {}
    with open(directory / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if tensor_nbytes(tensor) < _EXTERNAL_THRESHOLD:
                continue
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise TTGraphError(tensor.name, "initializer's external data was not loaded")
            payload = tensor.raw_data if tensor.HasField("raw_data") else onnx.numpy_helper.to_array(tensor).tobytes()
            offset = -(-data.tell() // _PAGE) * _PAGE
            data.seek(offset)
            data.write(payload)
            stubs[tensor.name] = {"location": data_name, "offset": str(offset), "length": str(len(payload))}
    (directory / filename).write_bytes(skeleton(model, _EXTERNAL_THRESHOLD, stubs).SerializeToString())
    return directory / filename


def source_name(source: ModelSource) -> str:
    """How error messages name a model source (one that is none of them is a one-line error)."""
    if not isinstance(source, str | os.PathLike | bytes | bytearray | onnx.ModelProto):
        raise TTGraphError("model", f"expected a path, bytes or an onnx.ModelProto, got {type(source).__name__}")
    if isinstance(source, onnx.ModelProto):
        return "<model>"
    if isinstance(source, bytes | bytearray):
        return "<bytes>"
    return os.fspath(source)


def parse_input_shapes(specs: str | Sequence[str] | None) -> dict[str, list[int]]:
    """Parse ``["x=1,3,640,640", ...]`` (the ``--input-shape`` option), or one string of them separated by
    spaces, into ``{"x": [1, 3, 640, 640]}``.

    >>> parse_input_shapes(["x=1,3,64,64"]), parse_input_shapes("x=1,3,64,64 scale = 1,2")
    ({'x': [1, 3, 64, 64]}, {'x': [1, 3, 64, 64], 'scale': [1, 2]})
    """
    if isinstance(specs, str):  # one string: its characters are not specs
        specs = re.sub(r"\s*=\s*", "=", specs.strip()).split()
    shapes: dict[str, list[int]] = {}
    for spec in specs or ():
        name, sep, dims = spec.rpartition("=")  # a name may hold "=", dims do not
        name = name.strip()
        try:
            values = [int(d) for d in dims.split(",")] if sep and dims else None
        except ValueError:
            values = None
        if not name or values is None or any(v <= 0 for v in values):
            raise TTGraphError("input_shapes", f"expected NAME=D1,D2,... with positive integers, got {spec!r}")
        if name in shapes and shapes[name] != values:
            raise TTGraphError("input_shapes", f"{name!r} is given twice, as {shapes[name]} and {values}")
        shapes[name] = values
    return shapes


def checked_input_shapes(shapes: Any, option: str = "input_shapes") -> dict[str, list[int]] | None:
    """``{name: dims}`` from a caller as plain ``{name: [int, …]}`` (numpy ints and integer arrays are fine), or
    a one-line error naming ``option``: a float or a bool dim must not be truncated into a size."""
    if shapes is None:
        return None
    if not isinstance(shapes, Mapping):
        raise TTGraphError(option, f"expected a dict {{input name: dims}}, got {type(shapes).__name__}")
    plain: dict[str, list[int]] = {}
    for name, dims in shapes.items():
        if isinstance(dims, str | bytes) or not hasattr(dims, "__iter__"):
            raise TTGraphError(option, "expected a list of integer dims per input, such as [1, 3, 640, 640]")
        bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, numbers.Integral)]
        if bad:
            raise TTGraphError(f"{option}[{name!r}]", f"expected an integer, got {bad[0]!r} ({type(bad[0]).__name__})")
        plain[str(name)] = [int(d) for d in dims]
    return plain


def load_model(source: ModelSource, input_shapes: InputShapes | None = None, *, check: bool = True) -> onnx.ModelProto:
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
    if not isinstance(source, str | os.PathLike):
        _refuse_unloaded_external_data(model, name)
    if not model.graph.node or not model.graph.output:
        raise TTGraphError(name, "the graph has no nodes or no outputs: there is nothing to run or rewrite")
    _plain_tensors(model, name)
    _shape_unshaped_outputs(model)
    if check:
        check_model(model, name)
    if input_shapes:
        set_input_shapes(model, input_shapes, name)
    return model


def _refuse_unloaded_external_data(model: onnx.ModelProto, name: str) -> None:
    """A model in memory whose tensors still point at external files would read them relative to the current
    directory (any file of that name there: other weights, silently), or fail in onnx.checker with no hint."""
    from onnx.external_data_helper import uses_external_data

    for tensor in _all_tensors(model):
        if uses_external_data(tensor):
            location = next((e.value for e in tensor.external_data if e.key == "location"), "?")
            raise TTGraphError(
                name,
                f"tensor {tensor.name!r} is stored in an external file ({location!r}) that was not loaded: pass the "
                "model's path, or load it with its data (onnx.load(path), load_external_data=True)",
            )


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor the model holds: initializers and tensor attributes, subgraphs included."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        yield from graph.initializer
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                graphs += [attr.g] if attr.HasField("g") else []
                graphs += list(attr.graphs)


_SCALAR_CONSTANTS = {
    "value_float": np.float32,
    "value_floats": np.float32,
    "value_int": np.int64,
    "value_ints": np.int64,
}


def _plain_tensors(model: onnx.ModelProto, name: str) -> None:
    """Sparse initializers and ``Constant(sparse_value=…)`` become dense tensors of the same values (onnx-graphsurgeon
    reads sparse values as zeros of the wrong type: wrong outputs, unloadable models), and ``Constant(value_float
    / value_floats / value_int / value_ints=…)`` a ``Constant(value=…)`` tensor of the same values and type (a bias or
    a Reshape's shape written so was "not a constant" to the pass, a KeyError to distillation). The written model
    then stores them so."""
    from onnx import numpy_helper

    graph = model.graph
    for sparse in list(graph.sparse_initializer):
        graph.initializer.append(_dense(sparse, name))
    del graph.sparse_initializer[:]
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "sparse_value":
                    dense = _dense(attr.sparse_tensor, name)
                elif attr.name in _SCALAR_CONSTANTS:
                    value = onnx.helper.get_attribute_value(attr)
                    dense = numpy_helper.from_array(np.array(value, _SCALAR_CONSTANTS[attr.name]))
                else:
                    continue
                attr.Clear()
                attr.CopyFrom(onnx.helper.make_attribute("value", dense))


def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every tensor the main graph holds as a constant, by name: its initializers and its ``Constant(value=…)``
    nodes' tensors (PaddlePaddle's exporter, for one, puts every weight in a Constant node)."""
    tensors = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.attribute:
            if node.attribute[0].name == "value":
                tensors[node.output[0]] = node.attribute[0].t
    return tensors


def constants_as_initializers(model: onnx.ModelProto, names: Iterable[str]) -> onnx.ModelProto:
    """A copy of ``model`` in which the Constant nodes that make ``names`` are initializers of the same values
    (what can be fed, trained or replaced by name must be an initializer); ``model`` is not modified."""
    wanted = set(names)
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    graph = copied.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] in wanted and node.attribute[0].name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(node.attribute[0].t)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return copied


def _dense(sparse: onnx.SparseTensorProto, name: str) -> onnx.TensorProto:
    from onnx import numpy_helper

    dims = tuple(int(d) for d in sparse.dims)
    try:
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        flat = indices.reshape(-1) if indices.ndim == 1 else np.ravel_multi_index(tuple(indices.T), dims)
        dense = np.zeros(int(np.prod(dims)), values.dtype)
        dense[flat] = values
    except (ValueError, IndexError) as err:
        raise TTGraphError(name, f"sparse tensor {sparse.values.name!r} is malformed: {err}") from err
    return numpy_helper.from_array(dense.reshape(dims), sparse.values.name)


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
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in onnx.external_data_helper._get_all_tensors(model)):
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
        raise TTGraphError(name, "not an ONNX model: it has no graph or no opset_import (truncated or another format?)")
    return model


def inferred_from_inputs(model: onnx.ModelProto, *, output_shapes: bool = True) -> onnx.GraphProto | None:
    """The graph as ONNX shape inference fills it in from the graph inputs alone, on a copy (big weights stubbed:
    protobuf cannot hand C++ more than 2 GiB) without the model's value_info — and without its declared output
    shapes unless ``output_shapes`` — since a stale declaration would be merged in; None where inference fails."""
    target = skeleton(model)
    del target.graph.value_info[:]
    if not output_shapes:
        for output in target.graph.output:
            output.type.tensor_type.ClearField("shape")
    try:
        return onnx.shape_inference.infer_shapes(target, data_prop=True).graph
    except Exception:  # inference is best effort: a model onnxruntime runs may still confuse it
        return None


def _shape_unshaped_outputs(model: onnx.ModelProto) -> None:
    """A graph output declared with a type but no shape (``make_tensor_value_info(name, type, None)``), which
    onnxruntime runs and onnx.checker refuses, gets the shape inference gives it."""
    unshaped = [
        v for v in model.graph.output if v.type.HasField("tensor_type") and not v.type.tensor_type.HasField("shape")
    ]
    inferred = inferred_from_inputs(model) if unshaped else None
    if inferred is None:  # nothing to shape, or no inference: the checker then names what is missing
        return
    shapes = {
        v.name: v.type.tensor_type.shape
        for v in (*inferred.value_info, *inferred.output)
        if v.type.tensor_type.HasField("shape")
    }
    for value in unshaped:
        if value.name in shapes:
            value.type.tensor_type.shape.CopyFrom(shapes[value.name])


def check_model(model: onnx.ModelProto, name: str = "<model>") -> None:
    """Run ``onnx.checker`` and turn its complaint into a one-line error."""
    try:
        if fits_protobuf(model):
            onnx.checker.check_model(model)
        else:  # too big for one message: check the structure, the weights replaced by a sparse file
            stubs, end = {}, 0
            for tensor in model.graph.initializer:
                size = tensor_nbytes(tensor)
                stubs[tensor.name] = {"location": "weights.data", "offset": str(end), "length": str(size)}
                end += size
            with tempfile.TemporaryDirectory() as tmp:
                os.truncate(_touch(Path(tmp) / "weights.data"), end)
                path = Path(tmp) / "model.onnx"
                path.write_bytes(skeleton(model, _EXTERNAL_THRESHOLD, stubs).SerializeToString())
                onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        # the whole complaint on one line: its later lines name the node ("name: /model.22/Range OpType: Range")
        first = " ".join(str(err).split()) or type(err).__name__
        first = first if len(first) <= 400 else first[:399] + "…"
        graph = model.graph
        unshaped = [v.name for v in (*graph.input, *graph.output) if not v.type.tensor_type.HasField("shape")]
        if "'shape'" in first and unshaped:  # the checker does not say which one
            first += f" (no shape on graph input/output {', '.join(map(repr, unshaped))})"
        raise TTGraphError(name, f"fails onnx.checker: {first}") from err
    except UnicodeDecodeError as err:  # the checker's complaint quotes a name whose bytes are not UTF-8
        reason = f"corrupt file: a name or string in the graph is not valid UTF-8 ({err.reason})"
        raise TTGraphError(name, reason) from err


def _touch(path: Path) -> Path:
    path.touch()
    return path


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the graph (old IRs also list initializers as inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def default_inputs(model: onnx.ModelProto) -> set[str]:
    """The graph inputs with an initializer: a default a feed could override, a constant to ttgraph."""
    return {i.name for i in model.graph.input} & {t.name for t in model.graph.initializer}


def input_dims(value: onnx.ValueInfoProto) -> list[int | None]:
    """Dims of a tensor value: an int where static and positive, else None."""
    return [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim
    ]


def static_dims(dims: Sequence[int | None]) -> list[int] | None:
    """``dims`` as ints when every one is known, else None: one check that also tells a type checker so."""
    return None if any(d is None for d in dims) else [int(d) for d in dims if d is not None]


def batch_one(dims: Sequence[int | None]) -> list[int] | None:
    """``dims`` with a lone dynamic leading dim — the batch a PyTorch export marks dynamic — set to 1, when the
    others are known: the shape a smoke test or a timing can run without asking (inspect counts at batch 1 too)."""
    return static_dims([1, *dims[1:]]) if len(dims) >= 2 and dims[0] is None else None  # [K]: a length, not a batch


_MAX_DIM = 2**31 - 1  # larger than any real tensor dim, and ONNX stores dims as int64


def set_input_shapes(model: onnx.ModelProto, shapes: InputShapes, name: str = "<model>") -> None:
    """Fix the named inputs' shapes in place; intermediate value_info is dropped so it is re-inferred."""
    inputs = {i.name: i for i in graph_inputs(model)}
    if not isinstance(shapes, Mapping):
        raise TTGraphError("input_shapes", f"expected a dict {{input name: dims}}, got {type(shapes).__name__}")
    for input_name, dims in shapes.items():
        if isinstance(dims, str) or not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) for d in dims):
            raise TTGraphError("input_shapes", f"{input_name!r}: expected integer dims, got {dims!r}")
        if any(d < 1 or d > _MAX_DIM for d in dims):
            raise TTGraphError(
                "input_shapes", f"{input_name!r}: dims must be positive and below 2^31, got {list(dims)}"
            )
        dims = [int(d) for d in dims]
        if input_name not in inputs:
            known = ", ".join(inputs) or "none"
            raise TTGraphError(name, f"the input shapes name an unknown input {input_name!r} (inputs: {known})")
        value = inputs[input_name]
        current = input_dims(value)
        if len(current) != len(dims):
            raise TTGraphError(
                name, f"input {input_name!r} has rank {len(current)}, input_shapes gives {len(dims)} dims"
            )
        for axis, (have, want) in enumerate(zip(current, dims, strict=True)):
            if have is not None and have != want:
                raise TTGraphError(
                    name,
                    f"input {input_name!r} has fixed size {have} on axis {axis}, input_shapes gives {want}",
                )
        shape = value.type.tensor_type.shape
        for dim, want in zip(shape.dim, dims, strict=True):
            dim.Clear()
            dim.dim_value = int(want)
    del model.graph.value_info[:]
    _fix_output_dims(model)


def _fix_output_dims(model: onnx.ModelProto) -> None:
    """The graph outputs' symbolic dims (``batch``, ``floor(h/32)·…``) that the fixed inputs now determine get
    their values: a model written at 1×3×320×320 still declared a dynamic batch and size on its output."""
    declared = [v for v in model.graph.output if v.type.tensor_type.HasField("shape")]
    if not any(not d.HasField("dim_value") for v in declared for d in v.type.tensor_type.shape.dim):
        return
    inferred = inferred_from_inputs(model, output_shapes=False)
    if inferred is None:
        return
    shapes = {v.name: v.type.tensor_type.shape for v in inferred.output if v.type.tensor_type.HasField("shape")}
    for value in declared:
        dims, found = value.type.tensor_type.shape.dim, shapes.get(value.name)
        if found is None or len(found.dim) != len(dims):
            continue
        for dim, new in zip(dims, found.dim, strict=True):
            if not dim.HasField("dim_value") and new.HasField("dim_value") and new.dim_value > 0:
                dim.Clear()
                dim.dim_value = new.dim_value


def declare_io_like(model: onnx.ModelProto, declared: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the types ``declared`` gives its graph inputs and outputs (their dynamic dims) and only
    ``declared``'s value_info, types only: for a model whose dims were fixed from calibration data only to
    count MACs, so what is written still runs at every size the original does (a dim in that value_info may
    be a stale export-time size, which onnxruntime would trust). Edits ``model`` in place."""
    types = {v.name: v.type for v in [*declared.graph.input, *declared.graph.output]}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in types:
            value.type.CopyFrom(types[value.name])
    produced = {name for node in model.graph.node for name in node.output}
    del model.graph.value_info[:]
    for value in declared.graph.value_info:
        if value.name in produced:
            kept = model.graph.value_info.add()
            kept.CopyFrom(value)
            if kept.type.HasField("tensor_type"):
                kept.type.tensor_type.ClearField("shape")
    return model


def source_files(source: ModelSource | None) -> tuple[Path, ...]:
    """The files a model given by path is made of: the ``.onnx`` and the external data files it names, none of
    which an output may replace."""
    if not isinstance(source, str | os.PathLike):
        return ()
    path = Path(source)
    files = [path]
    try:
        if path.stat().st_size <= _SMALL_MODEL:  # a model with external data keeps little in the .onnx itself
            proto = onnx.load(os.fspath(path), load_external_data=False)
            for tensor in onnx.external_data_helper._get_all_tensors(proto):
                if tensor.data_location == onnx.TensorProto.EXTERNAL:
                    where = {e.key: e.value for e in tensor.external_data}.get("location")
                    if where:
                        files.append(path.parent / where)
    except Exception:  # unreadable now: the load already named what was wrong; nothing more to protect
        pass
    return tuple(dict.fromkeys(files))


def save_model(
    model: onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    source: ModelSource | None = None,
    staging: Staging | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically; weights go to ``<name>.data`` beside it when over 2 GB.

    Refuses to overwrite ``source`` (the file the model came from). Nothing is left behind on failure. With
    ``staging`` (from :func:`~ttgraph.files.staged_writes`) the files are only staged, to be renamed into place
    together with that call's other files.
    """
    inputs = source_files(source)
    target = check_output_path(path, inputs)
    if staging is None:
        with staged_writes([]) as own:
            return save_model(model, target, source=source, staging=own)
    if fits_protobuf(model):
        staging.write(target, model.SerializeToString())
        return target
    data_name = f"{target.name}.data"
    check_output_path(target.parent / data_name, inputs)
    tmp = staging.folder(target)
    staged = write_external(model, tmp, target.name)
    staging.renames += [(tmp / data_name, target.parent / data_name), (staged, target)]
    return target
