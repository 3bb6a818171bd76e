"""Run a built library with the Relax VM (here, on this machine) and compare it with onnxruntime.

>>> from targets.run import onnxruntime_outputs, relative_errors, run_library
>>> outs = run_library("det.so", {"x": x})  # doctest: +SKIP
>>> relative_errors(onnxruntime_outputs("det.onnx", {"x": x}), outs)  # doctest: +SKIP
[3.1e-06]

The error measure is ``max|got − ref| / max|ref|`` per output, the same as ``ttgraph.verify``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ttgraph.errors import TTGraphError
from ttgraph.model_io import ModelSource, load_model
from ttgraph.verify import relative_errors as relative_errors  # re-exported: targets.run is where it was

Inputs = Mapping[str, np.ndarray] | Sequence[np.ndarray]


def ordered_inputs(inputs: Inputs, names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Inputs as the positional list the VM's ``main`` takes (graph-input order).

    A mapping is ordered by ``names`` when given, else taken in its own order.
    """
    if isinstance(inputs, Mapping):
        if names is None:
            return [_contiguous(v) for v in inputs.values()]
        missing = [n for n in names if n not in inputs]
        if missing:
            raise TTGraphError("inputs", f"no value for input {missing[0]!r} (given: {', '.join(inputs)})")
        return [_contiguous(inputs[n]) for n in names]
    return [_contiguous(v) for v in inputs]


def _contiguous(value: Any) -> np.ndarray:
    """C-contiguous, a scalar kept 0-d (``np.ascontiguousarray`` makes it shape (1,), which the VM refuses)."""
    return np.asarray(value, order="C")


def to_numpy(value: Any) -> list[np.ndarray]:
    """The VM's result (a tensor, a shape — what an ONNX ``Shape`` output becomes — or a possibly nested tuple of
    them) as a flat list of arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    if isinstance(value, np.ndarray):
        return [value]
    if type(value).__name__ in ("Shape", "ShapeTuple"):
        return [np.asarray([int(d) for d in value], np.int64)]
    try:
        items = list(value)
    except TypeError as err:  # e.g. a shape left on an RPC device, which cannot be iterated from here
        raise TTGraphError(
            "outputs", f"cannot read an output of type {type(value).__name__} back from the TVM runtime"
        ) from err
    out: list[np.ndarray] = []
    for item in items:
        out.extend(to_numpy(item))
    return out


def run_library(
    path: str | os.PathLike[str], inputs: Inputs, *, names: Sequence[str] | None = None, device: str = "cpu"
) -> list[np.ndarray]:
    """Load a ``.so`` built by :func:`targets.compile_model` and run ``main`` once on ``device``.

    ``device`` is ``"cpu"`` (a host build) or ``"cuda"`` (a ``cuda-sm*`` build on a GPU machine).
    """
    from .compile import _import_tvm

    tvm = _import_tvm()
    from tvm import relax

    if not os.path.isfile(path):
        raise TTGraphError(path, "no such library")
    try:
        lib = tvm.runtime.load_module(os.fspath(path))
    except Exception as err:  # wrong architecture, missing symbols: a TVMError with the dlopen message
        raise TTGraphError(path, f"the TVM runtime cannot load this library here: {_last_line(err)}") from err
    dev = tvm.device(device, 0)
    vm = relax.VirtualMachine(lib, dev)
    args = [tvm.runtime.tensor(x, dev) for x in ordered_inputs(inputs, names)]
    return to_numpy(vm["main"](*args))


def onnxruntime_outputs(model: ModelSource, inputs: Inputs, *, threads: int | None = None) -> list[np.ndarray]:
    """The reference: the *original* model (not the simplified one) in onnxruntime on CPU."""
    import onnxruntime as ort

    proto = load_model(model, check=False)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    values = ordered_inputs(inputs, names)
    return list(session.run(None, dict(zip(names, values, strict=True))))


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
