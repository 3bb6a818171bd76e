"""The public library API: inspect a model, compress its 1×1 convs into TT cores, save the result.

The data path reads in one direction: load → find → decompose → plan → rewrite → check → verify.
(Calibration-driven rank allocation plugs in between find and decompose.)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from tqdm.auto import tqdm

from passes.find_pointwise import FindPointwiseConvs, FoundConvs, PointwiseConv, SkippedConv
from passes.rewrite_tt import LayerRewrite, RewriteAsTT
from ttgraph.contraction import contraction_macs, left_to_right, planned_order
from ttgraph.costs import COUNTED_OPS, model_macs
from ttgraph.errors import TTGraphError
from ttgraph.files import check_output_path, write_atomic
from ttgraph.model_io import InputShapes, ModelSource, check_model, load_model, save_model, source_name
from ttgraph.shapes import Shape, infer_shapes
from ttgraph.tt import TTFormat, relative_error, scale_ranks, tt_format, tt_reconstruct, tt_svd
from ttgraph.verify import Feed, OutputError, compare_outputs

MAX_CORES = 8


def _compute_tensors(model: onnx.ModelProto) -> list[str]:
    """Inputs and outputs of the nodes whose MACs we count: their shapes must be known."""
    return [name for n in model.graph.node if n.op_type in COUNTED_OPS for name in (*n.input[:1], *n.output[:1])]


def _analyse(model: onnx.ModelProto) -> tuple[gs.Graph, FoundConvs, dict[str, Shape]]:
    shapes = infer_shapes(model, wanted=_compute_tensors(model))
    graph = gs.import_onnx(model)
    return graph, FindPointwiseConvs(shapes)(graph), shapes


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


@dataclass
class InspectReport:
    """What :func:`inspect` found: rewritable 1×1 convs, skipped convs with reasons, and totals."""

    model: str
    layers: list[CandidateInfo]
    skipped: list[SkippedConv]
    model_macs: int | None
    unknown_macs_nodes: int
    pointwise_macs: int | None
    pointwise_params: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect(model: ModelSource, input_shapes: InputShapes | None = None) -> InspectReport:
    """List a model's 1×1 conv candidates (with MACs and share of the model's MACs) and skipped convs.

    MACs need static spatial sizes: fix dynamic input dims with ``input_shapes``.
    """
    proto = load_model(model, input_shapes)
    _, found, shapes = _analyse(proto)
    total, unknown = model_macs(proto, shapes)
    known = total if total > 0 else None
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


@dataclass
class CompressionReport:
    """Everything :func:`compress` did, JSON-ready via :meth:`to_dict` (stable keys)."""

    model: str
    options: dict[str, Any]
    layers: list[LayerReport]
    skipped: list[SkippedConv]
    totals: dict[str, Any]
    verification: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


@dataclass
class CompressionResult:
    """The rewritten model and its report; :meth:`save` writes both atomically."""

    model: onnx.ModelProto
    report: CompressionReport
    source: ModelSource | None = field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str], report_path: str | os.PathLike[str] | None = None) -> Path:
        """Write the model (and optionally the JSON report); never over the input model."""
        inputs = (self.source,) if isinstance(self.source, str | os.PathLike) else ()
        if report_path is not None:
            check_output_path(report_path, inputs)
        target = save_model(self.model, path, source=self.source)
        if report_path is not None:
            write_atomic(report_path, self.report.to_json().encode())
        return target

    def verify(self, feeds: Iterable[Feed]) -> list[OutputError]:
        """Compare the rewritten model with the original on ``feeds`` (onnxruntime)."""
        if self.source is None:
            raise TTGraphError(None, "this result does not hold its original model")
        original = load_model(self.source, self.report.options.get("input_shapes") or None)
        return compare_outputs(original, self.model, feeds, source_name(self.source))


def choose_format(
    conv: PointwiseConv, cores: int, *, rank: int | None, rank_ratio: float | None, opset: int
) -> tuple[TTFormat, str | None]:
    """The format for one layer: ``cores`` if both channel counts split that way, else the largest d that does.

    Ranks are full unless ``rank`` (a cap) or ``rank_ratio`` (a fraction of full rank) is given.
    """
    note = None
    fmt = None
    for d in range(cores, 0, -1):
        if d >= 2 and opset < 10 and any(s != 1 for s in conv.strides):
            continue  # a strided MatMul chain needs Slice with steps (opset 10)
        fmt = tt_format(conv.cout, conv.cin, d)
        if fmt is not None:
            if d != cores:
                note = (
                    f"Cout={conv.cout}, Cin={conv.cin} cannot both split into {cores} modes ≥ 2; used d={d}"
                )
            break
    assert fmt is not None  # d = 1 always exists
    if rank is not None or rank_ratio is not None:
        fmt = scale_ranks(fmt, rank=rank, ratio=rank_ratio)
    return fmt, note


def compress(
    model: ModelSource,
    *,
    cores: int = 1,
    rank: int | None = None,
    rank_ratio: float | None = None,
    tolerance: float | None = None,
    input_shapes: InputShapes | None = None,
    layers: Sequence[str] | None = None,
    plan_cost: str = "flops",
    verify_feeds: Iterable[Feed] | None = None,
    progress: bool = False,
) -> CompressionResult:
    """Rewrite the model's 1×1 convs as TT cores of order ``cores`` (1 = low-rank, 2..8 = TT-matrix).

    Exactly one rank rule: ``rank`` caps every bond rank, ``rank_ratio`` in (0, 1] scales the full ranks
    (1.0 is an exact rewrite), ``tolerance`` picks the smallest ranks with relative weight error ≤ it.
    ``layers`` restricts the rewrite to the named convs. Each layer is contracted in the order the DP planner
    finds cheapest under ``plan_cost`` ("flops" or "roofline"). ``verify_feeds`` are inputs on which the result is
    compared with the original in onnxruntime (the report's ``verification``).

    >>> result = compress("model.onnx", cores=2, rank_ratio=0.5)  # doctest: +SKIP
    >>> result.save("model.tt.onnx", report_path="report.json")  # doctest: +SKIP
    """
    if sum(x is not None for x in (rank, rank_ratio, tolerance)) != 1:
        raise TTGraphError("options", "choose exactly one of rank, rank_ratio and tolerance")
    if not 1 <= cores <= MAX_CORES:
        raise TTGraphError("options", f"cores must be between 1 and {MAX_CORES}, got {cores}")
    if rank is not None and rank < 1:
        raise TTGraphError("options", f"rank must be ≥ 1, got {rank}")
    if rank_ratio is not None and not 0 < rank_ratio <= 1:
        raise TTGraphError("options", f"rank ratio must be in (0, 1], got {rank_ratio}")
    if tolerance is not None and tolerance < 0:
        raise TTGraphError("options", f"tolerance must be ≥ 0, got {tolerance}")
    name = source_name(model)
    original = load_model(model, input_shapes)
    graph, found, shapes = _analyse(original)
    _skip_our_own_factors(found, provenance(original))
    candidates = found.candidates
    if layers is not None:
        known = {c.label for c in candidates}
        unknown = [label for label in layers if label not in known]
        if unknown:
            raise TTGraphError(name, f"not a rewritable 1×1 conv: {', '.join(unknown)}")
        candidates = [c for c in candidates if c.label in set(layers)]
    opset = int(graph.opset or 13)
    rewrites, reports = [], []
    for conv in tqdm(candidates, desc="decompose", unit="layer", disable=not progress, leave=False):
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
            "input_shapes": {k: list(v) for k, v in (input_shapes or {}).items()},
        },
        layers=reports,
        skipped=found.skipped,
        totals=_totals(reports),
    )
    result = CompressionResult(
        rewritten, report, model if not isinstance(model, onnx.ModelProto) else original
    )
    if verify_feeds is not None:
        errors = compare_outputs(original, rewritten, verify_feeds, name)
        report.verification = {"outputs": [e.to_dict() for e in errors]}
    return result


def _skip_our_own_factors(found: FoundConvs, meta: dict[str, Any] | None) -> None:
    """Compressing a compressed model leaves the factors ttgraph wrote alone (they are 1×1 convs too)."""
    if not meta:
        return
    prefixes = tuple(f"{layer['name']}/tt/" for layer in meta.get("layers", []))
    ours = [c for c in found.candidates if c.node.name.startswith(prefixes)]
    found.candidates = [c for c in found.candidates if c not in ours]
    found.skipped.extend(SkippedConv(c.label, "Conv", "already a TT factor written by ttgraph") for c in ours)


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


def _totals(layers: list[LayerReport]) -> dict[str, Any]:
    def add(key: str) -> int | None:
        values = [getattr(layer, key) for layer in layers]
        return None if any(v is None for v in values) else sum(values)

    totals: dict[str, Any] = {"layers_rewritten": len(layers)}
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
    it back and a second ``compress`` knows the model is already compressed."""
    from ttgraph import __version__

    keys = ("name", "format", "modes_in", "modes_out", "ranks", "order", "pixels")
    value = {"version": __version__, "layers": [{k: getattr(layer, k) for k in keys} for layer in layers]}
    kept = [p for p in model.metadata_props if p.key != PROVENANCE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=PROVENANCE_KEY, value=json.dumps(value, separators=(",", ":")))


def provenance(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The ttgraph metadata of a compressed model, or None for a model ttgraph did not write."""
    for prop in model.metadata_props:
        if prop.key == PROVENANCE_KEY:
            return json.loads(prop.value)
    return None


def _export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The edited graph inside a copy of the original model's envelope (IR version, opsets, metadata)."""
    exported = gs.export_onnx(graph)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    model.graph.CopyFrom(exported.graph)
    if model.ir_version < 4:  # before IR 4 every initializer must also be a graph input
        listed = {i.name for i in model.graph.input}
        for init in model.graph.initializer:
            if init.name not in listed:
                model.graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    return model
