"""Run and time a built library on a remote device over TVM RPC, and check it against onnxruntime.

This is how TVM users reach phones and boards: the device runs ``python -m tvm.exec.rpc_server``
(directly, ``--host 0.0.0.0 --port 9090``, or registered with a tracker under a key), this machine
builds, uploads, loads, runs and times.

>>> from targets.rpc import bench
>>> result = bench("det.onnx", "arm64-linux", rpc="192.168.1.20:9090", input_shapes={"x": [1, 3, 640, 640]})
... # doctest: +SKIP
>>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.model_io import ModelSource, graph_inputs, input_dims, load_model
from ttgraph.verify import check_feed, finite_peak

from .compile import CompileResult, compile_model
from .presets import resolve_target
from .run import Inputs, onnxruntime_outputs, ordered_inputs, relative_errors, to_numpy

DEFAULT_TOLERANCE = 1e-3


@dataclass
class RemoteRun:
    """Outputs of one run on the device, and ``time_evaluator`` timings (one mean per repeat)."""

    outputs: list[np.ndarray]
    times_ms: list[float]
    number: int
    device: str

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")


@dataclass
class BenchResult:
    """What ``ttgraph bench`` reports: the build, the device run and its distance from onnxruntime."""

    compiled: CompileResult
    run: RemoteRun
    errors: list[float]
    tolerance: float
    output_names: list[str] = field(default_factory=list)
    peaks: list[float] = field(default_factory=list)  # max |onnxruntime's output|, per output

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors)

    @property
    def near_zero(self) -> list[str]:
        """Outputs over the tolerance whose reference is ≈0 on these inputs (a detector's sigmoid map on random
        noise peaks at 4e-7): their relative error compares float noise, not the library."""
        return [
            n
            for n, e, p in zip(self.output_names, self.errors, self.peaks, strict=False)
            if e > self.tolerance and p < NEAR_ZERO
        ]

    def summary(self) -> str:
        times = ", ".join(f"{t:.2f}" for t in self.run.times_ms)
        errs = ", ".join(f"{n}={e:.2e}" for n, e in zip(self.output_names, self.errors, strict=False))
        verdict = "ok" if self.ok else f"MISMATCH (tolerance {self.tolerance:g})"
        if not self.ok and len(self.near_zero) == sum(e > self.tolerance for e in self.errors):
            peaks = dict(zip(self.output_names, self.peaks, strict=False))
            verdict = (
                f"inconclusive: {', '.join(f'{n} is ≈0 everywhere (max |ref| {peaks[n]:.2g})' for n in self.near_zero)}"
                " on these inputs, so the relative error compares float noise; give real data with --inputs"
            )
        c = self.compiled
        tuning = f"tuning records of {c.reused_tasks} of its {c.tune_tasks} tasks" if c.reused_tasks else "untuned"
        return (
            f"{self.compiled.target} ({tuning}) on {self.run.device}: median {self.run.median_ms:.2f} ms "
            f"(per-repeat means of {self.run.number} runs: {times} ms); "
            f"max rel. error vs onnxruntime: {errs} -> {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        compiled = self.compiled.to_dict()
        if not self.compiled.output.exists():  # built in a temporary folder for the run, gone now (-o keeps it)
            compiled["output"] = None
        return {
            "compile": compiled,
            "device": self.run.device,
            "times_ms": self.run.times_ms,
            "median_ms": self.run.median_ms,
            "number": self.run.number,
            "errors": dict(zip(self.output_names, self.errors, strict=False)),
            "tolerance": self.tolerance,
            "peaks": dict(zip(self.output_names, self.peaks, strict=False)),
            "near_zero": self.near_zero,
            "ok": self.ok,
        }


def parse_address(text: str, option: str = "rpc") -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; a clear error otherwise."""
    host, sep, port = str(text).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TTGraphError(option, f"expected HOST:PORT (e.g. 192.168.1.20:9090), got {text!r}")
    return host.strip("[]"), int(port)


def check_tracker(tracker: tuple[str, int]) -> None:
    """Fail with one line where a tracker does not answer: MetaSchedule's runner would instead retry it without
    end, printing a thread's traceback every minute."""
    import socket

    from tvm import rpc as tvm_rpc

    host, port = tracker
    try:
        socket.create_connection((host, port), timeout=10).close()  # nothing listening: say so now, not in a minute
        tvm_rpc.connect_tracker(host, port).summary()
    except Exception as err:  # TVMError / OSError / RuntimeError depending on where it fails
        raise TTGraphError(f"{host}:{port}", f"cannot reach the TVM RPC tracker: {_last_line(err)}") from err


def connect(
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    *,
    session_timeout: int = 0,
    request_timeout: float = 60.0,
) -> Any:
    """An RPC session: to a server (``rpc="HOST:PORT"``) or to a device of ``key`` via a tracker."""
    from tvm import rpc as tvm_rpc

    if bool(rpc) == bool(tracker):
        raise TTGraphError("rpc", "give exactly one of rpc=HOST:PORT or tracker=HOST:PORT key=KEY")
    if rpc:
        host, port = parse_address(rpc, "rpc")
        try:
            return tvm_rpc.connect(host, port, session_timeout=session_timeout)
        except Exception as err:  # TVMError / OSError / RuntimeError depending on where it fails
            raise TTGraphError(f"{host}:{port}", f"cannot open a TVM RPC session: {_last_line(err)}") from err
    if not key:
        raise TTGraphError("key", "a tracker needs key=KEY (the device key the servers registered)")
    host, port = parse_address(tracker or "", "tracker")
    try:
        client = tvm_rpc.connect_tracker(host, port)
    except Exception as err:
        raise TTGraphError(f"{host}:{port}", f"cannot reach the TVM RPC tracker: {_last_line(err)}") from err
    try:
        return client.request(key, priority=1, session_timeout=session_timeout, max_retry=max(1, int(request_timeout)))
    except Exception as err:
        raise TTGraphError(f"{host}:{port}", f"tracker gave no device for key {key!r}: {_last_line(err)}") from err


def collect_sessions() -> None:
    """Call after dropping the last reference to a session: the device's RPC server is then free for the next
    client. A session closes when it is freed, and the remote VirtualMachine's objects hold it in a reference
    cycle: until Python's collector happened to run, a second ``bench`` against the same server waited in
    ``connect`` for ever (the server serves one client at a time)."""
    import gc

    gc.collect()


def run_remote(
    session: Any,
    library: str | os.PathLike[str],
    inputs: Inputs,
    *,
    names: Sequence[str] | None = None,
    device: str = "cpu",
    number: int = 10,
    repeat: int = 3,
) -> RemoteRun:
    """Upload ``library`` (a ``.so`` for the device), run ``main`` once for outputs, then time it."""
    from tvm import relax

    path = Path(library)
    if path.suffix != ".so":
        raise TTGraphError(path, "RPC loads shared libraries: build a .so for the device")
    remote_name = f"ttgraph-{uuid.uuid4().hex[:12]}.so"
    try:
        session.upload(os.fspath(path), target=remote_name)
        lib = session.load_module(remote_name)
    except Exception as err:
        raise TTGraphError(path, f"the device cannot load this library: {_last_line(err)}") from err
    dev = session.device(device, 0)
    vm = relax.VirtualMachine(lib, dev)
    import tvm

    args = [tvm.runtime.tensor(x, dev) for x in ordered_inputs(inputs, names)]
    vm.set_input("main", *args)
    vm.invoke_stateful("main")
    outputs = to_numpy(vm.get_outputs("main"))
    timer = vm.time_evaluator("invoke_stateful", dev, number=number, repeat=repeat)
    times = [t * 1e3 for t in timer("main").results]
    with contextlib.suppress(Exception):  # a leftover file on the device is harmless
        session.remove(remote_name)
    return RemoteRun(outputs=outputs, times_ms=times, number=number, device=f"{device} via RPC")


NEAR_ZERO = 1e-5  # a float32 output whose largest value is below this is ≈0: its relative error is noise


def _with_unread_inputs(model: ModelSource, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feed`` and zeros for the graph inputs the model never reads: compiling dropped them from the library's
    main, onnxruntime still wants a value for each."""
    out = dict(feed)
    for value in graph_inputs(load_model(model, check=False)):
        if value.name not in out:
            dims = [d if d else 1 for d in input_dims(value)]
            out[value.name] = np.zeros(dims, onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    return out


def random_inputs(compiled: CompileResult, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal floats (zeros for integer inputs), one per input of the compiled model."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name, shape in compiled.input_shapes.items():
        dtype = np.dtype(compiled.input_dtypes.get(name, "float32"))
        if dtype.kind == "f":
            feed[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[name] = np.zeros(shape, dtype)
    return feed


def bench(
    model: ModelSource,
    target: str | Mapping[str, Any],
    *,
    rpc: str | None = None,
    tracker: str | None = None,
    key: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    inputs: Inputs | None = None,
    number: int = 10,
    repeat: int = 3,
    tolerance: float = DEFAULT_TOLERANCE,
    library: str | os.PathLike[str] | None = None,
) -> BenchResult:
    """Build ``model`` for ``target`` as a ``.so``, run and time it on the remote device, compare.

    ``inputs`` default to seeded standard-normal values. ``library`` keeps the built ``.so`` at that
    path (default: a temporary file). The reference is the original model in onnxruntime here.
    """
    preset = resolve_target(target)
    if bool(rpc) == bool(tracker):
        raise TTGraphError("rpc", "give exactly one of rpc=HOST:PORT or tracker=HOST:PORT key=KEY")
    if not tolerance >= 0:  # also NaN: every comparison would fail
        raise TTGraphError("tolerance", f"expected a relative error ≥ 0, got {tolerance}")
    if isinstance(inputs, Mapping):  # names, types, static dims, NaN: one line here, not after the build
        check_feed(graph_inputs(load_model(model, check=False)), inputs, "inputs")
    device = "cuda" if preset.is_cuda else "cpu"
    if input_shapes is None and isinstance(inputs, Mapping):
        input_shapes = {name: list(np.shape(value)) for name, value in inputs.items()}
    session = connect(rpc, tracker, key)  # first: an unreachable device fails before a long build
    try:
        with tempfile.TemporaryDirectory(prefix="ttgraph-bench-") as tmp:
            out = Path(library) if library else Path(tmp, f"model.{preset.name}.so")
            compiled = compile_model(model, target, out, input_shapes)
            feed = inputs if inputs is not None else random_inputs(compiled)
            values = ordered_inputs(feed, compiled.input_names if isinstance(feed, Mapping) else None)
            given = dict(feed) if isinstance(feed, Mapping) else dict(zip(compiled.input_names, values, strict=True))
            reference = onnxruntime_outputs(model, _with_unread_inputs(model, given))
            remote = run_remote(session, out, values, device=device, number=number, repeat=repeat)
    finally:
        del session
        collect_sessions()
    return BenchResult(
        compiled=compiled,
        run=remote,
        errors=relative_errors(reference, remote.outputs),
        tolerance=tolerance,
        output_names=compiled.output_names,
        peaks=[finite_peak(r) for r in reference],
    )


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
