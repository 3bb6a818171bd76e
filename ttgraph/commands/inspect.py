"""``ttgraph inspect MODEL``: the 1×1 convs a rewrite would touch, their cost, and every conv skipped with why.

The model's MACs, which the 1×1 convs' share is of, are those of its main graph's Conv, ConvTranspose, MatMul,
Gemm, LSTM, GRU, RNN and Einsum nodes (and the quantized convs and matmuls); elementwise ops and ops inside
If/Loop bodies are not counted.
"""

from __future__ import annotations

import argparse
import json

from ttgraph.api import InspectReport, inspect, our_factors
from ttgraph.commands.common import add_input_shape_option, format_table, help_text
from ttgraph.costs import human
from ttgraph.model_io import parse_input_shapes


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list 1×1 conv candidates and skipped convs", description=help_text(__doc__))
    p.add_argument("model", help="ONNX model file")
    add_input_shape_option(p)
    p.add_argument(
        "--json",
        action="store_true",
        help="print JSON (keys: model, layers, skipped, model_macs, unknown_macs_nodes, pointwise_macs, "
        "pointwise_params, input_shapes)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = inspect(args.model, parse_input_shapes(args.input_shape))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0


def render(report: InspectReport) -> str:
    rows = [
        [
            c.name,
            str(c.cin),
            str(c.cout),
            "×".join(map(str, c.stride)),
            "?" if c.input_shape is None else "×".join("?" if d is None else str(d) for d in c.input_shape[2:]),
            human(c.params),
            human(c.macs),
            "?" if c.macs_share is None else f"{100 * c.macs_share:.1f}%",
        ]
        for c in report.layers
    ]
    lines = [
        f"{report.model}: {len(report.layers)} rewritable 1×1 conv{'s' * (len(report.layers) != 1)}, "
        f"{len(report.skipped)} conv{'s' * (len(report.skipped) != 1)} skipped"
        + (
            f" ({our_factors(report.skipped)} of them factors of an earlier ttgraph compress)"
            if our_factors(report.skipped)
            else ""
        ),
        "",
    ]
    lines.append(format_table(["layer", "Cin", "Cout", "stride", "input size", "params", "MACs", "of model"], rows))
    if report.skipped:
        lines += ["", "skipped:"]
        lines.append(format_table(["conv", "op", "reason"], [[s.label, s.op, s.reason] for s in report.skipped]))
    lines.append("")
    share = ""
    if report.pointwise_macs is not None and report.model_macs:
        share = f" ({100 * report.pointwise_macs / report.model_macs:.1f}% of the model's {human(report.model_macs)})"
    lines.append(f"1×1 convs: {human(report.pointwise_params)} params, {human(report.pointwise_macs)} MACs{share}")
    dynamic = any(d is None for dims in report.input_shapes.values() for d in dims)
    if (report.pointwise_macs is None or report.unknown_macs_nodes) and not dynamic:
        at = ", ".join(f"{k}={'×'.join(map(str, v)) or 'scalar'}" for k, v in report.input_shapes.items())
        n = report.unknown_macs_nodes
        lines.append(
            f"note: shape inference could not follow {n or 'some'} compute node{'s' * (n != 1)} at {at}, so MACs "
            "are unknown there: can the model run at these shapes?"
        )
    elif report.pointwise_macs is None:
        lines.append(f"MACs unknown where input dims are dynamic: fix them with {_shape_hint(report)}")
    elif report.unknown_macs_nodes:
        lines.append(
            f"note: {report.unknown_macs_nodes} compute node{'s have' if report.unknown_macs_nodes != 1 else ' has'} "
            f"unknown shapes, so the model's total MACs are unknown: fix dynamic dims with {_shape_hint(report)}"
        )
    elif any(dims and dims[0] is None for dims in report.input_shapes.values()):  # costs.py's rule, said aloud
        lines.append("MACs are per sample: a dynamic batch dim counts as 1")
    return "\n".join(lines)


def _shape_hint(report: InspectReport) -> str:
    """``--input-shape feat=1,1,?,96`` for the inputs with dynamic dims, each ``?`` to be given: the model's own
    inputs, not an image's NAME=1,3,H,W for an audio model."""
    dynamic = {k: v for k, v in report.input_shapes.items() if any(d is None for d in v)}
    if not dynamic:
        return "--input-shape NAME=DIMS"
    given = " ".join(
        f"--input-shape {k}={','.join('?' if d is None else str(d) for d in v)}" for k, v in dynamic.items()
    )
    return f"{given} (a size for each ?)"
