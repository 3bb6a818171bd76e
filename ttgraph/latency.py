"""Measured speed of one 1×1 conv, dense vs its low-rank form, for latency-aware rank allocation.

:func:`lowrank_speedup` builds a single 1×1 Conv (Cin→Cout on H×W, stride s) and its rank-r form (Cin→r→Cout,
two Convs), times both in onnxruntime at a thread count, A/B alternated, and returns
``time(dense) / time(low-rank)`` (> 1: the low-rank form is faster), the median of pair-by-pair ratios.
Results are cached on disk as JSON, keyed by runtime, its version, threads, CPU model and shape, in
:func:`ttgraph.files.default_cache_dir` (``$TTGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/ttgraph`` or
``~/.cache/ttgraph``), beside the planner's measured tables.

>>> lowrank_speedup(384, 384, 20, 20, rank=96)  # doctest: +SKIP
1.9
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from passes.find_pointwise import PointwiseConv
from ttgraph.bench import cpu_model, time_alternated
from ttgraph.decompose import LayerCandidates
from ttgraph.files import default_cache_dir, is_seconds, write_cache
from ttgraph.model_io import static_dims
from ttgraph.progress import progress_bar

CACHE_ENV = "TTGRAPH_CACHE_DIR"
CACHE_FILE = "latency.json"
log = logging.getLogger("ttgraph.compress")  # as write_cache warns: the command line shows it


def cache_path() -> Path:
    return default_cache_dir() / CACHE_FILE


def _conv(name: str, x: str, y: str, w: np.ndarray, b: np.ndarray | None, stride: int) -> tuple:
    inits = [numpy_helper.from_array(w, f"{name}_w")]
    inputs = [x, f"{name}_w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, f"{name}_b"))
        inputs.append(f"{name}_b")
    node = helper.make_node("Conv", inputs, [y], name=name, kernel_shape=[1, 1], strides=[stride, stride])
    return node, inits


def pointwise_models(
    cin: int, cout: int, h: int, w: int, rank: int, stride: int = 1, seed: int = 0, dtype: str = "float32"
) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense 1×1 conv, its rank-``rank`` form as two 1×1 convs) on a 1×Cin×H×W input of ``dtype`` (the
    layer's own: onnxruntime's float16 convs run other kernels than its float32 ones), random weights."""
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(cin)
    dense_w = (rng.standard_normal((cout, cin, 1, 1)) * scale).astype(dtype)
    bias = (0.1 * rng.standard_normal(cout)).astype(dtype)
    first = (rng.standard_normal((rank, cin, 1, 1)) * scale).astype(dtype)
    second = (rng.standard_normal((cout, rank, 1, 1)) / np.sqrt(rank)).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    x = helper.make_tensor_value_info("x", elem, [1, cin, h, w])
    y = helper.make_tensor_value_info("y", elem, None)

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


def _key(
    runtime: str, threads: int, cin: int, cout: int, h: int, w: int, rank: int, stride: int, dtype: str = "float32"
) -> str:
    import onnxruntime

    fields: list = [runtime, onnxruntime.__version__, threads, cpu_model(), cin, cout, h, w, stride, rank]
    return json.dumps(fields + ([dtype] if dtype != "float32" else []), separators=(",", ":"))  # float32: as before


def _load_cache(path: Path) -> dict[str, float]:
    """The cached timings; an entry that is no positive number (an edited or damaged file: "fast", -5) is
    dropped with a warning and timed again — it was a traceback, or a negative time the allocation believed."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    data = data if isinstance(data, dict) else {}
    good = {k: float(v) for k, v in data.items() if is_seconds(v) and v > 0}
    if len(good) < len(data) and (path, len(data) - len(good)) not in _WARNED:  # once, not at each re-read
        _WARNED.add((path, len(data) - len(good)))
        bad = next(k for k in data if k not in good)
        log.warning(
            "%s: %d cached timing(s) are not positive numbers (%s: %r); timing them again",
            path,
            len(data) - len(good),
            bad,
            data[bad],
        )
    return good


_WARNED: set[tuple[Path, int]] = set()


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
    dtype: str = "float32",
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
    key = _key(runtime, threads, cin, cout, h, w, rank, stride, dtype)

    def measure() -> float:
        from ttgraph.bench import onnxruntime_runner, ratio_stats

        dense, lowrank = pointwise_models(cin, cout, h, w, rank, stride, dtype=dtype)
        feed = {"x": np.random.default_rng(1).standard_normal((1, cin, h, w)).astype(dtype)}
        runners = {
            "dense": onnxruntime_runner(dense, feed, threads),
            "lowrank": onnxruntime_runner(lowrank, feed, threads),
        }
        times = time_alternated(runners, warmup=warmup, runs=runs)
        return float(ratio_stats(times["dense"], times["lowrank"])["median"])

    return _cached(key, measure) if cache else measure()


Shape = tuple[int, int, int, int, int]  # cin, cout, h, w, stride


def dense_times(
    shapes: Sequence[Shape], *, threads: int = 1, warmup: int = 5, runs: int = 30, dtype: str = "float32"
) -> dict[Shape, float]:
    """Median time of one dense 1×1 conv of each shape ``(cin, cout, h, w, stride)`` in onnxruntime, cached like
    :func:`lowrank_speedup`. Only weights between layers: the allocator needs how much of the 1×1 time each layer
    holds, not an absolute figure. So the shapes not cached yet are timed round-robin in one run
    (:func:`time_alternated`): load from other processes then slows them all alike. Timed one after another, a
    busy moment inflated one layer's share (the same shape measured 0.19 and 0.28 ms in two runs)."""
    wanted = list(dict.fromkeys(shapes))
    keys = {shape: _key("onnxruntime", threads, *shape[:4], 0, shape[4], dtype) for shape in wanted}
    cached = _load_cache(cache_path())
    missing = [shape for shape in wanted if keys[shape] not in cached]
    if missing:
        from ttgraph.bench import onnxruntime_runner

        runners = {}
        for cin, cout, h, w, stride in missing:
            dense, _ = pointwise_models(cin, cout, h, w, 1, stride, dtype=dtype)
            feed = {"x": np.random.default_rng(1).standard_normal((1, cin, h, w)).astype(dtype)}
            runners[keys[(cin, cout, h, w, stride)]] = onnxruntime_runner(dense, feed, threads)
        times = time_alternated(runners, warmup=warmup, runs=runs)
        measured = {key: float(np.median(values)) for key, values in times.items()}
        _store(measured)
        cached.update(measured)
    return {shape: float(cached[keys[shape]]) for shape in wanted}


def dense_seconds(
    cin: int, cout: int, h: int, w: int, *, stride: int = 1, threads: int = 1, warmup: int = 5, runs: int = 30
) -> float:
    """:func:`dense_times` of one shape."""
    shape = (cin, cout, h, w, stride)
    return dense_times([shape], threads=threads, warmup=warmup, runs=runs)[shape]


def _cached(key: str, measure: Callable[[], float]) -> float:
    """The cached value for ``key``, or ``measure()`` stored under it."""
    hit = _load_cache(cache_path()).get(key)
    if hit is not None:
        return float(hit)
    value = measure()
    _store({key: value})
    return value


def _store(values: dict[str, float]) -> None:
    """Add ``values`` to the cache (:func:`ttgraph.files.write_cache`)."""
    path = cache_path()
    data = _load_cache(path)  # re-read: another process may have added entries meanwhile
    data.update(values)
    write_cache(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


def timing_shape(conv: PointwiseConv) -> Shape | None:
    """The 2-D ``(cin, cout, h, w, stride)`` a pointwise conv is timed as, None where none fits: a 1-D conv over
    L positions is a 1 × L one, a 3-D conv at stride 1 a (D·H) × W one (a 1×1 conv's cost is its positions);
    dynamic sizes, and strides that differ per axis, are not timed."""
    spatial = static_dims(conv.input_shape[2:]) if conv.input_shape is not None else None
    strides = {int(s) for s in conv.strides} or {1}
    if not spatial or len(strides) > 1:
        return None
    stride = strides.pop()
    if len(spatial) == 1:
        spatial = [1, spatial[0]]
    elif len(spatial) == 3 and stride == 1:
        spatial = [spatial[0] * spatial[1], spatial[2]]
    if len(spatial) != 2:
        return None
    return (conv.cin, conv.cout, int(spatial[0]), int(spatial[1]), stride)


def attach_latencies(
    layers: Sequence[LayerCandidates], *, threads: int = 1, points: int = 4, runs: int = 20, progress: bool = False
) -> list[LayerCandidates]:
    """Each layer's candidates with ``latency`` (ns) set from measurements in onnxruntime at ``threads``.

    Keep-dense gets the dense conv's measured median time; a low-rank candidate at rank r gets it divided by
    the measured speedup at r (:func:`lowrank_speedup`). Up to ``points`` ranks per layer are measured
    (spread over its candidates) and the others interpolated linearly in r, since a factor pair's time is
    close to affine in its rank. The dense times of all layers come from one round-robin run (:func:`dense_times`).
    TT (d ≥ 2) candidates are dropped (the notes measured Reshape+MatMul TT slower than low-rank), and a layer
    :func:`timing_shape` cannot time keeps only its dense form, at 1 ns. Results are
    cached on disk, so a second run of the same shapes measures nothing.
    """
    shapes = [timing_shape(layer.conv) for layer in layers]
    dtypes = [np.dtype(layer.conv.weight_dtype).name for layer in layers]  # each layer timed in its own type
    dense: dict[tuple[str, Shape], float] = {}
    for dtype in dict.fromkeys(dtypes):
        timed = [s for s, d in zip(shapes, dtypes, strict=True) if s is not None and d == dtype]
        dense |= {(dtype, s): t for s, t in dense_times(timed, threads=threads, runs=runs, dtype=dtype).items()}
    out = []
    for layer, shape, dtype in progress_bar(
        list(zip(layers, shapes, dtypes, strict=True)), desc="latency", unit="layer", show=progress, leave=False
    ):
        lowrank = [c for c in layer.candidates if c.kind == "lowrank"] if shape is not None else []
        dense_ns = 1
        times: dict[int, float] = {}
        if shape is not None:
            cin, cout, h, w, stride = shape
            dense_ns = max(1, round(dense[(dtype, shape)] * 1e9))
            ranks = sorted({c.ranks[1] for c in lowrank})
            picked = (
                sorted({ranks[round(i * (len(ranks) - 1) / max(1, points - 1))] for i in range(points)})
                if ranks
                else []
            )
            measured = {
                r: dense_ns
                / lowrank_speedup(cin, cout, h, w, r, stride=stride, threads=threads, runs=runs, dtype=dtype)
                for r in picked
            }
            for r in ranks:
                times[r] = float(np.interp(r, list(measured), list(measured.values())))
        kept = [dataclasses.replace(layer.dense, latency=dense_ns)]
        kept += [dataclasses.replace(c, latency=max(1, round(times[c.ranks[1]]))) for c in lowrank]
        out.append(dataclasses.replace(layer, candidates=kept))
    return out
