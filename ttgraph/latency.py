"""Measured speed of one 1×1 conv, dense vs its low-rank form, for latency-aware rank allocation.

:func:`lowrank_speedup` builds a single 1×1 Conv (Cin→Cout on H×W, stride s) and its rank-r form (Cin→r→Cout,
two Convs), times both in onnxruntime at a thread count, A/B alternated, and returns
``time(dense) / time(low-rank)`` (> 1: the low-rank form is faster), the median of pair-by-pair ratios.
Results are cached on disk as JSON, keyed by runtime, its version, threads, CPU model and shape, in
``$TTGRAPH_CACHE_DIR`` (default ``~/.cache/ttgraph``).

>>> lowrank_speedup(384, 384, 20, 20, rank=96)  # doctest: +SKIP
1.9
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ttgraph.bench import cpu_model, time_alternated
from ttgraph.files import write_atomic

CACHE_ENV = "TTGRAPH_CACHE_DIR"
CACHE_FILE = "latency.json"


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "ttgraph")
    return Path(root) / CACHE_FILE


def _conv(name: str, x: str, y: str, w: np.ndarray, b: np.ndarray | None, stride: int) -> tuple:
    inits = [numpy_helper.from_array(w, f"{name}_w")]
    inputs = [x, f"{name}_w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, f"{name}_b"))
        inputs.append(f"{name}_b")
    node = helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[1, 1], strides=[stride, stride])
    return node, inits


def pointwise_models(
    cin: int, cout: int, h: int, w: int, rank: int, stride: int = 1, seed: int = 0
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense 1×1 conv, its rank-``rank`` form as two 1×1 convs) on a 1×Cin×H×W input, random weights."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(cin)
    dense_w = (rng.standard_normal((cout, cin, 1, 1)) * scale).astype(np.float32)
    bias = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    first = (rng.standard_normal((rank, cin, 1, 1)) * scale).astype(np.float32)
    second = (rng.standard_normal((cout, rank, 1, 1)) / np.sqrt(rank)).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)

    def model(nodes_inits: list[tuple]) -> onnx.ModelProto:
        nodes = [n for n, _ in nodes_inits]
        inits = [i for _, ii in nodes_inits for i in ii]
        graph = helper.make_graph(nodes, "pointwise", [x], [y], inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        return m

    dense = model([_conv("dense", "x", "y", dense_w, bias, stride)])
    lowrank = model([_conv("u", "x", "t", first, None, stride), _conv("v", "t", "y", second, bias, 1)])
    return dense, lowrank


def _key(runtime: str, threads: int, cin: int, cout: int, h: int, w: int, rank: int, stride: int) -> str:
    import onnxruntime

    return json.dumps(
        [runtime, onnxruntime.__version__, threads, cpu_model(), cin, cout, h, w, stride, rank], separators=(",", ":")
    )


def _load_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def lowrank_speedup(
    cin: int,
    cout: int,
    h: int,
    w: int,
    rank: int,
    *,
    stride: int = 1,
    threads: int = 1,
    runtime: str = "onnxruntime",
    warmup: int = 5,
    runs: int = 30,
    cache: bool = True,
) -> float:
    """``time(dense) / time(low-rank at rank)`` of one 1×1 conv, timed A/B alternated: the median of the
    pair-by-pair ratios (load from other processes slows both sides of a pair alike; the fastest runs are no
    better an estimate under load, since a short run escapes preemption more often than a long one).

    A cached value (same runtime and version, threads, CPU model and shape) is returned without measuring.
    """
    if runtime != "onnxruntime":
        raise ValueError(f"runtime {runtime!r}: only 'onnxruntime' is measured here")
    if min(cin, cout, h, w, rank, stride, threads) < 1:
        raise ValueError("channels, sizes, rank, stride and threads must be ≥ 1")
    key = _key(runtime, threads, cin, cout, h, w, rank, stride)
    path = cache_path()
    if cache:
        hit = _load_cache(path).get(key)
        if hit is not None:
            return float(hit)
    from ttgraph.bench import onnxruntime_runner, ratio_stats

    dense, lowrank = pointwise_models(cin, cout, h, w, rank, stride)
    feed = {"x": np.random.default_rng(1).standard_normal((1, cin, h, w)).astype(np.float32)}
    runners = {"dense": onnxruntime_runner(dense, feed, threads), "lowrank": onnxruntime_runner(lowrank, feed, threads)}
    times = time_alternated(runners, warmup=warmup, runs=runs)
    value = float(ratio_stats(times["dense"], times["lowrank"])["median"])
    if cache:
        data = _load_cache(path)  # re-read: another process may have added entries meanwhile
        data[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    return value


def rank_for_macs(cin: int, cout: int, macs_fraction: float, multiple: int = 16) -> int:
    """The rank whose two-factor form costs about ``macs_fraction`` of the dense MACs, rounded up to ``multiple``."""
    r = max(1, int(np.ceil(macs_fraction * cin * cout / (cin + cout))))
    return max(multiple, int(np.ceil(r / multiple)) * multiple) if multiple > 1 else r


def layers_where_lowrank_pays(
    model: onnx.ModelProto,
    *,
    macs_fraction: float = 0.5,
    min_speedup: float = 1.15,
    threads: int = 1,
    rank_multiple: int = 16,
    runs: int = 30,
) -> dict[str, float]:
    """Each rewritable 1×1 conv of ``model`` (static shapes) → the measured speedup of its low-rank form at
    ``macs_fraction`` of its MACs, for the layers where it reaches ``min_speedup``. Pass the keys to
    ``ttgraph.compress(..., layers=...)`` to keep the others (memory-bound, thin high-resolution layers) dense."""
    from ttgraph.api import _analyse

    _, found, _ = _analyse(model)
    kept = {}
    for conv in found.candidates:
        if conv.input_shape is None or any(d is None for d in conv.input_shape[2:]) or conv.spatial_rank != 2:
            continue
        h, w = (int(d) for d in conv.input_shape[2:])  # type: ignore[arg-type]
        rank = rank_for_macs(conv.cin, conv.cout, macs_fraction, rank_multiple)
        if rank * (conv.cin + conv.cout) >= conv.cin * conv.cout:
            continue  # the rank that fits the budget is no cheaper than dense
        stride = int(conv.strides[0])
        speedup = lowrank_speedup(conv.cin, conv.cout, h, w, rank, stride=stride, threads=threads, runs=runs)
        if speedup >= min_speedup:
            kept[conv.label] = speedup
    return kept
