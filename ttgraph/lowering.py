"""Fast lowering of a whole model: the exact rewrites of :mod:`passes.lower`, with a report of what each changed
and, when the inputs are static, the measured output error against the model before lowering.

>>> lowered, report = lower_model(onnx.load("det.onnx"))  # doctest: +SKIP
>>> report["passes"][0]  # doctest: +SKIP
{'pass': 'fuse-hardswish', 'count': 24, 'nodes_removed': 48, 'details': []}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from passes import quiet_graphsurgeon
from passes.gs_io import export_model, import_graph
from passes.lower import DEFAULT_PASSES, Lower
from ttgraph.errors import TTGraphError
from ttgraph.model_io import (
    adopt_envelope,
    batch_one,
    check_model,
    fed_initializers,
    graph_inputs,
    input_dims,
    static_dims,
)

ROLLBACK_ERROR = 1e-3  # measured output change (relative to the output's largest value) beyond float rounding
# Where an output is that sensitive to rounding itself, the bar is this many times what a nudge of the float inputs
# by ROUNDING_NUDGE (relative; float32 resolves 6e-8) moves it: the exact passes moved the text detector's output
# by 0.3–1.3 times that (random and rendered inputs, 64–640 px), a wrong pass (every conv weight doubled) by 10⁷.
ROUNDING_NUDGE = 1e-6
ROUNDING_MARGIN = 10


@quiet_graphsurgeon()
def lower_model(
    model: onnx.ModelProto,
    passes: Sequence[str] = DEFAULT_PASSES,
    *,
    check_error: bool = True,
    feed: Mapping[str, Any] | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A lowered copy of ``model`` and the report: per pass what it changed, node counts, and (inputs static,
    ``check_error``) the max relative output error vs ``model`` in onnxruntime on ``feed`` — give a real input:
    the default, one standard-normal input, can sit far from the data and amplify float rounding. A change
    beyond :data:`ROLLBACK_ERROR` that is also beyond what float rounding does to that output at that input
    (:func:`rounding_scale`) returns ``model`` itself, ``rolled_back`` in the report."""
    try:
        lower = Lower(passes)
    except ValueError as err:
        raise TTGraphError("lower", str(err)) from err
    graph = import_graph(_with_shapes(model))
    fed = fed_initializers(model)
    _as_inputs(graph, fed)
    lower(graph)
    exported = export_model(graph, model)
    exported.graph.initializer.extend(i for i in model.graph.initializer if i.name in fed)
    lowered = adopt_envelope(exported, model)
    _input_order(lowered, model)
    check_model(lowered, "<lowered>")
    report: dict[str, Any] = {
        "passes": [r.to_dict() for r in lower.results],
        "nodes_before": len(model.graph.node),
        "nodes_after": len(lowered.graph.node),
        "max_rel_error": None,
        "error_input": "a held-out calibration sample"
        if feed is not None
        else "one standard-normal input"
        + (
            ""
            if feed is not None or all(static_dims(input_dims(v)) is not None for v in graph_inputs(model))
            else " at batch 1"
        ),
    }
    changed = any(r.count for r in lower.results)
    if check_error and changed and not _static(model):  # the report read as if a standard-normal input checked it
        report["error_check"], report["error_input"] = "not measured: the model's input dims are dynamic", None
    if check_error and changed and _static(model):
        from ttgraph.verify import compare_outputs, random_feed

        used = feed or random_feed(model)
        try:
            errors = compare_outputs(model, lowered, [used], "<before lowering>")
        except TTGraphError as err:  # a model onnxruntime cannot run: verification, not lowering, reports that
            report["error_check"] = f"not measured: {err.one_line()}"
        else:
            if all(e.max_original == 0 for e in errors):  # a zero output matches anything zero there: no evidence
                report["error_check"] = f"not informative: every output of the model is 0 on {report['error_input']}"
            report["max_rel_error"] = max((e.max_rel for e in errors), default=0.0)
            if report["max_rel_error"] > ROLLBACK_ERROR:
                scale = rounding_scale(model, used)
                report["rounding_scale"] = max(scale.values(), default=0.0)
                if any(e.max_rel > max(ROLLBACK_ERROR, ROUNDING_MARGIN * scale[e.name]) for e in errors):
                    report["rolled_back"] = True  # the passes are exact: this is a bug, not rounding
                    report["nodes_after"] = report["nodes_before"]
                    return model, report
    return lowered, report


def rounding_scale(model: onnx.ModelProto, feed: Mapping[str, Any]) -> dict[str, float]:
    """Per output, how far ``model``'s own output moves (``max|Δ| / max|y|``) when its float inputs change by
    :data:`ROUNDING_NUDGE` (relative, seeded): the size of float rounding there. Near a saturated sigmoid — an
    input far smaller than the model was trained at, or random — that is percents of the output's largest value
    (the text detector at 64×64 on a random input: 2.4 %), and an exact rewrite, which rounds differently, moves it
    as much; on real data at the model's size, 2e-5."""
    from ttgraph.verify import relative_errors, run_session, session

    rng = np.random.default_rng(0)
    nudged = {}
    for name, value in feed.items():
        a = np.asarray(value)
        nudged[name] = (
            (a * (1 + ROUNDING_NUDGE * rng.standard_normal(a.shape))).astype(a.dtype) if a.dtype.kind == "f" else a
        )
    sess = session(model, name="<before lowering>")
    names = [o.name for o in sess.get_outputs()]
    refs = run_session(sess, names, feed, "<before lowering>")
    gots = run_session(sess, names, nudged, "<before lowering>")
    return dict(zip(names, relative_errors(refs, gots), strict=True))


def _as_inputs(graph: gs.Graph, fed: set[str]) -> None:
    """Initializers a caller may feed become plain graph inputs while the passes run, so none folds them away
    (their defaults are put back after export)."""
    for tensor in list(graph.tensors().values()):
        if isinstance(tensor, gs.Constant) and tensor.name in fed:
            tensor.to_variable(dtype=tensor.dtype, shape=list(tensor.shape))
            tensor.type = "tensor_type"  # what Variable() sets and to_variable() does not (graphsurgeon 0.6)
            graph.inputs.append(tensor)


def _input_order(lowered: onnx.ModelProto, model: onnx.ModelProto) -> None:
    """The graph inputs in the original's order (positional callers rely on it)."""
    rank = {v.name: k for k, v in enumerate(model.graph.input)}
    ordered = sorted(lowered.graph.input, key=lambda v: rank.get(v.name, len(rank)))
    del lowered.graph.input[:]
    lowered.graph.input.extend(ordered)


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with inferred intermediate shapes (some folds need them), or as it is if inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:  # onnx raises several types; the passes then skip what needs a shape
        return model


def _static(model: onnx.ModelProto) -> bool:
    """Whether a random input can be made for every graph input (static dims, or only the batch dynamic: 1)."""
    dims = [input_dims(v) for v in graph_inputs(model)]
    return all(static_dims(d) is not None or batch_one(d) is not None for d in dims)
