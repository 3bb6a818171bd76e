"""Compile ONNX models with Apache TVM for named targets (x86, ARM phones and boards, CUDA) and run them.

The only package of ttgraph that imports TVM, and only inside functions: importing ``targets`` (and
listing presets) works without TVM installed.

>>> from targets import compile_model, list_targets
>>> [p.name for p in list_targets()][:3]
['x86_64', 'arm64-linux', 'arm64-android']
>>> compile_model("det.onnx", "arm64-android", "det.tar", {"x": [1, 3, 640, 640]})  # doctest: +SKIP

Modules: ``presets`` (names → TVM target dicts, linkers, formats), ``frontend`` (make third-party ONNX
importable), ``compile`` (build and export), ``tune`` (MetaSchedule), ``run`` (run a host library,
compare with onnxruntime), ``qemu`` (aarch64 libraries on this machine), ``rpc`` (remote devices),
``cli`` (the ``compile`` and ``bench`` sub-commands).
"""

from targets.compile import CompileResult, compile_model
from targets.frontend import PreparedModel, prepare_for_tvm
from targets.presets import PRESETS, TargetPreset, format_targets, list_targets, resolve_target
from targets.qemu import qemu_rpc_server, run_under_qemu
from targets.rpc import BenchResult, RemoteRun, bench, connect, run_remote
from targets.run import onnxruntime_outputs, relative_errors, run_library

__all__ = [
    "PRESETS",
    "BenchResult",
    "CompileResult",
    "PreparedModel",
    "RemoteRun",
    "TargetPreset",
    "bench",
    "compile_model",
    "connect",
    "format_targets",
    "list_targets",
    "onnxruntime_outputs",
    "prepare_for_tvm",
    "qemu_rpc_server",
    "relative_errors",
    "resolve_target",
    "run_library",
    "run_remote",
    "run_under_qemu",
]
