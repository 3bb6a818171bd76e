"""TVM runners for the A/B comparison of :mod:`ttgraph.bench`: each model built for a target preset with
:func:`targets.compile_model`, then run here (Relax VM, ``.so`` loaded in this process) or on a device over
TVM RPC (the runner returns the device-side time of one run, measured with ``time_evaluator``).
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from ttgraph.bench import Runner
from ttgraph.errors import TTGraphError

from .compile import CompileResult, _import_tvm, cannot_run_here, compile_model
from .presets import resolve_target
from .run import ordered_inputs


def _configure_threadpool(threads: int) -> None:
    """Give TVM's CPU thread pool ``threads`` workers (affinity mode 0, big cores). Configuring it pins the
    calling thread to one core, and every thread started from it later inherits that — onnxruntime sessions
    and PyTorch in the same process would then share one core (seen: distillation after a TVM bench ran
    several times slower) — so the caller's CPU set is put back."""
    import tvm

    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is None:
        return
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    config(0, threads)
    if allowed is not None and os.sched_getaffinity(0) != allowed:
        os.sched_setaffinity(0, allowed)


def tvm_factory(
    target: str = "x86_64",
    *,
    session: Any = None,
    workdir: str | os.PathLike[str] | None = None,
    tune: int = 0,
    tune_db: str | os.PathLike[str] | None = None,
) -> Callable[[onnx.ModelProto, dict[str, np.ndarray], int], Runner]:
    """A runner factory for :func:`ttgraph.bench.compare`. Libraries are built once per model (cached by
    identity) in ``workdir`` (default: a temporary folder that lives as long as the factory), after ``tune``
    MetaSchedule trials per model with records in ``tune_db/m<i>`` (one folder per model, so each model gets
    the same tuning budget and none inherits another's records)."""
    tvm = _import_tvm()  # without TVM: the install hint, as compile gives it
    from tvm import relax

    preset = resolve_target(target)
    why = None if session is not None else cannot_run_here(preset)
    if why:
        raise TTGraphError(
            "--target",
            f"{preset.name} cannot run here ({why}): time it on the device with --rpc HOST:PORT "
            "(or --tracker HOST:PORT --key KEY)",
        )
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ttgraph-abbench-")
        workdir = tmp.name
    built: dict[int, CompileResult] = {}
    device = "cuda" if preset.is_cuda else "cpu"

    def library(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> CompileResult:
        if id(model) not in built:
            out = Path(workdir, f"m{len(built)}.{preset.name}.so")
            # each model its own database (a temporary one unless tune_db is given), and without tuning none at
            # all: one model built on the records a shared database happens to hold for its workloads is no A/B
            root = Path(tune_db) if tune_db is not None else Path(workdir, "tune-db")
            db: Path | Literal[False] = Path(root, f"m{len(built)}") if tune else False
            shapes = {k: list(np.shape(v)) for k, v in feed.items()}
            built[id(model)] = compile_model(model, target, out, shapes, tune=tune, tune_db=db)
        return built[id(model)]

    def factory(model: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int) -> Runner:
        compiled = library(model, feed)
        path = compiled.output
        names = compiled.input_names  # the library's main: an input the model never reads is not among them
        if session is None:
            _configure_threadpool(threads)
            dev = tvm.device(device, 0)
            vm = relax.VirtualMachine(tvm.runtime.load_module(os.fspath(path)), dev)
            args = [tvm.runtime.tensor(x, dev) for x in ordered_inputs(feed, names)]
            fn = vm["main"]
            if device == "cuda":  # kernels run asynchronously: a run is timed to its end, not to its last launch
                return lambda: (fn(*args), dev.sync())
            return lambda: fn(*args)
        remote_name = f"ttgraph-{uuid.uuid4().hex[:12]}.so"
        session.upload(os.fspath(path), target=remote_name)
        dev = session.device(device, 0)
        vm = relax.VirtualMachine(session.load_module(remote_name), dev)
        vm.set_input("main", *[tvm.runtime.tensor(x, dev) for x in ordered_inputs(feed, names)])
        timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=1)
        return lambda: float(timer("main").results[0])  # device-side seconds

    factory._keep = tmp  # type: ignore[attr-defined]  # the temporary folder lives as long as the factory
    return factory
