"""A/B speed comparison of an original and a compressed model in the same runtime.

The headline is the ratio, taken pair by pair: after warm-up, each round runs every model once (the order
rotating between rounds), so load from other processes hits both sides alike; the speedup of round ``i`` is
``time(original)_i / time(model)_i`` and we report its median and spread (10th–90th percentile), with the
medians of the absolute times beside it. Runtimes: onnxruntime here (:func:`onnxruntime_runner`), and TVM
(local or over RPC) through runners built in :mod:`targets.abbench`.

>>> report = compare({"original": "det.onnx", "compressed": "det.tt.onnx"}, threads=(1, 2))  # doctest: +SKIP
>>> report.rows[0]["speedup"]  # doctest: +SKIP
1.31
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.files import write_atomic
from ttgraph.model_io import (
    InputShapes,
    ModelSource,
    batch_one,
    graph_inputs,
    input_dims,
    load_model,
    source_name,
    static_dims,
)
from ttgraph.verify import check_feed, first_line

Runner = Callable[[], Any]
# (model, feed, threads) -> a zero-argument callable that runs the model once
RunnerFactory = Callable[[onnx.ModelProto, dict[str, np.ndarray], int], Runner]


def onnxruntime_runner(model: onnx.ModelProto, feed: dict[str, np.ndarray], threads: int) -> Runner:
    """One onnxruntime CPU session at ``threads`` intra-op threads (inter-op 1, sequential)."""
    from ttgraph.verify import session

    sess = session(model, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    feed = {i.name: feed[i.name] for i in sess.get_inputs()}
    return lambda: sess.run(names, feed)


def feed_for(model: onnx.ModelProto, seed: int = 0, name: str | None = None) -> dict[str, np.ndarray]:
    """A seeded uniform [-1, 1) input per graph input (dims must be static; ``name`` is the model's, for errors)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in graph_inputs(model):
        dims = input_dims(value)
        fixed = static_dims(dims)
        fixed = batch_one(dims) if fixed is None else fixed  # a scalar's [] is static
        if fixed is None:
            raise TTGraphError(
                name or value.name,
                f"input {value.name!r} has dynamic dims [{','.join('?' if d is None else str(d) for d in dims)}]; "
                "fix them with input_shapes",
            )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        feed[value.name] = rng.uniform(-1, 1, fixed).astype(dtype)
    return feed


def time_alternated(runners: Mapping[str, Runner], *, warmup: int = 3, runs: int = 20) -> dict[str, list[float]]:
    """Seconds per run of each runner, A/B alternated: round ``i`` runs every runner once, in an order that
    rotates between rounds. ``warmup`` rounds are run first and dropped. A runner that returns a float
    reports its own time (seconds) in place of the wall clock here."""
    labels = list(runners)
    times: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(warmup + runs):
        shift = i % len(labels)
        for label in labels[shift:] + labels[:shift]:
            start = time.perf_counter()
            measured = runners[label]()
            elapsed = time.perf_counter() - start
            if isinstance(measured, float):  # a runner that times itself (e.g. on a remote device)
                elapsed = measured
            if i >= warmup:
                times[label].append(elapsed)
    return times


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q))


def ratio_stats(reference: Sequence[float], other: Sequence[float]) -> dict[str, float]:
    """Pair-by-pair ``reference[i] / other[i]``: median and 10th/90th percentiles."""
    ratios = [a / b for a, b in zip(reference, other, strict=True) if b > 0]
    return {
        "median": statistics.median(ratios),
        "p10": _percentile(ratios, 10),
        "p90": _percentile(ratios, 90),
    }


def time_stats(values: Sequence[float]) -> dict[str, float]:
    ms = [1e3 * v for v in values]
    return {"median_ms": statistics.median(ms), "p10_ms": _percentile(ms, 10), "p90_ms": _percentile(ms, 90)}


MIN_RUNS = 10  # rounds below which a p10–p90 span is two or three pairs' extremes


@dataclass
class BenchReport:
    """Per (runtime, threads): each model's time stats and its speedup over the first (reference) model."""

    models: dict[str, str]
    runtime: str
    warmup: int
    runs: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: dict[str, float | None] = field(default_factory=dict)
    device: str = ""
    notes: list[str] = field(default_factory=list)  # what the numbers rest on that the table cannot show

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": self.models,
            "runtime": self.runtime,
            "device": self.device,
            "warmup": self.warmup,
            "runs": self.runs,
            "results": self.rows,
            "peak_rss_mb": self.peak_rss_mb,
            "notes": self.notes,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def table(self) -> str:
        from ttgraph.commands.common import format_table

        labels = list(self.models)
        header = ["threads", "model", "median ms", "p10–p90 ms", "speedup", "speedup p10–p90"]
        body, undecided = [], False
        for row in self.rows:
            for label in labels:
                t, r = row["times"][label], row["speedup"][label]
                spans = label != labels[0] and r["p10"] < 1 < r["p90"]  # faster in some pairs, slower in others
                undecided |= spans
                body.append(
                    [
                        str(row["threads"]),
                        label,
                        f"{t['median_ms']:.2f}",
                        f"{t['p10_ms']:.2f}–{t['p90_ms']:.2f}",
                        f"{r['median']:.2f}×",
                        f"{r['p10']:.2f}–{r['p90']:.2f}" + (" *" if spans else ""),
                    ]
                )
        lines = [
            f"{self.runtime} on {self.device}: {self.runs} rounds after {self.warmup} warm-up, A/B alternated; "
            f"speedup = time({labels[0]}) / time(model), pair by pair",
            format_table(header, body),
        ]
        if undecided:
            lines.append(
                "* the pairs' speedups span 1: not reliably faster or slower on this run (more --runs, a quieter "
                "machine)"
            )
        if self.runs < MIN_RUNS:
            lines.append(
                f"only {self.runs} round{'s' * (self.runs != 1)}: the p10–p90 spans rest on too few pairs to read "
                f"(--runs {MIN_RUNS} or more)"
            )
        lines += self.notes
        if any(v is not None for v in self.peak_rss_mb.values()):
            rss = ", ".join(f"{k} {v:.0f} MB" for k, v in self.peak_rss_mb.items() if v is not None)
            lines.append(f"peak RSS (one process per model, load + one run): {rss}")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Bars of the median speedup per model and thread count, whiskers at p10/p90."""
        from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it is

        labels = list(self.models)
        fig = Figure(figsize=(1.8 + 1.6 * len(self.rows) * len(labels), 3.2))
        ax = fig.subplots()
        width = 0.8 / len(labels)
        for j, label in enumerate(labels):
            xs = [i + j * width for i in range(len(self.rows))]
            med = [row["speedup"][label]["median"] for row in self.rows]
            lo = [m - row["speedup"][label]["p10"] for m, row in zip(med, self.rows, strict=True)]
            hi = [row["speedup"][label]["p90"] - m for m, row in zip(med, self.rows, strict=True)]
            ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(self.rows))])
        ax.set_xticklabels([f"{row['threads']} thread(s)" for row in self.rows])
        ax.set_ylabel(textwrap.fill(f"speedup over {labels[0]}", 32))  # a long model path fits the plot's height
        ax.set_title(f"{self.runtime}: ratio of times, A/B alternated")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.15))  # below: bars stay visible
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # nothing clipped at the edges
        write_atomic(path, buffer.getvalue())


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def compare(
    models: Mapping[str, ModelSource],
    *,
    threads: Sequence[int] = (1,),
    warmup: int = 3,
    runs: int = 20,
    input_shapes: InputShapes | None = None,
    feed: dict[str, np.ndarray] | None = None,
    runtime: str = "onnxruntime",
    factory: RunnerFactory | None = None,
    device: str | None = None,
    memory: bool = True,
    feed_source: str | None = None,
) -> BenchReport:
    """Time ``models`` (label → model; the first is the reference) A/B alternated at each thread count.

    ``feed_source`` names where a given ``feed`` came from (a ``.npz``): errors about it name that file.

    ``factory`` builds a runner per (model, feed, threads); the default is onnxruntime. ``memory`` measures each
    model's peak RSS in its own onnxruntime process (load + one run).
    """
    if len(models) < 2:
        raise TTGraphError("bench", "compare needs at least two models (the first is the reference)")
    if warmup < 0 or runs < 1 or any(t < 1 for t in threads):
        raise TTGraphError("bench", "--runs and --threads must be ≥ 1, --warmup ≥ 0")
    protos = {label: load_model(m, input_shapes) for label, m in models.items()}
    reference, first = next(iter(protos.items()))
    wanted = {v.name for v in graph_inputs(first)}
    for label, proto in protos.items():  # before a feed is made from one of them: the error names the odd one out
        names = {v.name for v in graph_inputs(proto)}
        if names != wanted:
            raise TTGraphError(
                label, f"inputs {sorted(names)} differ from the reference {reference}'s {sorted(wanted)}"
            )
    notes = []
    if feed is None:  # the first model with static inputs sets the shape: a dynamic original beside its fixed rewrite
        static = [p for p in protos.values() if all(None not in input_dims(v) for v in graph_inputs(p))]
        feed = feed_for(static[0] if static else first, name=reference)
        if not static:
            notes.append(f"dynamic batch dim set to 1 ({_shapes(feed)}; --input-shape to time another)")
    elif set(feed) != wanted:
        raise TTGraphError(
            feed_source or reference, f"the given inputs {sorted(feed)} differ from the models' {sorted(wanted)}"
        )
    for label, proto in protos.items():
        # every model runs the same feed: a shape or type it cannot take is one line here, not onnxruntime's traceback
        check_feed(graph_inputs(proto), feed, f"{feed_source}, fed to {label}" if feed_source else label)
    factory = factory or onnxruntime_runner
    report = BenchReport(
        {label: source_name(m) for label, m in models.items()},
        runtime,
        warmup,
        runs,
        device=device or cpu_model(),
        notes=notes,
    )
    ref = next(iter(protos))
    for n in threads:
        runners = {label: factory(proto, feed, n) for label, proto in protos.items()}
        for label, runner in runners.items():  # once each first: a model the feed cannot run is named, no traceback
            try:
                runner()
            except TTGraphError:
                raise
            except Exception as err:
                hint = f" ({notes[0]})" if notes else ""
                raise TTGraphError(label, f"cannot run on the feed {_shapes(feed)}{hint}: {first_line(err)}") from err
        times = time_alternated(runners, warmup=warmup, runs=runs)
        report.rows.append(
            {
                "threads": n,
                "times": {label: time_stats(t) for label, t in times.items()},
                "speedup": {label: ratio_stats(times[ref], t) for label, t in times.items()},
            }
        )
        del runners
    if memory and runtime == "onnxruntime":
        report.peak_rss_mb = {label: peak_rss_mb(proto, feed) for label, proto in protos.items()}
    return report


def _shapes(feed: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k} {'×'.join(map(str, np.shape(v))) or 'scalar'}" for k, v in feed.items())


# The child's own high-water mark: VmHWM counts this process image only, while ru_maxrss also keeps the mark
# of the image it was forked from (the bench process, with both models and TVM loaded) across the exec.
_RSS_SCRIPT = """
import json, resource, sys, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.log_severity_level = 4; o.intra_op_num_threads = 1
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
d = np.load(sys.argv[2]); s.run(None, {n: d[f"arr_{i}"] for i, n in enumerate(json.loads(sys.argv[3]))})
try:
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    print(int(hwm.split()[1]) / 1024.0)
except (OSError, StopIteration):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def peak_rss_mb(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> float | None:
    """Peak resident memory (MB) of a fresh process that loads ``model`` in onnxruntime and runs it once."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ttgraph-rss-") as tmp:
        path, data = os.path.join(tmp, "m.onnx"), os.path.join(tmp, "feed.npz")
        onnx.save_model(model, path, save_as_external_data=model.ByteSize() > 1_900_000_000)
        # by position, the names beside: as keywords, an input named "file" or "allow_pickle" broke np.savez
        np.savez(data, *feed.values())
        try:
            out = subprocess.run(
                [sys.executable, "-c", _RSS_SCRIPT, path, data, json.dumps(list(feed))],
                capture_output=True,
                text=True,
                timeout=300,
            )
            return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return None
