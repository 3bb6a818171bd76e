"""The public library API: inspect a model, compress its 1×1 convs into TT cores, save the result.

The data path reads in one direction: load → find → decompose → plan → rewrite → check → verify.
(Calibration-driven rank allocation plugs in between find and decompose.)
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes import quiet_graphsurgeon
from passes.find_pointwise import FindPointwiseConvs, FoundConvs, PointwiseConv, SkippedConv
from passes.gs_io import export_model, import_graph
from passes.rewrite_tt import LayerRewrite, RewriteAsTT
from ttgraph.allocate import Allocation, Budget, allocate
from ttgraph.calibration import (
    CalibrationData,
    CalibrationStatistics,
    Preprocess,
    calibration_source,
    collect_statistics,
    remember_sample,
    split_holdout,
)
from ttgraph.compensate import CACHE_BYTES, Compensation, LayerFit, layer_errors, side_by_side
from ttgraph.compensate import compensate as run_compensation
from ttgraph.contraction import contraction_macs, left_to_right, planned_order
from ttgraph.costs import COUNTED_OPS, model_macs
from ttgraph.decompose import Candidate, LayerCandidates, build_candidates, describe
from ttgraph.errors import TTGraphError, naming
from ttgraph.fidelity import OriginalOutputs
from ttgraph.files import check_output_path, distinct_outputs, staged_writes
from ttgraph.model_io import (
    InputShapes,
    ModelSource,
    adopt_envelope,
    check_model,
    checked_input_shapes,
    constant_tensors,
    declare_io_like,
    default_inputs,
    fed_initializers,
    fits_protobuf,
    graph_inputs,
    input_dims,
    load_model,
    save_model,
    set_input_shapes,
    source_files,
    source_name,
    static_dims,
)
from ttgraph.planner import COST_MODELS
from ttgraph.progress import progress_bar
from ttgraph.shapes import Shape, infer_shapes, shapes_from_inputs
from ttgraph.tt import TTFormat, relative_error, scale_ranks, tt_format, tt_reconstruct, tt_svd
from ttgraph.verify import (
    Feed,
    OutputError,
    check_feed,
    compare_outputs,
    feed_count,
    random_feed,
    run_session,
    session,
)

MAX_CORES = 8
log = logging.getLogger("ttgraph.compress")  # the steps without a progress bar (compress --progress shows them)


def _compute_tensors(model: onnx.ModelProto) -> list[str]:
    """Inputs and outputs of the nodes whose MACs we count: their shapes must be known."""
    return [name for n in model.graph.node if n.op_type in COUNTED_OPS for name in (*n.input, *n.output[:1]) if name]


def _analyse(model: onnx.ModelProto) -> tuple[gs.Graph, FoundConvs, dict[str, Shape]]:
    shapes = infer_shapes(model, wanted=_compute_tensors(model))
    graph = import_graph(model)
    find = FindPointwiseConvs(shapes, fed=fed_initializers(model), fixed_shapes=shapes_from_inputs(model))
    return graph, find(graph), shapes


# ----------------------------------------------------------------------------------------------- inspect


@dataclass
class CandidateInfo:
    name: str
    cin: int
    cout: int
    stride: list[int]
    input_shape: list[int | None] | None
    params: int
    macs: int | None
    macs_share: float | None


@dataclass(repr=False)
class InspectReport:
    """What :func:`inspect` found: rewritable 1×1 convs, skipped convs with reasons, and totals (``model_macs`` is
    None when ``unknown_macs_nodes`` of the compute nodes have shapes that dynamic dims leave unknown)."""

    model: str
    layers: list[CandidateInfo]
    skipped: list[SkippedConv]
    model_macs: int | None
    unknown_macs_nodes: int
    pointwise_macs: int | None
    pointwise_params: int
    input_shapes: dict[str, list[int | None]] = field(default_factory=dict)  # counted at; None: a dynamic dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        """One line, like a :class:`CompressionReport`'s (the dataclass's own was 8.7 kB on the text detector)."""
        return f"InspectReport(model={self.model!r}, {len(self.layers)} candidates, {len(self.skipped)} skipped)"

    def to_json(self) -> str:
        """Strict JSON, like :meth:`CompressionReport.to_json`."""
        return json.dumps(_plain(self.to_dict()), indent=2, allow_nan=False) + "\n"


@quiet_graphsurgeon()
def inspect(model: ModelSource, input_shapes: InputShapes | None = None) -> InspectReport:
    """List a model's 1×1 conv candidates (with MACs and share of the model's MACs) and skipped convs.

    MACs need static spatial sizes: fix dynamic input dims with ``input_shapes``.
    """
    proto = load_model(model, checked_input_shapes(input_shapes))
    _, found, shapes = _analyse(proto)
    _skip_our_own_factors(found, provenance(proto, source_name(model)))  # as compress will
    total, unknown = model_macs(proto, shapes)
    known = None if unknown else total  # a sum missing some nodes is not the model's total (0 is a count too)
    layers = [
        CandidateInfo(
            c.label,
            c.cin,
            c.cout,
            list(c.strides),
            None if c.input_shape is None else list(c.input_shape),
            c.params,
            c.macs,
            None if c.macs is None or not known else c.macs / known,
        )
        for c in found.candidates
    ]
    pw_macs = [c.macs for c in found.candidates]
    return InspectReport(
        source_name(model),
        layers,
        found.skipped,
        known,
        unknown,
        None if any(m is None for m in pw_macs) else sum(m for m in pw_macs if m is not None),
        sum(c.params for c in found.candidates),
        {v.name: input_dims(v) for v in graph_inputs(proto)},
    )


# ---------------------------------------------------------------------------------------------- compress


@dataclass
class LayerReport:
    """One rewritten (or kept) 1×1 conv: its format, costs before/after and weight reconstruction error."""

    name: str
    cin: int
    cout: int
    stride: list[int]
    format: str  # "lowrank" (d = 1), "tt" (d ≥ 2) or "dense"
    cores: int
    modes_in: list[int]
    modes_out: list[int]
    ranks: list[int]
    order: list[int]
    params_before: int
    params_after: int
    macs_before: int | None
    macs_after: int | None
    macs_left_to_right: int | None  # what the naive order would cost; macs_after uses the planned order
    pixels: int | None
    weight_error: float
    note: str | None = None
    # Calibration-driven compression only (None otherwise): output errors ‖XWᵀ − XŴᵀ‖/‖XWᵀ‖ on the
    # calibration and on the held-out statistics, why the layer stayed dense, and its error-vs-cost curve
    # (the Pareto front in the budget's metric; each point: format, ranks, params, macs, error, chosen).
    calibration_error: float | None = None
    heldout_error: float | None = None
    kept_dense_reason: str | None = None
    curve: list[dict[str, Any]] | None = None
    # with compress(sensitivity=N): the layer's end-to-end output error per unit of its own ε² (allocation weight)
    sensitivity: float | None = None


@dataclass(repr=False)
class CompressionReport:
    """Everything :func:`compress` did, JSON-ready via :meth:`to_dict` (stable keys)."""

    model: str
    options: dict[str, Any]
    layers: list[LayerReport]
    skipped: list[SkippedConv]
    totals: dict[str, Any]
    verification: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # source, samples, held-out samples, seconds, method
    allocation: dict[str, Any] | None = None  # budget, metric, achieved ratios, objective
    lowering: dict[str, Any] | None = None  # fast-lowering passes run after the rewrite (ttgraph.lowering)
    compensation: dict[str, Any] | None = None  # per-layer and end-to-end errors before/after compensation
    distillation: dict[str, Any] | None = None  # losses and end-to-end held-out errors before/after distillation
    ttgraph_version: str = field(default_factory=lambda: _version())  # which release's choices these are

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __repr__(self) -> str:
        """One line (the dataclass's own ran to 125 kB with every layer's curve: a log or notebook flooded)."""
        t = self.totals
        ratios = ", ".join(f"1×1 {k} {t[f'{k}_ratio']:.3f}×" for k in ("macs", "params") if t.get(f"{k}_ratio"))
        return (
            f"CompressionReport(model={self.model!r}, {t.get('layers_rewritten', 0)} of {len(self.layers)} layers "
            f"rewritten, {len(self.skipped)} skipped{', ' + ratios if ratios else ''})"
        )

    def to_json(self) -> str:
        """Strict JSON: numpy values as plain numbers, a NaN or infinite measurement as null."""
        return json.dumps(_plain(self.to_dict()), indent=2, allow_nan=False) + "\n"


def _version() -> str:
    from ttgraph import __version__

    return __version__


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


@dataclass
class Decomposition:
    """What the calibration-driven path computed: statistics, every layer's candidates and the allocation.

    Keep it to try another budget without calibrating again (:func:`ttgraph.allocate.allocate` on
    ``layers``, then :func:`rewrite_allocation`).
    """

    statistics: CalibrationStatistics
    heldout_statistics: CalibrationStatistics | None
    layers: list[LayerCandidates]
    allocation: Allocation
    # the refitted factors (rewrite_allocation(..., fits=...)), also when not kept: report.compensation['kept']
    compensation: Compensation | None = None


@dataclass(repr=False)
class CompressionResult:
    """The rewritten model and its report; :meth:`save` writes both atomically."""

    model: onnx.ModelProto
    report: CompressionReport
    source: ModelSource | None = field(default=None, repr=False)
    decomposition: Decomposition | None = field(default=None, repr=False)
    # the source file's (size, mtime, inode) when the result was made: verify() re-reads it, so it must be the same
    _stamp: tuple[int, int, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __repr__(self) -> str:
        """Short: a ModelProto's own repr is its whole text form, weights and all."""
        size = f", {self.model.ByteSize() / 1e6:.3g} MB" if fits_protobuf(self.model) else ""
        return (
            f"CompressionResult(model=<ModelProto: {len(self.model.graph.node)} nodes{size}>, report={self.report!r})"
        )

    def __post_init__(self) -> None:
        if isinstance(self.source, str | os.PathLike):  # save()'s guard and verify() must survive the caller's chdir
            absolute = os.path.abspath(self.source)
            self.source = absolute if isinstance(self.source, str) else Path(absolute)
        self._stamp = _file_stamp(self.source)

    def save(
        self,
        path: str | os.PathLike[str],
        report_path: str | os.PathLike[str] | None = None,
        html_path: str | os.PathLike[str] | None = None,
    ) -> Path:
        """Write the model to ``path`` and optionally the JSON report to ``report_path`` and the HTML report
        (tables and plots) to ``html_path``: all or none of them (a full disk or an interrupt leaves nothing
        half-done), never over the input model. A model over 2 GB gets its weights in ``<file name>.data`` beside it.
        Returns the model's path."""
        inputs = source_files(self.source)
        distinct_outputs([path, report_path, html_path])
        extras: list[tuple[str | os.PathLike[str], bytes]] = []
        if report_path is not None:
            check_output_path(report_path, inputs)
            extras.append((report_path, self.report.to_json().encode()))
        if html_path is not None:
            from ttgraph.report_html import render_html

            check_output_path(html_path, inputs)
            extras.append((html_path, render_html(self.report).encode()))
        with staged_writes(extras) as staging:
            return save_model(self.model, path, source=self.source, staging=staging)

    def verify(self, feeds: Iterable[Feed]) -> list[OutputError]:
        """Compare the rewritten model with the original on ``feeds`` (onnxruntime)."""
        if self.source is None:
            raise TTGraphError(None, "this result does not hold its original model")
        if self._stamp is not None and not os.path.exists(self.source):  # type: ignore[arg-type]
            raise TTGraphError(
                self.source,  # type: ignore[arg-type]
                "the original model file is gone (moved or deleted): verify compares with the original",
            )
        if self._stamp is not None and _file_stamp(self.source) != self._stamp:
            raise TTGraphError(
                self.source,  # type: ignore[arg-type]
                "the original model file has changed since it was compressed (saved over?): verify compares with "
                "the original, so call it before replacing the file, or compress a copy",
            )
        given = self.report.options.get("input_shapes_from") != "calibration"
        original = load_model(self.source, (self.report.options.get("input_shapes") or None) if given else None)
        return compare_outputs(original, self.model, feeds, source_name(self.source))


def _file_stamp(source: ModelSource | None) -> tuple[int, int, int] | None:
    """(size, modification time, inode) of a model given as a path; None for bytes or a ModelProto."""
    if not isinstance(source, str | os.PathLike):
        return None
    try:
        info = os.stat(source)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns, info.st_ino


def choose_format(
    conv: PointwiseConv, cores: int, *, rank: int | None, rank_ratio: float | None, opset: int
) -> tuple[TTFormat, str | None]:
    """The format for one layer: ``cores`` if both channel counts split that way, else the largest d that does.

    Ranks are full unless ``rank`` (a cap) or ``rank_ratio`` (a fraction of full rank) is given.
    """
    note = None
    fmt = None
    strided_before_10 = opset < 10 and any(s != 1 for s in conv.strides)
    for d in range(cores, 0, -1):
        if d >= 2 and strided_before_10:
            continue  # a strided MatMul chain needs Slice with steps (opset 10)
        fmt = tt_format(conv.cout, conv.cin, d)
        if fmt is not None:
            if d != cores and d == 1 and strided_before_10:
                note = f"a strided TT layer needs Slice with steps (opset ≥ 10, the model has {opset}); used d=1"
            elif d != cores:
                note = f"Cout={conv.cout}, Cin={conv.cin} cannot both split into {cores} modes ≥ 2; used d={d}"
            break
    assert fmt is not None  # d = 1 always exists
    if rank is not None or rank_ratio is not None:
        fmt = scale_ranks(fmt, rank=rank, ratio=rank_ratio)
    return fmt, note


@overload
def _integer(name: str, value: None) -> None: ...
@overload
def _integer(name: str, value: Integer) -> int: ...
@overload
def _integer(name: str, value: Integer | None) -> int | None: ...
def _integer(name: str, value: Any) -> int | None:
    """``value`` as a plain int (numpy integers included); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TTGraphError(name, f"expected an integer, got {value!r} ({type(value).__name__})")
    return int(value)


def _flag(name: str, value: Any) -> bool:
    """``value`` as a plain bool (numpy's included): the string "false" is truthy, so a pipeline reading its
    settings from text would get the opposite of what it wrote."""
    if not isinstance(value, bool | np.bool_):
        raise TTGraphError(name, f"expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


@overload
def _real(name: str, value: None) -> None: ...
@overload
def _real(name: str, value: Real | Integer) -> float: ...
@overload
def _real(name: str, value: Real | Integer | None) -> float | None: ...
def _real(name: str, value: Any) -> float | None:
    """``value`` as a plain finite float (numpy floats and ints included); None stays None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(float(value)):
        raise TTGraphError(name, f"expected a finite number, got {value!r} ({type(value).__name__})")
    return float(value)


Integer = int | np.integer[Any]  # numpy numbers are fine: a pipeline computes its options
Real = float | np.floating[Any]


@quiet_graphsurgeon()
def compress(
    model: ModelSource,
    *,
    cores: Integer = 1,
    rank: Integer | None = None,
    rank_ratio: Real | None = None,
    tolerance: Real | None = None,
    input_shapes: InputShapes | None = None,
    layers: Sequence[str] | None = None,
    plan_cost: str = "flops",
    verify_feeds: Iterable[Feed] | None = None,
    progress: bool = False,
    calibration: CalibrationData | None = None,
    preprocess: str | Preprocess | None = None,
    holdout: Integer | Real = 0.1,
    macs_ratio: Real | None = None,
    params_ratio: Real | None = None,
    max_error: Real | None = None,
    method: str = "data",
    rank_multiple: Integer = 1,
    lower: bool | Sequence[str] = True,
    compensate: bool | None = None,
    compensate_samples: Integer | None = None,
    latency_ratio: Real | None = None,
    latency_threads: Integer = 1,
    sensitivity: Integer = 0,
    distill: Integer = 0,
    distill_lr: Real = 1e-3,
    distill_batch: Integer = 16,
    distill_train: str = "factors",
    judge: Mapping[str, str] | Sequence[str] | None = None,
) -> CompressionResult:
    """Rewrite the model's 1×1 convs as TT cores of order ``cores`` (1 = low-rank, 2..8 = TT-matrix).

    Exactly one rank rule: ``rank`` caps every bond rank, ``rank_ratio`` in (0, 1] scales the full ranks
    (1.0 is an exact rewrite), ``tolerance`` picks the smallest ranks with relative weight error ≤ it.
    ``layers`` restricts the rewrite to the named convs. Each layer is contracted in the order the DP planner
    finds cheapest under ``plan_cost`` ("flops", "roofline" or "measured"). ``verify_feeds`` are inputs on which
    the result is compared with the original in onnxruntime (the report's ``verification``). ``input_shapes``
    (``{"x": (1, 3, 640, 640)}``, or ``parse_input_shapes("x=1,3,640,640")``) fixes dynamic input dims for
    shape inference and MAC counts. ``progress`` shows progress bars (tqdm, on stderr) for the long steps.

    **Or a global budget from calibration data** instead of a rank rule: ``macs_ratio`` (MACs of the rewritten 1×1
    layers, as emitted, over the original 1×1 MACs), ``params_ratio``, and/or ``max_error`` (a cap on every layer's
    calibration output error). ``calibration`` is a folder of images or an image (read with ``preprocess``, see
    :func:`ttgraph.calibration.parse_preprocess`), a ``.npy``/``.npz`` file, an iterable of feed dicts or an
    onnxruntime ``CalibrationDataReader``; ``holdout`` samples (a count or a fraction) are set aside for
    verification (with images, ``verification["original_under_input_noise"]`` gives, for scale, the original against
    itself when those images change by ±1 grey level). Per layer, candidates of order 1..``cores`` are fitted to the
    calibration statistics (``method="data"``; ``"weight"`` is the data-free SVD baseline) and the allocation picks
    one per layer, or keeps it dense (:mod:`ttgraph.decompose`, :mod:`ttgraph.allocate`). Low-rank ranks are
    multiples of ``rank_multiple`` (16 suits AVX-512 onnxruntime kernels). ``compensate`` (default None: on for
    ``method="data"``, the only method it can refit) then refits the compressed layers, in dependency order, to the
    original layers' outputs given the compressed network's inputs on ``compensate_samples`` calibration samples,
    spread over them (None: as many as hold :data:`COMPENSATE_ELEMENTS` input values, at least 8 — 28 images at
    640×640, 1214 lines at 48×192), see :mod:`ttgraph.compensate`; the report's ``compensation`` gives per-layer
    and end-to-end held-out errors before and after, and ``kept``: false when it left more outputs worse than
    better on the held-out samples, and the model was written without it.

    ``latency_ratio`` is a budget on the 1×1 layers' time measured in onnxruntime at ``latency_threads``
    (:func:`ttgraph.latency.attach_latencies`: each layer's dense and low-rank forms timed A/B, cached on disk)
    instead of their MACs: a layer whose factors are not measurably faster stays dense. Low-rank (d = 1) only.

    ``sensitivity`` = N > 0 weights each layer's error in the allocation by its end-to-end effect, measured on
    the first N calibration samples with that layer alone factored (:mod:`ttgraph.sensitivity`; one model run
    per layer and sample; it helps the PicoDet layout detector and hurts the PP-OCR models, so it is off).

    ``distill`` = E > 0 epochs (needs PyTorch: ``pip install 'torch>=2.2'``, the ``distill`` extra) then fits the
    compressed layers' factors by gradient descent to the original model's outputs on the calibration samples, end to
    end (:mod:`ttgraph.distill`; steps of ``distill_batch`` samples, Adam at ``distill_lr``; ``distill_train="all"``
    also frees the other weights); the held-out loss after each epoch picks the epoch kept (none, if no epoch
    lowers it) and an epoch that raises it cuts the step size tenfold (the report's ``distillation``).

    ``judge`` (``{"mask": "rel-l2"}``; metrics ``iou``, ``iou@T``, ``top1``, ``match``, ``rel-l2``) says how a
    held-out output is judged where its shape would mislead (:mod:`ttgraph.fidelity`): the compensation's keep
    decision, the report's before → after and its warning read that metric.

    ``lower`` runs the exact fast-lowering passes of :mod:`passes.lower` on the rewritten model (all by
    default; a list names them; False runs none); the report's ``lowering`` says what each changed.

    >>> result = compress("model.onnx", cores=2, rank_ratio=0.5)  # doctest: +SKIP
    >>> result.save("model.tt.onnx", report_path="report.json")  # doctest: +SKIP
    >>> result = compress("det.onnx", calibration="pages/", preprocess="paddleocr-det,size=640x640",
    ...                   macs_ratio=0.5)  # doctest: +SKIP
    """
    # A pipeline passes numpy scalars, strings where lists go, etc.: one clear error (or a plain value for the
    # report's JSON) here, not a TypeError deep inside the work or a report that cannot be written after it.
    source_name(model)  # raises for a model of the wrong type
    cores = _integer("cores", cores)
    rank, rank_multiple = _integer("rank", rank), _integer("rank_multiple", rank_multiple)
    rank_ratio, tolerance = _real("rank_ratio", rank_ratio), _real("tolerance", tolerance)
    macs_ratio, params_ratio = _real("macs_ratio", macs_ratio), _real("params_ratio", params_ratio)
    max_error, latency_ratio = _real("max_error", max_error), _real("latency_ratio", latency_ratio)
    latency_threads, sensitivity = _integer("latency_threads", latency_threads), _integer("sensitivity", sensitivity)
    compensate_samples = _integer("compensate_samples", compensate_samples)
    distill, distill_batch = _integer("distill", distill), _integer("distill_batch", distill_batch)
    distill_lr = _real("distill_lr", distill_lr)
    asked_to_compensate = compensate is not None and _flag("compensate", compensate)
    compensate = True if compensate is None else _flag("compensate", compensate)
    progress = _flag("progress", progress)
    if asked_to_compensate and method == "weight":  # it was reported "not applied" after the run
        raise TTGraphError("compensate", "goes with method='data': compensation refits data-aware factors")
    if latency_threads < 1:
        raise TTGraphError("latency_threads", f"expected ≥ 1, got {latency_threads}")
    if distill < 0 or distill_batch < 1 or not distill_lr > 0 or distill_train not in ("factors", "all"):
        raise TTGraphError(
            "options",
            "distillation needs epochs ≥ 0, a batch ≥ 1, a learning rate > 0 and train 'factors' or 'all' "
            f"(got {distill}, {distill_batch}, {distill_lr}, {distill_train!r})",
        )
    if compensate_samples is not None and compensate_samples < 1:
        raise TTGraphError("compensate_samples", f"expected ≥ 1 (or None: automatic), got {compensate_samples}")
    if compensate_samples is not None and not compensate:  # either would be dropped without a word
        raise TTGraphError("compensate_samples", "set with compensate=False: drop one of them")
    if latency_threads != 1 and latency_ratio is None:
        raise TTGraphError("latency_threads", f"times a latency budget: {latency_threads} without latency_ratio")
    if holdout is None:
        raise TTGraphError("holdout", "expected a count (8) or a fraction (0.1) of the calibration samples, got None")
    holdout = _integer("holdout", holdout) if isinstance(holdout, numbers.Integral) else _real("holdout", holdout)
    input_shapes = checked_input_shapes(input_shapes)
    layers = [layers] if isinstance(layers, str) else layers
    if layers is not None and isinstance(layers, Iterable):
        layers = list(dict.fromkeys(layers))  # read once (a generator checked here would be empty later), no repeats
    if layers is not None and (not isinstance(layers, list) or not all(isinstance(n, str) for n in layers)):
        raise TTGraphError("layers", f"expected conv names (a string or a list of strings), got {layers!r}")
    if layers == []:  # every conv was skipped as "not among the layers selected", without an error
        raise TTGraphError("layers", "names no conv: give at least one, or leave it out (None) for every conv")
    lower = [name.strip() for name in lower.split(",") if name.strip()] if isinstance(lower, str) else lower
    if not isinstance(lower, bool) and isinstance(lower, Iterable):
        lower = list(lower)  # read once, here, not found empty by the pass runner
    if not isinstance(lower, bool) and (not isinstance(lower, Iterable) or not all(isinstance(n, str) for n in lower)):
        raise TTGraphError("lower", f"expected True, False or pass names, got {lower!r}")
    if verify_feeds is not None and (isinstance(verify_feeds, Mapping) or not isinstance(verify_feeds, Iterable)):
        raise TTGraphError(
            "verify_feeds",
            f"expected a list of feed dicts, got {type(verify_feeds).__name__} (one feed dict: wrap it in a list)",
        )
    if not isinstance(plan_cost, str) or plan_cost not in COST_MODELS:
        raise TTGraphError("plan_cost", f"unknown cost model {plan_cost!r} (known: {', '.join(COST_MODELS)})")
    budgeted = any(x is not None for x in (macs_ratio, params_ratio, max_error, latency_ratio))
    rules = sum(x is not None for x in (rank, rank_ratio, tolerance))
    if budgeted and rules:
        raise TTGraphError("options", "a budget (macs/params ratio, max error) replaces rank, rank_ratio and tolerance")
    if not budgeted and rules != 1:
        raise TTGraphError(
            "options", "choose exactly one of rank, rank_ratio and tolerance, or a budget (macs_ratio, ...)"
        )
    if not 1 <= cores <= MAX_CORES:
        raise TTGraphError("cores", f"expected 1 to {MAX_CORES}, got {cores}")
    if plan_cost != "flops" and cores == 1:  # as the command line: it would be recorded and never used
        raise TTGraphError("plan_cost", f"orders TT cores' contractions: {plan_cost!r} goes with cores ≥ 2")
    if latency_ratio is not None and cores != 1:  # TT candidates would be dropped without a word
        raise TTGraphError(
            "cores", f"a latency budget times low-rank factor pairs (d = 1) only: cores must be 1, got {cores}"
        )
    if sensitivity < 0:
        raise TTGraphError("sensitivity", f"expected a sample count ≥ 0 (0: off), got {sensitivity}")
    if sensitivity and max_error is not None and all(x is None for x in (macs_ratio, params_ratio, latency_ratio)):
        raise TTGraphError(  # the same model came out, after the runs, with the report saying it was weighted
            "sensitivity",
            "weights the layers' errors against each other in a ratio budget; max_error alone caps each layer by "
            "itself: give macs_ratio, params_ratio or latency_ratio too, or drop it",
        )
    if method == "weight" and compensate_samples is not None:
        raise TTGraphError("compensate_samples", "goes with method='data': compensation refits data-aware factors")
    if budgeted:
        with naming(source_name(model)):
            result = _compress_to_budget(
                model,
                Budget(
                    macs_ratio=macs_ratio, params_ratio=params_ratio, max_error=max_error, latency_ratio=latency_ratio
                ),
                calibration=calibration,
                preprocess=preprocess,
                holdout=holdout,
                cores=cores,
                method=method,
                rank_multiple=rank_multiple,
                input_shapes=input_shapes,
                layers=layers,
                plan_cost=plan_cost,
                verify_feeds=verify_feeds,
                progress=progress,
                compensate=compensate,
                compensate_samples=compensate_samples,
                latency_threads=latency_threads,
                lower=lower,
                sensitivity=sensitivity,
                distill=(distill, distill_lr, distill_batch, distill_train),
                judge=judge,
            )
        return result
    if calibration is not None:
        raise TTGraphError("options", "calibration data drives a budget: give macs_ratio, params_ratio or max_error")
    if sensitivity:
        raise TTGraphError("options", "sensitivity weights a budget's allocation: give macs_ratio, params_ratio, ...")
    if distill:
        raise TTGraphError("options", "distillation fits to calibration data: give a budget and calibration")
    if judge:
        raise TTGraphError("judge", "judges a budget's held-out verification: give a budget and calibration")
    if rank_multiple != 1 or method != "data":  # a budget's candidates: a rank rule would drop them without a word
        raise TTGraphError("options", "rank_multiple and method shape a budget's candidates, not a rank rule's ranks")
    if rank is not None and rank < 1:
        raise TTGraphError("rank", f"expected ≥ 1, got {rank}")
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise TTGraphError("rank_ratio", f"expected a fraction of full rank in (0, 1], got {rank_ratio}")
    if tolerance is not None and tolerance < 0:
        raise TTGraphError("tolerance", f"expected ≥ 0, got {tolerance}")
    if tolerance is not None and tolerance >= 1:  # every rank-1 truncation is within it: no bound at all
        raise TTGraphError("tolerance", f"a relative error: it must be below 1, got {tolerance}")
    name = source_name(model)
    original = load_model(model, input_shapes)
    verify_feeds = _checked_verify_feeds(original, verify_feeds, name)
    graph, found, shapes = _analyse(original)
    _skip_our_own_factors(found, provenance(original, name))
    candidates = _select_layers(found, layers, name)
    opset = int(graph.opset or 13)
    rewrites, reports = [], []
    for conv in progress_bar(candidates, desc="decompose", unit="layer", show=progress, leave=False):
        fmt, note = choose_format(conv, cores, rank=rank, rank_ratio=rank_ratio, opset=opset)
        factors, used = tt_svd(conv.weight, fmt, tolerance=tolerance)
        order = planned_order(used, conv.pixels or 1, plan_cost)
        rewrites.append(LayerRewrite(conv, factors, order))
        reports.append(_layer_report(conv, used, order, factors, note))
    RewriteAsTT(rewrites)(graph)
    rewritten = _export(graph, original)
    _record_provenance(rewritten, reports)
    check_model(rewritten, f"{name} (rewritten)")
    report = CompressionReport(
        model=name,
        options={
            "cores": cores,
            "rank": rank,
            "rank_ratio": rank_ratio,
            "tolerance": tolerance,
            "plan_cost": plan_cost,
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            "layers": None if layers is None else list(layers),
            "lower": list(_pass_names(lower)),
        },
        layers=reports,
        skipped=found.skipped,
        totals=_totals(reports),
    )
    result = CompressionResult(rewritten, report, model if not isinstance(model, onnx.ModelProto) else original)
    result.model, report.lowering = _lower(rewritten, lower)
    _note_folded_params(result.model, reports, report.lowering)
    report.totals["model"] = whole_model_totals(original, result.model)
    if verify_feeds is not None:
        errors = compare_outputs(original, result.model, verify_feeds, name)
        report.verification = {"outputs": [e.to_dict() for e in errors]}
    return result


def _checked_verify_feeds(original: onnx.ModelProto, feeds: Iterable[Feed] | None, name: str) -> Sequence[Feed] | None:
    """The caller's ``verify_feeds``, each checked against the model's inputs before any work: a feed the model
    cannot take would otherwise fail minutes later, as onnxruntime's error from inside compensation. A sequence is
    kept as it is (a dataset that loads on access stays so), anything else is read into a list once."""
    if feeds is None:
        return None
    listed = feeds if isinstance(feeds, Sequence) else list(feeds)
    if not len(listed):
        raise TTGraphError(name, "no verification inputs: verify_feeds is empty, nothing would be compared")
    inputs = graph_inputs(original)
    for k in range(len(listed)):
        check_feed(inputs, listed[k], f"{name}: verify_feeds[{k}]", defaults=default_inputs(original))
    return listed


def _lower(
    model: onnx.ModelProto, lower: bool | Sequence[str], feed: Feed | None = None
) -> tuple[onnx.ModelProto, dict[str, Any] | None]:
    """Both compress paths end with this, before verification: the exact fast-lowering passes (:mod:`passes.lower`)
    on the rewritten model, and what they changed (None when none ran)."""
    if lower is False:
        return model, None
    from ttgraph.lowering import lower_model

    names = _pass_names(lower)
    if not names:
        return model, None
    return lower_model(model, names, feed=feed)


def _pass_names(lower: bool | Sequence[str]) -> tuple[str, ...]:
    """The lowering passes ``lower`` runs, by name."""
    from passes.lower import DEFAULT_PASSES

    return DEFAULT_PASSES if lower is True else () if lower is False else tuple(lower)


def _select_layers(found: FoundConvs, layers: Sequence[str] | None, name: str) -> list[PointwiseConv]:
    """The convs to rewrite: all candidates, or the named ones (the others join ``found.skipped``: a report that
    left them out of both lists read as if the model had no more)."""
    candidates = found.candidates
    if layers is not None:
        known = {c.label for c in candidates}
        unknown = [label for label in layers if label not in known]
        if unknown:
            reasons = {s.label: s.reason for s in found.skipped}
            why = [
                f"{label} ({reasons[label]})" if label in reasons else f"{label} (no conv of that name)"
                for label in unknown
            ]
            raise TTGraphError(name, f"not a rewritable 1×1 conv: {'; '.join(why)}")
        wanted = set(layers)
        found.skipped.extend(SkippedConv(c.label, "Conv", NOT_SELECTED) for c in candidates if c.label not in wanted)
        candidates = [c for c in candidates if c.label in wanted]
    return candidates


def _fixed_shapes_from_data(model: onnx.ModelProto, source: Any, data: Any) -> dict[str, list[int]] | None:
    """Input shapes read from the first calibration feed, for a model with dynamic input dims (so MACs can
    be counted); None when the model's inputs are static, the source can be read only once, or ``data`` is a
    list of feeds of several sizes (a pipeline's real inputs): those calibrate the dynamic model as a generator
    of them would, without MACs, instead of being refused from the second size on."""
    values = graph_inputs(model)
    if all(all(d is not None for d in input_dims(v)) for v in values) or not source.reiterable:
        return None
    # a list or tuple holds its feeds already; a dataset that loads on access is not read twice to find out
    if isinstance(data, list | tuple) and all(isinstance(f, Mapping) for f in data):
        sizes = {tuple(tuple(np.shape(f[v.name])) if v.name in f else None for v in values) for f in data}
        if len(sizes) > 1:
            return None
    first = next(iter(source), None)
    if first is None:
        return None
    return {v.name: list(np.shape(first[v.name])) for v in values if v.name in first}


def _compress_to_budget(
    model: ModelSource,
    budget: Budget,
    *,
    calibration: Any,
    preprocess: str | Preprocess | None,
    holdout: int | float,
    cores: int,
    method: str,
    rank_multiple: int,
    input_shapes: InputShapes | None,
    layers: Sequence[str] | None,
    plan_cost: str,
    verify_feeds: Iterable[Feed] | None,
    progress: bool,
    compensate: bool = True,
    compensate_samples: int | None = None,
    latency_threads: int = 1,
    lower: bool | Sequence[str] = True,
    sensitivity: int = 0,
    distill: tuple[int, float, int, str] = (0, 1e-3, 16, "factors"),
    judge: Mapping[str, str] | Sequence[str] | None = None,
) -> CompressionResult:
    """compress() with a global budget: calibrate → decompose → (sensitivity) → allocate → compensate → rewrite →
    (distill) → lower → verify. A model with dynamic input dims is fixed to the first calibration sample's shape
    to count MACs (``declared`` keeps the model as given, whose dims the written model gets back)."""
    from ttgraph.fidelity import heldout_fidelity, parse_judge

    if method not in ("data", "weight"):
        raise TTGraphError("options", f"method must be 'data' or 'weight', got {method!r}")
    if calibration is None and method == "data":
        raise TTGraphError("options", "a budget needs calibration data (calibration=..., CLI --calib)")
    epochs = distill[0]
    if epochs and (calibration is None or method != "data"):
        raise TTGraphError("options", "distillation needs calibration data and data-aware candidates (method='data')")
    if sensitivity and calibration is None:
        raise TTGraphError("sensitivity", "measuring sensitivity needs calibration data")
    name = source_name(model)
    original = load_model(model, input_shapes)
    judged_by = parse_judge(judge, original)
    if input_shapes:
        _check_runs_at_its_input_shape(original, name)
    source = None
    declared = None  # the model as given, when its dynamic dims are fixed from the data only to count MACs
    if calibration is not None:
        source = calibration_source(calibration, original, preprocess)
        fixed = _fixed_shapes_from_data(original, source, calibration) if not input_shapes else None
        if fixed:
            declared, input_shapes = original, fixed
            original = load_model(model, input_shapes)
            listed = ", ".join(f"{k}: {'×'.join(map(str, v))}" for k, v in fixed.items())
            hint = (
                f": the first calibration sample fixed the model's dynamic dims ({listed}) to count MACs at one "
                "input shape; give samples of one size (the written model keeps its dynamic dims)"
            )
            source = calibration_source(calibration, original, preprocess, shape_hint=hint)
    verify_feeds = _checked_verify_feeds(original, verify_feeds, name)
    if epochs:  # before the statistics pass, not after it
        from ttgraph.torch_graph import check_runnable, require_torch

        require_torch()
        check_runnable(original, name)
    graph, found, shapes = _analyse(original)
    _skip_our_own_factors(found, provenance(original, name))
    convs = _select_layers(found, layers, name)
    if budget.ratio is not None and budget.metric != "params" and any(c.pixels is None for c in convs):
        _why_sizes_are_unknown(original, name)
        raise TTGraphError(
            name,
            "a MACs or time budget needs the input's spatial size and the model's input dims are dynamic: give "
            "input_shapes, or calibration samples of one size that can be read twice (the first "
            "fixes them)",
        )
    opset = int(graph.opset or 13)
    stats = held_stats = None
    held = comp_feeds = None
    if source is not None:
        calib, held = split_holdout(source, holdout)
        # it would be dropped without a word (a stream holding out a fraction fills its held-out part as it goes)
        streamed = source.length is None and not isinstance(holdout, numbers.Integral) and holdout > 0
        if judged_by and verify_feeds is None and not held.length and not streamed:
            raise TTGraphError("judge", "judges the held-out outputs, and no calibration sample is held out (holdout)")
        if epochs and not calib.reiterable:
            raise TTGraphError(
                "distill",
                "distillation reads the calibration samples once per epoch: give a folder, a file or a list of "
                "feeds, not a one-pass iterable",
            )
        if epochs and not held.length and not streamed:  # it trained, then threw every epoch away
            raise TTGraphError(
                "distill", "keeps the epoch that does best on held-out samples, and none is held out (holdout)"
            )
        if epochs:  # a translation PyTorch runs otherwise would be fitted and kept: check before any work
            from ttgraph.torch_graph import check_agrees

            first = next(iter(calib), None)
            if first is not None:
                check_agrees(original, first, name)
        if sensitivity and not calib.reiterable:  # fail before the statistics pass, not after it
            raise TTGraphError(
                "sensitivity",
                "sensitivity reads calibration samples after the statistics pass: give a folder, a file or a list "
                "of feeds, not a one-pass iterable",
            )
        if compensate and method == "data" and not calib.reiterable:
            # compensation reads a few samples once per dependency level: a one-pass source (a generator, a data
            # reader) keeps them from the statistics pass, up to CACHE_BYTES
            wanted = compensate_samples
            calib, comp_feeds = remember_sample(calib, lambda feed: wanted or _samples_for(feed), CACHE_BYTES)
        stats = collect_statistics(original, convs, calib, progress=progress, desc="calibrate")
        if held.length:
            held_stats = collect_statistics(original, convs, held, progress=progress, desc="held-out")
    metric = budget.metric
    if budget.ratio is None and any(c.pixels is None for c in convs):
        metric = "params"  # an error cap alone minimizes MACs, unless they are unknown
    timed = metric == "latency"
    layer_cands = [
        build_candidates(
            conv,
            None if stats is None else stats.layers[conv.label],
            method=method,  # type: ignore[arg-type]
            cores=(1,) if timed else tuple(range(1, cores + 1)),
            rank_multiple=rank_multiple,
            opset=opset,
            plan_cost=plan_cost,
            metric="macs" if timed else (metric if budget.ratio is not None else None),
            progress=progress,
        )
        for conv in progress_bar(convs, desc="decompose", unit="layer", show=progress, leave=False)
    ]
    untimed: list[str] = []
    if timed:
        from ttgraph.latency import attach_latencies, timing_shape

        untimed = [layer.conv.label for layer in layer_cands if timing_shape(layer.conv) is None]
        if untimed and len(untimed) == len(layer_cands):
            raise TTGraphError(
                name,
                "a latency budget times each 1×1 conv as a 2-D conv of static size with one stride for every axis; "
                f"none of these can be ({', '.join(untimed[:5])}{', …' if len(untimed) > 5 else ''}): "
                "use macs_ratio",
            )
        layer_cands = attach_latencies(layer_cands, threads=latency_threads, progress=progress)
    weights = None
    probed = ""  # how many samples the sensitivities were measured on, for the report
    if sensitivity:
        from ttgraph.sensitivity import measured_sensitivities

        probe_feeds = list(itertools.islice(calib, sensitivity))
        probed = f"{len(probe_feeds)} samples"
        if len(probe_feeds) < sensitivity:  # a larger count ran on what there was, without a word
            probed += f": all the calibration has, of the {sensitivity} asked for"
        weights = measured_sensitivities(original, layer_cands, probe_feeds, metric=metric, progress=progress)
    log.info("allocating the budget over %d layers", len(layer_cands))
    try:
        alloc = allocate(layer_cands, budget, metric=metric, weights=weights)
    except TTGraphError as err:
        if not untimed or "out of reach" not in err.what:
            raise
        note = (
            f"{len(untimed)} of the {len(layer_cands)} layers cannot be timed and stay dense ({', '.join(untimed[:5])})"
        )
        raise TTGraphError(err.source, f"{err.what}; {note}") from err
    check_feeds: Any = None  # what compensation is judged and the result verified on: never calibration samples
    reference = OriginalOutputs()  # the original's outputs on them, kept by the first pass for the next ones
    if verify_feeds is not None:
        check_feeds = verify_feeds
    elif held is not None and held.length:
        check_feeds = held
    comp, comp_skipped, judged = None, None, None
    if compensate and alloc.compressed():
        if stats is None or method != "data":
            comp_skipped = "compensation needs calibration data and data-aware candidates (method='data')"
        elif not calib.reiterable and not (comp_feeds and comp_feeds.length):  # type: ignore[union-attr]
            comp_skipped = "the calibration source can be read only once and kept no samples for compensation"
        elif compensate_samples is None and (few := _too_few_for_compensation(calib, comp_feeds)) is not None:
            comp_skipped = (
                f"only {few} calibration sample{'s' if few != 1 else ''} to fit to; compensation reads at least "
                f"{MIN_COMPENSATE_SAMPLES} by default (fitted to one, it turned the direction classifier's answer "
                "on unseen inputs to certainty): give more samples, or compensate_samples=N (--compensate-samples) "
                "to fit to these"
            )
        else:
            one_pass = not calib.reiterable  # type: ignore[union-attr]
            comp = run_compensation(
                original,
                layer_cands,
                alloc.choices,
                comp_feeds if one_pass else calib,
                build=lambda fits: rewrite_allocation(original, layer_cands, alloc, fits, name, check=False),
                build_part=lambda fits, part: rewrite_allocation(part, layer_cands, alloc, fits, name, False, True),
                samples=comp_feeds.length if one_pass else compensate_samples or _auto_samples(calib),  # type: ignore[union-attr]
                progress=progress,
            )
            if check_feeds is not None:
                judged = _judge_compensation(
                    original, layer_cands, alloc, comp, check_feeds, name, progress, reference, judged_by
                )
    fits = comp.fits if comp is not None and (judged is None or judged.kept) else {}
    rewrites = []
    reports = []
    for lc in layer_cands:
        chosen = alloc.choices[lc.label]
        fit = fits.get(lc.label)
        if chosen.kind == "dense" and fit is not None and fit.weight is not None:
            _replace_dense(lc.conv, fit.weight, fit.bias)
        if chosen.kind != "dense":
            # dims fixed from the data: the TT layers read their output shape at run time, like the model's
            shape = lc.conv.fixed_output_shape if declared is None else None
            if fit is not None:
                dtype = lc.conv.bias.dtype if lc.conv.bias is not None else lc.conv.weight_dtype
                conv = dataclasses.replace(lc.conv, bias=_factored_bias(fit).astype(dtype), fixed_output_shape=shape)
                rewrites.append(LayerRewrite(conv, [c.copy() for c in fit.cores], chosen.order))
            else:
                conv = dataclasses.replace(lc.conv, bias=lc.bias(chosen), fixed_output_shape=shape)
                rewrites.append(LayerRewrite(conv, lc.cores(chosen), chosen.order))
        sensitivity_weight = None if weights is None else weights.get(lc.label)
        reports.append(_budget_layer_report(lc, chosen, alloc, stats, held_stats, metric, sensitivity_weight))
    log.info("rewriting %d layers and checking the model", len(alloc.compressed()))
    RewriteAsTT(rewrites)(graph)
    rewritten = _export(graph, original)
    _record_provenance(rewritten, [r for r in reports if r.format != "dense"])
    check_model(rewritten, f"{name} (rewritten)")
    undistilled = rewritten  # what distillation's "before" reads: unlowered, as the student started
    distillation = None
    if epochs and alloc.compressed():
        from ttgraph.distill import distill as run_distillation

        distillation = run_distillation(
            original,
            rewritten,
            [r.name for r in reports if r.format != "dense"],
            calib,  # type: ignore[arg-type]
            held if held is not None and held.length else None,
            epochs=epochs,
            lr=distill[1],
            batch=distill[2],
            train=distill[3],
            progress=progress,
        )
        rewritten = distillation.model
    if lower:
        log.info("lowering the rewritten model")
    rewritten, lowering = _lower(rewritten, lower, _first_feed(held))
    _note_folded_params(rewritten, reports, lowering)
    whole = whole_model_totals(original, rewritten)
    if declared is not None:
        rewritten = declare_io_like(rewritten, declared)
    macs = alloc.totals("macs") if all(c.pixels is not None for c in convs) else None
    params = alloc.totals("params")
    report = CompressionReport(
        model=name,
        options={
            "cores": cores,
            "macs_ratio": budget.macs_ratio,
            "params_ratio": budget.params_ratio,
            "max_error": budget.max_error,
            "latency_ratio": budget.latency_ratio,
            "method": method,
            "rank_multiple": rank_multiple,
            "holdout": holdout,
            "compensate": compensate,
            "compensate_samples": compensate_samples,
            "sensitivity": sensitivity,
            "distill": epochs,
            "distill_lr": distill[1],
            "distill_batch": distill[2],
            "distill_train": distill[3],
            "plan_cost": plan_cost,
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
            # "calibration": read from the first sample to count MACs; the written model keeps its dynamic dims
            "input_shapes_from": None if not input_shapes else "given" if declared is None else "calibration",
            "layers": None if layers is None else list(layers),
            "lower": list(_pass_names(lower)),
            "judge": judged_by or None,
        },
        layers=reports,
        skipped=found.skipped,
        totals={**_totals(reports), "model": whole},
        calibration=None
        if stats is None
        else {
            "source": stats.source,
            "samples": stats.samples,
            "heldout_samples": 0 if held_stats is None else held_stats.samples,
            # which samples those are, where the source names them (image files: their paths in the folder)
            "heldout_names": None if held is None else held.names,
            "seconds": round(stats.seconds, 3),
            "method": method,
            "statistic": "Gram matrix of each 1×1 conv's input (float64), channel sums, row count",
            "blank_inputs": stats.blank_inputs,
        },
        allocation={
            "metric": metric,
            "budget": budget.to_dict(),
            "objective": (
                "sum over layers of squared calibration output error"
                if method == "data"
                else "sum over layers of squared relative weight error (method 'weight': data-free)"
            )
            + ("" if weights is None else f", each weighted by its sensitivity (measured on {probed})"),
            "objective_value": alloc.damage,
            "macs_ratio": None if macs is None or not macs[0] else macs[1] / macs[0],
            "params_ratio": params[1] / params[0] if params[0] else None,
            "latency_ratio": alloc.ratio if timed else None,
            "latency_threads": latency_threads if timed else None,
            # where the times were measured: a budget for another device (a phone) needs its own measurements
            "latency_measured_on": _latency_device() if timed else None,
            "layers_compressed": len(alloc.compressed()),
        },
        lowering=lowering,
    )
    result = CompressionResult(
        rewritten,
        report,
        model if not isinstance(model, onnx.ModelProto) else original if declared is None else declared,
        Decomposition(stats, held_stats, layer_cands, alloc, comp) if stats is not None else None,  # type: ignore[arg-type]
    )
    if verify_feeds is not None:
        report.verification = {
            "inputs": "verify_feeds",
            **heldout_fidelity(original, rewritten, check_feeds, source=name, reference=reference, judge=judged_by),
        }
    elif check_feeds is not None and held is not None:  # check_feeds is held
        report.verification = {
            "inputs": f"{held.length} held-out calibration sample{'s' * (held.length != 1)} (not used to fit)",
            **heldout_fidelity(
                original, rewritten, held, source=name, progress=progress, reference=reference, judge=judged_by
            ),
        }
        if held.images is not None:
            report.verification["original_under_input_noise"] = _input_noise_yardstick(
                original, held, name, progress, reference, judged_by
            )
    if epochs and distillation is None:
        report.distillation = {"applied": False, "reason": "no layer was compressed"}
    if distillation is not None:
        before_distillation = None
        if judged is not None:  # already measured: the distillation started from the model judged better
            before_distillation = {"outputs": judged.after if judged.kept else judged.before}
        elif check_feeds is not None:
            before_distillation = heldout_fidelity(
                original, undistilled, check_feeds, source=name, reference=reference, judge=judged_by
            )
        report.distillation = {
            **distillation.to_dict(),
            "end_to_end": {
                "inputs": (report.verification or {}).get("inputs"),
                "before": (before_distillation or {}).get("outputs"),
                "after": (report.verification or {}).get("outputs"),
            },
        }
    if comp is not None or comp_skipped is not None:
        inputs = (report.verification or {}).get("inputs")
        report.compensation = _compensation_report(comp, comp_skipped, layer_cands, judged, inputs)
    return result


@dataclass
class _JudgedCompensation:
    """End-to-end and per-layer held-out errors of the compressed model without and with compensation."""

    before: list[dict[str, Any]]  # heldout_fidelity(...)["outputs"]
    after: list[dict[str, Any]]
    layers_before: dict[str, float]  # per compressed layer: its output error in the compressed network
    layers_after: dict[str, float]
    worse: int  # outputs compensation made worse
    better: int

    @property
    def kept(self) -> bool:
        return self.worse <= self.better


def _judge_compensation(
    original: onnx.ModelProto,
    layers: Sequence[LayerCandidates],
    alloc: Allocation,
    comp: Compensation,
    feeds: Any,
    name: str,
    progress: bool,
    reference: OriginalOutputs | None = None,
    judge: Mapping[str, str] | None = None,
) -> _JudgedCompensation:
    """Compensation is kept only where it does not leave more outputs worse than better on the held-out samples.
    It fits each layer to a few calibration samples and wins on the models measured, but on some third-party
    models (a layout detector at --params-ratio 0.6: 5 of its 8 outputs worse) it does not, and a user
    should not get the worse model by default. One pass runs the original and both compressed models side by
    side: the end-to-end fidelity and the per-layer errors come from the same runs (``reference`` keeps the
    original's outputs for the verification after it)."""
    from ttgraph.fidelity import FidelityTally, worse_and_better

    compressed = [lc for lc in layers if lc.label in comp.fits]
    fresh = {c.label: c for c in _analyse(original)[1].candidates}  # the candidates' nodes may be rewritten since
    convs = [fresh[lc.label] for lc in compressed]
    fitted: tuple[Mapping[str, LayerFit], Mapping[str, LayerFit]] = ({}, comp.fits)  # without, with compensation
    models = [rewrite_allocation(original, layers, alloc, fits, name, check=False) for fits in fitted]  # run only
    outputs = [o.name for o in original.graph.output]
    tallies = [FidelityTally(outputs, judge=judge) for _ in models]
    inputs = graph_inputs(original)
    count = 0

    def tally(feed: Feed, ref: dict[str, np.ndarray], gots: list[dict[str, np.ndarray]]) -> None:
        nonlocal count
        check_feed(inputs, feed, f"{name}: held-out input {count}")
        refs = [ref[o] for o in outputs]
        if reference is not None:
            reference.keep(count, refs)
        for t, got in zip(tallies, gots, strict=True):
            t.add(refs, [got[o] for o in outputs])
        count += 1

    total = feed_count(feeds)
    with progress_bar(total=total, desc="judge compensation", unit="img", show=progress, leave=False) as bar:
        stats = side_by_side(original, models, convs, feeds, tally, also=outputs, bar=bar)
    if reference is not None:
        reference.done(count)
    before, after = [t.result(name)["outputs"] for t in tallies]
    layers_before, layers_after = [
        layer_errors(compressed, alloc.choices, fits, st) for fits, st in zip(fitted, stats, strict=True)
    ]
    return _JudgedCompensation(before, after, layers_before, layers_after, *worse_and_better(before, after))


def _input_noise_yardstick(
    original: onnx.ModelProto,
    held: Any,
    name: str,
    progress: bool = False,
    reference: OriginalOutputs | None = None,
    judge: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The original against itself when its held-out images change by ±1 grey level: a scale to read the rewritten
    model's fidelity on (a binarized map's IoU, say, moves with every boundary pixel even then)."""
    from ttgraph.fidelity import heldout_fidelity

    _, spec = held.images
    noise = spec.grey_level_noise(levels=1, seed=0)
    moved = heldout_fidelity(
        original,
        original,
        held,
        source=name,
        perturb=noise,
        progress=progress,
        desc="±1 grey",
        reference=reference,
        judge=judge,
    )
    return {"noise": "±1 grey level, uniform integer noise on each held-out image (fixed seed)", **moved}


def _first_feed(source: Any) -> Feed | None:
    """The first sample of a source that can be read again (None otherwise): a real input to check lowering on."""
    if source is None or not source.length or not source.reiterable:
        return None
    return source.fetch(0) if source.fetch is not None else next(iter(source), None)


# Input values the compensation reads by default (one pass per dependency level). 2^23 (8 images at 640×640) fitted
# the layers to too few images: on PicoDet at 0.7 of the MACs (24 calibration images) the fits of 8 and of 16
# left all 8 outputs worse on held-out images, those of 20 or 24 made 7 of 8 better; the text detector at 0.5
# gains 0.7 points of IoU from 32 instead of 8 (benchmarks/RESULTS.md, "How many compensation samples").
COMPENSATE_ELEMENTS = 1 << 25
MIN_COMPENSATE_SAMPLES = 8  # fewer by default only if the user insists (_too_few_for_compensation)


def _too_few_for_compensation(calib: Any, kept: Any) -> int | None:
    """How many samples compensation would fit to, where that is fewer than :data:`MIN_COMPENSATE_SAMPLES` (else
    None). A layer refitted to one image's rows fits that image and nothing else; with nothing held out no
    judgement catches it."""
    available = feed_count(kept if not calib.reiterable else calib)
    return available if available is not None and available < MIN_COMPENSATE_SAMPLES else None


def _auto_samples(source: Any) -> int:
    """How many calibration samples the compensation reads by default: enough to hold
    :data:`COMPENSATE_ELEMENTS` input values (the first feed's size), at least :data:`MIN_COMPENSATE_SAMPLES`."""
    fetch = getattr(source, "fetch", None)
    return _samples_for(fetch(0) if fetch is not None else next(iter(source), None))


def _samples_for(first: Feed | None) -> int:
    """Enough samples like ``first`` to hold :data:`COMPENSATE_ELEMENTS` input values, at least
    :data:`MIN_COMPENSATE_SAMPLES`."""
    size = sum(int(np.size(v)) for v in first.values()) if first else 1
    return max(MIN_COMPENSATE_SAMPLES, -(-COMPENSATE_ELEMENTS // max(size, 1)))


def _compensation_report(
    comp: Compensation | None,
    skipped: str | None,
    layers: Sequence[LayerCandidates],
    judged: _JudgedCompensation | None,
    inputs: str | None,
) -> dict[str, Any]:
    """The report's ``compensation`` section: per compressed layer, its output error in the compressed network
    (vs the original layer in the original network) before and after, on calibration and held-out data, the
    end-to-end held-out fidelity without and with it, and whether it was kept (:func:`_judge_compensation`)."""
    if comp is None:
        return {"applied": False, "reason": skipped}
    held_before = judged.layers_before if judged is not None else {}
    held_after = judged.layers_after if judged is not None else {}
    end_to_end = None if judged is None else {"inputs": inputs, "before": judged.before, "after": judged.after}
    reason = None
    if judged is not None and not judged.kept:
        reason = (
            f"{judged.worse} of {len(judged.after)} outputs worse on the held-out samples than without it, so the "
            "model is written without it (judged on the samples the verification reports)"
        )
    return {
        "applied": True,
        "kept": judged is None or judged.kept,
        "checked": judged is not None,  # False: no held-out samples to judge it on, kept untested
        "reason": reason,
        "method": "asymmetric reduced-rank ridge refit of low-rank factors + bias (TT d ≥ 2: bias only), "
        "layers in dependency order",
        "samples": comp.samples,
        "passes": comp.passes,
        "passes_from_cut": comp.from_cut,
        "largest_cut_mib": round(comp.cut_bytes / 2**20, 1),
        "damping": comp.damping,
        "seconds": round(comp.seconds, 3),
        "error": "‖layer output in the compressed network − original layer output in the original network‖ / "
        "‖original output‖; calibration: before and after the layer's refit, on the inputs it was refitted on "
        "(upstream layers already compensated); held-out: without and with compensation",
        "layers": [
            {
                "name": lc.label,
                "calibration_error_before": comp.calibration_before.get(lc.label),
                "calibration_error_after": comp.calibration_after.get(lc.label),
                "heldout_error_before": held_before.get(lc.label),
                "heldout_error_after": held_after.get(lc.label),
            }
            for lc in layers
            if lc.label in comp.fits
        ],
        "end_to_end": end_to_end,
    }


def rewrite_allocation(
    model: onnx.ModelProto,
    layers: Sequence[LayerCandidates],
    allocation: Allocation | dict[str, Candidate],
    fits: Mapping[str, LayerFit] | None = None,
    name: str = "<model>",
    check: bool = True,
    part: bool = False,
) -> onnx.ModelProto:
    """A rewritten copy of ``model`` (the original the candidates were built from, shapes fixed alike) with
    each layer replaced by its allocated candidate; keep-dense layers stay as they are. ``fits`` replace the
    cores and bias of the layers they name (error compensation, :mod:`ttgraph.compensate`); ``name`` is
    what an error names; ``check=False`` skips onnx.checker (a model only run, not written). ``part=True``:
    ``model`` is a piece of that original (:func:`ttgraph.frontier.segment`), not analysed again: its convs
    are the layers' own, found by output name, and layers outside it are left out."""
    choices = allocation.choices if isinstance(allocation, Allocation) else allocation
    fits = fits or {}
    if part:
        graph = import_graph(model)
        made = {n.outputs[0].name: n for n in graph.nodes if n.outputs}
        by_label = {
            lc.label: dataclasses.replace(lc.conv, node=made[lc.conv.node.outputs[0].name])
            for lc in layers
            if lc.conv.node.outputs[0].name in made
        }
        layers = [lc for lc in layers if lc.label in by_label]
    else:
        graph, found, _ = _analyse(model)
        by_label = {c.label: c for c in found.candidates}
    rewrites = []
    for lc in layers:
        chosen = choices[lc.label]
        fit = fits.get(lc.label)
        if chosen.kind == "dense":
            if fit is not None and fit.weight is not None:
                _replace_dense(by_label[lc.label], fit.weight, fit.bias)
            continue
        if fit is not None:
            conv = by_label[lc.label]
            dtype = conv.bias.dtype if conv.bias is not None else conv.weight_dtype
            conv = dataclasses.replace(conv, bias=_factored_bias(fit).astype(dtype))
            rewrites.append(LayerRewrite(conv, [c.copy() for c in fit.cores], chosen.order))
            continue
        conv = dataclasses.replace(by_label[lc.label], bias=lc.bias(chosen))
        rewrites.append(LayerRewrite(conv, lc.cores(chosen), chosen.order))
    RewriteAsTT(rewrites)(graph)
    rewritten = _export(graph, model)
    if check:  # off for compensation's models of each level: the model written is checked, once
        check_model(rewritten, f"{name} (rewritten)")
    return rewritten


def _replace_dense(conv: PointwiseConv, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """Give a kept-dense conv the refitted weight (and bias) of a compensation, as fresh constants."""
    node = conv.node
    shape = (conv.cout, conv.cin, *[1] * conv.spatial_rank)
    node.inputs[1] = gs.Constant(f"{conv.label}/compensated/w", weight.reshape(shape).astype(conv.weight_dtype))
    if bias is not None and len(node.inputs) > 2:
        dtype = conv.bias.dtype if conv.bias is not None else conv.weight_dtype
        node.inputs[2] = gs.Constant(f"{conv.label}/compensated/b", bias.astype(dtype))


def _factored_bias(fit: LayerFit) -> np.ndarray:
    """The bias of a factored layer's compensation: such a fit always has one (only a dense refit may have none)."""
    if fit.bias is None:
        raise TTGraphError(fit.label, "the compensation of a factored layer came without a bias")
    return fit.bias


def _few_rows_note(conv: PointwiseConv, stats: CalibrationStatistics | None) -> str | None:
    """A compressed layer that saw fewer input rows than it has channels fits them exactly at any rank: its
    calibration error reads near 0 and the allocation took compressing it as free (a squeeze-excitation conv
    sees one row per sample)."""
    rows = stats.layers[conv.label].rows if stats is not None else None
    if rows is None or rows >= conv.cin:
        return None
    return (
        f"calibrated on {rows} input rows, fewer than its {conv.cin} channels: its calibration error understates "
        "the real one (give more samples)"
    )


def _budget_layer_report(
    lc: LayerCandidates,
    chosen: Candidate,
    alloc: Allocation,
    stats: CalibrationStatistics | None,
    held: CalibrationStatistics | None,
    metric: str,
    sensitivity: float | None = None,
) -> LayerReport:
    conv = lc.conv
    pixels = conv.pixels
    fmt = chosen.fmt
    curve = lc.curve(metric)  # type: ignore[arg-type]
    if chosen not in curve:
        curve = sorted([*curve, chosen], key=lambda c: (c.cost(metric), c.index))  # type: ignore[arg-type]
    cal_errors = lc.errors_on(stats.layers[lc.label], curve) if stats is not None else {}
    held_error = lc.errors_on(held.layers[lc.label], [chosen])[chosen.index] if held is not None else None
    points = [
        {
            "format": describe(c),
            "cores": c.d,
            "ranks": list(c.ranks),
            "params": c.params,
            "macs": c.macs,
            "error": cal_errors.get(c.index, c.error),
            "chosen": c.index == chosen.index,
        }
        for c in curve
    ]
    order = list(chosen.order) if chosen.order is not None else []
    return LayerReport(
        name=conv.label,
        cin=conv.cin,
        cout=conv.cout,
        stride=list(conv.strides),
        format=chosen.kind,
        cores=chosen.d,
        modes_in=[] if fmt is None else list(fmt.modes_in),
        modes_out=[] if fmt is None else list(fmt.modes_out),
        ranks=[] if fmt is None else list(fmt.ranks),
        order=order,
        params_before=conv.params,
        params_after=chosen.params,
        macs_before=conv.macs,
        macs_after=chosen.macs,
        macs_left_to_right=None
        if pixels is None
        else (chosen.macs if fmt is None else contraction_macs(fmt, pixels, left_to_right(fmt.num_cores))),
        pixels=pixels,
        weight_error=chosen.weight_error,
        note=_few_rows_note(conv, stats) if chosen.kind != "dense" else None,
        calibration_error=cal_errors.get(chosen.index, chosen.error) if stats is not None else None,
        heldout_error=held_error,
        kept_dense_reason=alloc.reasons.get(conv.label) if chosen.kind == "dense" else None,
        curve=points,
        sensitivity=sensitivity,
    )


def _input_shape_text(model: onnx.ModelProto) -> str:
    return ", ".join(f"{i.name}={'×'.join(map(str, input_dims(i))) or 'scalar'}" for i in graph_inputs(model))


def _check_runs_at_its_input_shape(model: onnx.ModelProto, name: str) -> None:
    """Run a model whose input dims were fixed once on zeros: a shape it cannot run at (a detector's sizes must
    be multiples of 32) is named with onnxruntime's reason, not reported later as a model that cannot load."""
    try:
        sess = session(model, name=name)
        names = [o.name for o in sess.get_outputs()]
        run_session(sess, names, {k: np.zeros_like(v) for k, v in random_feed(model).items()}, name)
    except TTGraphError as err:
        raise TTGraphError(name, f"at input shape {_input_shape_text(model)}: {err.what}") from err


def _why_sizes_are_unknown(model: onnx.ModelProto, name: str) -> None:
    """With every input dim fixed, unknown conv sizes mean the model cannot run at that shape: raise that reason
    instead of asking for the input shape that was given."""
    if not all(all(d is not None for d in input_dims(i)) for i in graph_inputs(model)):
        return
    _check_runs_at_its_input_shape(model, name)
    shape = _input_shape_text(model)
    raise TTGraphError(name, f"the 1×1 convs' sizes are unknown at input shape {shape}: a MACs budget cannot count")


def _skip_our_own_factors(found: FoundConvs, meta: dict[str, Any] | None) -> None:
    """Compressing a compressed model leaves the factors ttgraph wrote alone (they are 1×1 convs too)."""
    if not meta:
        return
    prefixes = tuple(f"{layer['name']}/tt/" for layer in meta.get("layers", []))
    ours = [c for c in found.candidates if c.node.name.startswith(prefixes)]
    found.candidates = [c for c in found.candidates if c not in ours]
    found.skipped.extend(SkippedConv(c.label, "Conv", OUR_FACTOR) for c in ours)


OUR_FACTOR = "already a TT factor written by ttgraph"  # the skip reason of a compressed model's factor convs
NOT_SELECTED = "not among the layers selected (layers=, --layer)"


def our_factors(skipped: Sequence[SkippedConv]) -> int:
    """How many of the skipped convs are factors an earlier ttgraph run wrote: a summary says so in one line."""
    return sum(s.reason == OUR_FACTOR for s in skipped)


def _layer_report(
    conv: PointwiseConv, fmt: TTFormat, order: tuple[int, ...], factors: list[np.ndarray], note: str | None
) -> LayerReport:
    pixels = conv.pixels
    bias = 0 if conv.bias is None else conv.bias.size
    return LayerReport(
        name=conv.label,
        cin=conv.cin,
        cout=conv.cout,
        stride=list(conv.strides),
        format="lowrank" if fmt.is_lowrank else "tt",
        cores=fmt.d,
        modes_in=list(fmt.modes_in),
        modes_out=list(fmt.modes_out),
        ranks=list(fmt.ranks),
        order=list(order),
        params_before=conv.params,
        params_after=fmt.params() + bias,
        macs_before=conv.macs,
        macs_after=None if pixels is None else contraction_macs(fmt, pixels, order),
        macs_left_to_right=None if pixels is None else contraction_macs(fmt, pixels, left_to_right(fmt.num_cores)),
        pixels=pixels,
        weight_error=relative_error(conv.weight, tt_reconstruct(factors)),
        note=note,
    )


def _latency_device() -> str:
    import onnxruntime

    from ttgraph.bench import cpu_model

    return f"onnxruntime {onnxruntime.__version__} on {cpu_model()}"


def _note_folded_params(model: onnx.ModelProto, layers: list[LayerReport], lowering: dict[str, Any] | None) -> None:
    """How many params lowering folded into the layers (``lowering["params_folded_in"]``): an affine op next to a
    factor or a kept-dense conv becomes its bias. The layers' own counts, and the budget, stay the rewrite's — the
    folded ops' constants, gone from the model, were not counted either."""
    if not lowering:
        return
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)
    # weights may also come from Constant nodes (kept-dense convs keep theirs)
    floats = {name: math.prod(t.dims) for name, t in constant_tensors(model).items() if t.data_type in float_types}
    by_name: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        by_name.setdefault(node.name.split("/tt/")[0], []).append(node)
    written = {
        layer.name: sum(floats.get(i, 0) for node in by_name[layer.name] for i in node.input)
        for layer in layers
        if layer.name in by_name
    }
    lowering["params_folded_in"] = sum(
        written[layer.name] - layer.params_after for layer in layers if layer.name in written
    )


def whole_model_totals(original: onnx.ModelProto, written: onnx.ModelProto) -> dict[str, Any]:
    """The whole model's float weights and MACs (:data:`ttgraph.costs.COUNTED_OPS`, at ``original``'s input
    shapes; None where a shape is unknown) before and after: the 1×1 layers' ratios say what the budget bought,
    these what the model as a whole became (the 1×1 convs may hold a fifth of it)."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)
    shapes = {i.name: input_dims(i) for i in graph_inputs(original)}
    out: dict[str, Any] = {}
    for when, model in (("before", original), ("after", written)):
        out[f"params_{when}"] = sum(
            math.prod(t.dims) for t in constant_tensors(model).values() if t.data_type in floats
        )
        if model is written and any(input_dims(i) != shapes.get(i.name) for i in graph_inputs(model)):
            model = onnx.ModelProto()  # the written model kept dynamic dims: count it where the original was
            model.CopyFrom(written)
            set_input_shapes(model, {k: d for k, v in shapes.items() if (d := static_dims(v)) is not None})
        total, unknown = model_macs(model, infer_shapes(model, wanted=_compute_tensors(model)))
        out[f"macs_{when}"] = None if unknown else total
    for key in ("params", "macs"):
        before, after = out[f"{key}_before"], out[f"{key}_after"]
        out[f"{key}_ratio"] = after / before if before and after is not None else None
    return out


def _totals(layers: list[LayerReport]) -> dict[str, Any]:
    def add(key: str) -> int | None:
        values = [getattr(layer, key) for layer in layers]
        return None if any(v is None for v in values) else sum(values)

    totals: dict[str, Any] = {"layers_rewritten": sum(layer.format != "dense" for layer in layers)}
    for key in ("params_before", "params_after", "macs_before", "macs_after"):
        totals[key] = add(key)
    if totals["params_before"]:
        totals["params_ratio"] = totals["params_after"] / totals["params_before"]
    if totals["macs_before"]:
        totals["macs_ratio"] = totals["macs_after"] / totals["macs_before"]
    return totals


PROVENANCE_KEY = "ttgraph"


def _record_provenance(model: onnx.ModelProto, layers: list[LayerReport]) -> None:
    """Write each rewritten layer's format into the model's metadata, so ``ttgraph plan MODEL`` can read
    it back and a second ``compress`` knows the model is already compressed. The layers an earlier run
    wrote (the envelope carries its metadata) stay listed while their factors are still in the graph."""
    from ttgraph import __version__

    keys = ("name", "format", "modes_in", "modes_out", "ranks", "order", "pixels")
    ours = [{k: getattr(layer, k) for k in keys} for layer in layers]
    names = {layer["name"] for layer in ours}
    nodes = [node.name for node in model.graph.node]
    earlier = [
        layer
        for layer in (provenance(model) or {}).get("layers", [])
        if layer["name"] not in names and any(n.startswith(f"{layer['name']}/tt/") for n in nodes)
    ]
    value = {"version": __version__, "layers": earlier + ours}
    kept = [p for p in model.metadata_props if p.key != PROVENANCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(value, separators=(",", ":")))


_PROVENANCE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "format": str,
    "modes_in": list,
    "modes_out": list,
    "ranks": list,
    "order": list,
    "pixels": (int, type(None)),
}


def provenance(model: onnx.ModelProto, source: str = "<model>") -> dict[str, Any] | None:
    """The ttgraph metadata of a compressed model, or None for a model ttgraph did not write. Metadata that
    is not what :func:`_record_provenance` writes (edited by hand, cut short) is a one-line error naming
    ``source``, not a KeyError later."""
    for prop in model.metadata_props:
        if prop.key != PROVENANCE_KEY:
            continue
        where = f"metadata {PROVENANCE_KEY!r}"
        try:
            meta = json.loads(prop.value)
        except ValueError as err:
            raise TTGraphError(source, f"{where} is not valid JSON: {err}") from err
        layers = meta.get("layers") if isinstance(meta, dict) else None
        if not isinstance(layers, list):
            raise TTGraphError(source, f"{where} has no list of layers")
        for i, layer in enumerate(layers):
            bad = [
                k
                for k, kind in _PROVENANCE_FIELDS.items()
                if not isinstance(layer, dict) or not isinstance(layer.get(k, ...), kind)
            ]
            if bad:
                raise TTGraphError(source, f"{where}: layer {i} lacks or mistypes {', '.join(bad)}")
        return meta
    return None


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The edited graph inside the original model's envelope (IR version, opsets, metadata)."""
    return adopt_envelope(export_model(graph, original), original)
