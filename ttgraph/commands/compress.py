"""``ttgraph compress MODEL -o OUT``: rewrite the 1×1 convs as TT cores and write the model and its report."""

from __future__ import annotations

import argparse

from ttgraph.api import CompressionReport, compress
from ttgraph.commands.common import add_input_shape_option, format_table, human
from ttgraph.errors import TTGraphError
from ttgraph.files import check_output_path
from ttgraph.model_io import parse_input_shapes
from ttgraph.verify import random_feed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="rewrite 1×1 convs as TT cores", description=__doc__)
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the rewritten model")
    add_input_shape_option(p)
    rule = p.add_mutually_exclusive_group(required=True)
    rule.add_argument("--rank", type=int, help="cap every TT bond rank at R")
    rule.add_argument(
        "--rank-ratio", type=float, help="fraction of full rank in (0, 1]; 1.0 is an exact rewrite"
    )
    rule.add_argument(
        "--tolerance", type=float, help="smallest ranks with relative weight error ≤ E (TT-SVD)"
    )
    p.add_argument("--cores", type=int, default=1, help="TT order d: 1 = low-rank (two 1×1 convs), 2..8 = TT")
    p.add_argument("--layer", action="append", default=None, help="rewrite only this conv (repeatable)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument(
        "--no-verify", action="store_true", help="skip the onnxruntime comparison on a random input"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Check every output path before any work, so a bad path fails in a second, not after decomposition.
    check_output_path(args.output, (args.model,))
    if args.report:
        check_output_path(args.report, (args.model,))
    shapes = parse_input_shapes(args.input_shape)
    result = compress(
        args.model,
        cores=args.cores,
        rank=args.rank,
        rank_ratio=args.rank_ratio,
        tolerance=args.tolerance,
        input_shapes=shapes,
        layers=args.layer,
        progress=not args.quiet,
    )
    if not args.no_verify:
        try:
            feed = random_feed(result.model)
        except TTGraphError:
            feed = None
        if feed is not None:
            result.report.verification = {
                "inputs": "one standard-normal input, seed 0 (a smoke test, not an accuracy measure)",
                "outputs": [e.to_dict() for e in result.verify([feed])],
            }
    result.save(args.output, report_path=args.report)
    if not args.quiet:
        print(render(result.report))
    print(f"wrote {args.output}" + (f" and {args.report}" if args.report else ""))
    return 0


def render(report: CompressionReport) -> str:
    rows = [
        [
            layer.name,
            f"{layer.cout}×{layer.cin}",
            layer.format,
            str(layer.cores),
            ",".join(map(str, layer.ranks[1:-1])),
            f"{human(layer.params_before)}→{human(layer.params_after)}",
            f"{human(layer.macs_before)}→{human(layer.macs_after)}",
            f"{layer.weight_error:.2e}",
        ]
        for layer in report.layers
    ]
    lines = [
        format_table(["layer", "Cout×Cin", "format", "d", "ranks", "params", "MACs", "weight err"], rows)
    ]
    t = report.totals
    lines.append("")
    params = f"{human(t['params_before'])}→{human(t['params_after'])}"
    line = f"{t['layers_rewritten']} layers rewritten; 1×1 params {params}"
    if "params_ratio" in t:
        line += f" ({t['params_ratio']:.3f}×)"
    if "macs_ratio" in t:
        line += f", MACs {human(t['macs_before'])}→{human(t['macs_after'])} ({t['macs_ratio']:.3f}×)"
    lines.append(line)
    notes = [f"  {layer.name}: {layer.note}" for layer in report.layers if layer.note]
    if notes:
        lines += ["notes:", *notes]
    if report.verification:
        for out in report.verification["outputs"]:
            lines.append(
                f"output {out['name']}: max |Δ| {out['max_abs']:.3g}, max rel {out['max_rel']:.3g}, "
                f"rel L2 {out['rel_l2']:.3g} ({report.verification['inputs']})"
            )
    else:
        lines.append("not verified: the model has dynamic input dims (fix them with --input-shape)")
    return "\n".join(lines)
