"""``ttgraph compress MODEL -o OUT``: rewrite the 1×1 convs as TT cores and write the model and its report.

Either a rank rule (``--rank``, ``--rank-ratio``, ``--tolerance``) or a global budget chosen from calibration
data: ``--calib DIR_OR_FILE [--preprocess SPEC] --macs-ratio R`` (or ``--params-ratio R``, ``--latency-ratio R``,
``--max-error E``).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections import Counter
from pathlib import Path

from passes.lower import DEFAULT_PASSES, PASSES
from ttgraph.api import CompressionReport, compress, our_factors
from ttgraph.commands.common import add_input_shape_option, format_table, help_text, log_to_stderr
from ttgraph.costs import human
from ttgraph.errors import TTGraphError
from ttgraph.fidelity import IOU_UNDEFINED, METRIC_LABELS, judged_change, judged_metric, steady_output
from ttgraph.files import check_output_path, distinct_outputs
from ttgraph.model_io import graph_inputs, input_dims, parse_input_shapes, source_files, static_dims
from ttgraph.report_html import (
    LAYER_ERRORS_BEFORE_COMPENSATION,
    as_written_text,
    blank_text,
    far_off,
    held_out,
    whole_model_text,
)
from ttgraph.verify import random_feed


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="rewrite 1×1 convs as TT cores", description=help_text(__doc__))
    p.add_argument("model", help="ONNX model file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the rewritten model")
    add_input_shape_option(p)
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--rank", type=int, help="cap every TT bond rank at R")
    rule.add_argument("--rank-ratio", type=float, help="fraction of full rank in (0, 1]; 1.0 is an exact rewrite")
    rule.add_argument("--tolerance", type=float, help="smallest ranks with relative weight error ≤ E (TT-SVD)")
    p.add_argument(
        "--cores",
        type=int,
        default=1,
        help="TT order d: 1 = low-rank (two 1×1 convs, the default), 2..8 = TT; with a budget, try every d from 1 "
        "to this",
    )
    p.add_argument(
        "--plan-cost",
        choices=("flops", "roofline", "measured"),
        default=None,
        help="cost model the DP planner orders each TT layer's contractions by (as `ttgraph plan --cost`; "
        "default flops; needs --cores ≥ 2: a low-rank pair has one order)",
    )
    budget = p.add_argument_group("budget from calibration data (instead of a rank rule)")
    budget.add_argument(
        "--calib",
        metavar="DIR_OR_FILE",
        help="calibration data: a folder of images (or one image), a .npy (samples on axis 0) or a .npz "
        "(one array per input name: samples on axis 0 as the input's batch, or one feed value per entry of an "
        "extra leading axis for an input without a batch dim)",
    )
    budget.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="how images become inputs: a preset (imagenet, imagenet-bgr, paddleocr-det, paddleocr-cls, "
        "paddleocr-rec, unit, symmetric, raw, caffe) then key=value items, e.g. paddleocr-det,size=640x640 "
        "(keys: size=HxW, channels=rgb|bgr|gray, scale=1/255, mean=a:b:c, std=a:b:c, layout=nchw|nhwc, "
        "resize=stretch|pad; paddleocr-cls/-rec pad, keeping a line's aspect ratio). Without it, images are fed "
        "as RGB pixels / 255 (uint8 inputs: the pixels) with no mean or std: rarely what a third-party model expects",
    )
    budget.add_argument(
        "--holdout",
        default=None,
        metavar="N_OR_FRACTION",
        help="calibration samples set aside for verification: a count (8) or a fraction (0.1, default)",
    )
    budget.add_argument("--macs-ratio", type=float, help="rewritten 1×1 MACs ≤ R × original 1×1 MACs")
    budget.add_argument("--params-ratio", type=float, help="rewritten 1×1 params ≤ R × original 1×1 params")
    budget.add_argument(
        "--latency-ratio",
        type=float,
        help="rewritten 1×1 layers' onnxruntime time ≤ R × the original's, each layer's dense and low-rank forms "
        "measured A/B on this machine (cached in $TTGRAPH_CACHE_DIR, else ~/.cache/ttgraph); a layer whose factors "
        "are not faster stays dense",
    )
    budget.add_argument(
        "--latency-threads", type=int, default=None, help="onnxruntime threads for --latency-ratio timings (default 1)"
    )
    budget.add_argument(
        "--max-error",
        type=float,
        help="every layer's calibration output error ≤ E (alone or with a ratio), as allocated: compensation then "
        "refits the factors to the network's outputs, which can take a layer's own error past E",
    )
    budget.add_argument(
        "--method",
        choices=("data", "weight"),
        default=None,
        help="data: fit to calibration statistics (default); weight: data-free SVD baseline",
    )
    budget.add_argument(
        "--rank-multiple",
        type=int,
        default=None,
        help="low-rank ranks are multiples of this (default 1; 16 suits AVX-512)",
    )
    budget.add_argument(
        "--compensate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refit the compressed layers, in dependency order, to the original layers' outputs given the "
        "compressed network's inputs; kept only if no worse on the held-out samples (default on; "
        "--no-compensate: per-layer fits only)",
    )
    budget.add_argument(
        "--compensate-samples",
        type=int,
        default=None,
        metavar="N",
        help="calibration samples the compensation reads (N spread over them; default: as many as hold 2^25 "
        "input values, at least 8: 28 images at 640×640)",
    )
    budget.add_argument(
        "--sensitivity",
        type=int,
        default=0,
        metavar="N",
        help="weight each layer's error in the allocation by its measured end-to-end effect on the first N "
        "calibration samples (one model run per layer and sample; helps PicoDet-like detectors, off by default)",
    )
    budget.add_argument(
        "--distill",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="then fit the compressed layers' factors to the original model's outputs by gradient descent over the "
        "calibration samples, EPOCHS passes (needs PyTorch: pip install 'torch>=2.2'; the epoch with the "
        "lowest held-out loss is kept, none if no epoch lowers it; default 0 = off)",
    )
    budget.add_argument(
        "--distill-lr",
        type=float,
        metavar="LR",
        help="Adam step size (default 1e-3; divided by ten after each epoch that makes the held-out loss worse)",
    )
    budget.add_argument("--distill-batch", type=int, metavar="N", help="calibration samples per step (default 16)")
    budget.add_argument(
        "--distill-all",
        action="store_true",
        help="distill every conv/matmul weight and bias, not only the compressed layers' factors (costs stay)",
    )
    budget.add_argument(
        "--judge",
        action="append",
        default=None,
        metavar="OUTPUT=METRIC",
        help="judge this model output's held-out fidelity by METRIC: iou, iou@THRESHOLD, top1 (classes on axis 1), "
        "top1@AXIS (top1@-1: a recognizer's N×T×C), match or rel-l2 (repeatable; default: by its shape — an "
        "N×1×H×W map in [0, 1] by IoU at 0.3, N×K scores by top-1, integer or bool outputs by exact match, anything "
        "else by rel L2); the compensation's keep decision (a tie: the rel L2 decides) and the warnings read it",
    )
    budget.add_argument(
        "--html", help="write an HTML report here (the table; with a budget, plots of the calibrated choice too)"
    )
    p.add_argument("--layer", action="append", default=None, help="rewrite only this conv (repeatable)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the onnxruntime smoke check on one random input (made when nothing else verified the model; "
        "a budget's held-out verification stays)",
    )
    lowering = p.add_mutually_exclusive_group()
    lowering.add_argument(
        "--lower",
        metavar="PASSES",
        default=",".join(DEFAULT_PASSES),
        help=f"exact fast-lowering passes run after the rewrite, comma-separated (default: {','.join(DEFAULT_PASSES)})",
    )
    lowering.add_argument("--no-lower", action="store_true", help="run no fast-lowering pass")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars (shown only when stderr is a terminal) and no per-layer table; the summary stays",
    )
    p.set_defaults(func=run)


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars on a terminal only: in a pipeline's log they are carriage-return noise, and a bad input's
    one-line error would not stand alone."""
    return not args.quiet and sys.stderr.isatty()


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _piecewise(comp: dict) -> str:
    """``; 15 of 16 passes from the kept cut, at most 100.0 MiB``: how much of the compensation ran piecewise
    (a pass from the inputs reruns the model up to its level: slow on deep models)."""
    passes, cut = comp.get("passes") or 0, comp.get("passes_from_cut")
    if cut is None or passes < 2:
        return ""
    if not cut:
        return "; every pass ran from the inputs"
    return f"; {cut} of {passes} passes from the kept cut, at most {comp.get('largest_cut_mib')} MiB"


def _end_to_end(ends: dict | None) -> str:
    """``; x IoU 0.9100 → 0.9400 held out`` for each output, by the metric it is judged by, and ``(worse)`` after
    one the step made worse: a model of several outputs can keep a step that helped the others."""
    text = ""
    ends = ends or {}
    for before, after in zip(ends.get("before") or [], ends.get("after") or [], strict=False):
        judged = judged_change(before, after)
        if judged is not None:
            key, sign = judged
            shown = dict.fromkeys([judged_metric(before, after) or key, key])  # a tie, and the error that decided
            text += f"; {before['name']} " + ", ".join(
                f"{METRIC_LABELS[k]} {' → '.join(_apart(before[k], after[k]))}" for k in shown
            )
            text += " held out" + (" (worse)" if sign < 0 else "")
    return text


def _apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` to 4 decimals, or to as many significant digits as tell them apart (up to 8): "rel L2
    0.0007 → 0.0007 held out (worse)" hid the change that decided."""
    x, y = f"{a:.4f}", f"{b:.4f}"
    if x == y:
        x, y = next(((f"{a:.{d}g}", f"{b:.{d}g}") for d in range(3, 9) if f"{a:.{d}g}" != f"{b:.{d}g}"), (x, y))
    return x, y


def _fidelity(out: dict) -> str:
    """One output's line of the verification: ``max |Δ| …, rel L2 …, IoU(>0.3) …``."""
    text = f"max |Δ| {out['max_abs']:.3g}"
    if out.get("max_original") == 0:
        text += " (the original's output is 0 everywhere on these inputs: this compares nothing)"
    if "max_rel" in out:
        text += f", max rel {out['max_rel']:.3g}"
    text += f", rel L2 {out['rel_l2']:.3g}"
    if "top1_agreement" in out:
        axis = f" over axis {out['top1_axis']}" if "top1_axis" in out else ""
        text += f", top-1 agreement{axis} {out['top1_agreement']:.4f}"
    if "match" in out:
        text += f", exact match {out['match']:.4f}"
    if "binary_iou" in out:
        iou = out["binary_iou"]
        text += f", IoU(>{out['iou_threshold']:g}) " + (
            f"n/a ({out.get('binary_iou_undefined', IOU_UNDEFINED[0])})" if iou is None else f"{iou:.4f}"
        )
    return text


def _holdout(text: str) -> int | float:
    """A count written as an integer (8), else a fraction in [0, 1) (0.1), as the library reads an int or a
    float: "1.0" was taken for a count of 1 here and refused as a fraction there."""
    if text.strip().isdigit():
        return int(text)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise TTGraphError("--holdout", f"expected a count (8) or a fraction in [0, 1) (0.1), got {text!r}")
    return value


def _flag(args: argparse.Namespace, key: str) -> str:
    """The flag the user typed for ``key``: ``--no-compensate`` for a compensate of False."""
    return "--no-compensate" if key == "compensate" and args.compensate is False else f"--{key.replace('_', '-')}"


def _go_with(flags: list[str]) -> str:
    """``--a goes with`` / ``--a and --b go with``."""
    if len(flags) == 1:
        return f"{flags[0]} goes with"
    return f"{', '.join(flags[:-1])} and {flags[-1]} go with"


def run(args: argparse.Namespace) -> int:
    budgeted = any(x is not None for x in (args.macs_ratio, args.params_ratio, args.max_error, args.latency_ratio))
    ruled = any(x is not None for x in (args.rank, args.rank_ratio, args.tolerance))
    if budgeted == ruled:
        raise TTGraphError(
            "options",
            "give one rank rule (--rank, --rank-ratio, --tolerance) or a budget "
            "(--macs-ratio, --params-ratio, --latency-ratio, --max-error), not both and not neither",
        )
    # a budget's options beside a rank rule would be dropped without a word (ranks 4 under --rank-multiple 16)
    for_budget = (
        "preprocess",
        "holdout",
        "latency_threads",
        "method",
        "rank_multiple",
        "compensate",
        "compensate_samples",
        "judge",
    )
    given = [_flag(args, key) for key in for_budget if getattr(args, key) is not None]
    if ruled and given:
        raise TTGraphError(given[0], f"{_go_with(given)} a budget (--macs-ratio, --params-ratio, …), not a rank rule")
    # options that only shape distillation, or only read calibration data, would be dropped without it
    for_distill = {
        "--distill-lr": args.distill_lr,
        "--distill-batch": args.distill_batch,
        "--distill-all": args.distill_all,
    }
    given = [flag for flag, value in for_distill.items() if value not in (None, False)]
    if given and not args.distill:
        raise TTGraphError(given[0], f"{_go_with(given)} --distill EPOCHS")
    for_data = ("preprocess", "holdout", "compensate", "compensate_samples", "sensitivity", "judge")
    given = [_flag(args, key) for key in for_data if getattr(args, key) not in (None, 0)]
    if budgeted and args.calib is None and given:
        raise TTGraphError(given[0], f"{_go_with(given)} calibration data (--calib DIR_OR_FILE)")
    # each of these shapes one step only, which the other options given leave out
    # (the default value given explicitly changes nothing: a script passing it always is not refused)
    if args.latency_threads not in (None, 1) and args.latency_ratio is None:
        raise TTGraphError("--latency-threads", "--latency-threads goes with --latency-ratio (it sets its timings)")
    if args.compensate_samples and args.compensate is False:
        raise TTGraphError("--compensate-samples", "--compensate-samples and --no-compensate contradict each other")
    given = [_flag(args, key) for key in ("compensate", "compensate_samples") if getattr(args, key)]
    if args.method == "weight" and given:  # it printed "not compensated" and exited 0
        raise TTGraphError(given[0], f"{_go_with(given)} --method data: compensation refits data-aware factors")
    if args.plan_cost not in (None, "flops") and args.cores == 1:
        raise TTGraphError(
            "--plan-cost",
            "--plan-cost orders TT cores' contractions: it goes with --cores 2 or more (a low-rank pair has one order)",
        )
    defaults = {
        "holdout": "0.1",
        "latency_threads": 1,
        "plan_cost": "flops",
        "method": "data",
        "rank_multiple": 1,
        "distill_lr": 1e-3,
        "distill_batch": 16,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if budgeted and args.calib is None and args.method == "data":
        raise TTGraphError("options", "a budget needs calibration data: --calib DIR_OR_FILE")
    if not budgeted and (args.calib or args.sensitivity or args.distill):
        raise TTGraphError(
            "options",
            "--calib, --sensitivity and --distill go with a budget "
            "(--macs-ratio, --params-ratio, --latency-ratio, --max-error)",
        )
    # Check every output path before any work, so a bad path fails in a second, not after decomposition.
    inputs = source_files(args.model) + _calibration_files(args.calib)
    check_output_path(args.output, inputs)
    distinct_outputs([args.output, args.report, args.html])
    for extra in (args.report, args.html):
        if extra:
            check_output_path(extra, inputs)
    shapes = parse_input_shapes(args.input_shape)
    lower = [] if args.no_lower else [name.strip() for name in args.lower.split(",") if name.strip()]
    unknown = [name for name in lower if name not in PASSES]
    if unknown:
        raise TTGraphError("--lower", f"unknown pass {unknown[0]!r} (known: {', '.join(PASSES)})")
    if _progress(args):
        log_to_stderr("ttgraph.compress")
    if budgeted:
        result = compress(
            args.model,
            cores=args.cores,
            plan_cost=args.plan_cost,
            input_shapes=shapes,
            layers=args.layer,
            progress=_progress(args),
            calibration=args.calib,
            preprocess=args.preprocess,
            holdout=_holdout(args.holdout),
            macs_ratio=args.macs_ratio,
            params_ratio=args.params_ratio,
            max_error=args.max_error,
            method=args.method,
            rank_multiple=args.rank_multiple,
            lower=lower,
            compensate=args.compensate,
            compensate_samples=args.compensate_samples or None,
            sensitivity=args.sensitivity,
            distill=args.distill,
            distill_lr=args.distill_lr,
            distill_batch=args.distill_batch,
            distill_train="all" if args.distill_all else "factors",
            latency_ratio=args.latency_ratio,
            latency_threads=args.latency_threads,
            judge=args.judge,
        )
    else:
        result = compress(
            args.model,
            cores=args.cores,
            plan_cost=args.plan_cost,
            rank=args.rank,
            rank_ratio=args.rank_ratio,
            tolerance=args.tolerance,
            input_shapes=shapes,
            layers=args.layer,
            progress=_progress(args),
            lower=lower,
        )
    if not args.no_verify and result.report.verification is None:
        options = result.report.options
        try:  # a model with dynamic dims is tried at the calibration samples' shape, as its MACs were counted
            feed = random_feed(result.model, shapes=options.get("input_shapes"))
        except TTGraphError:
            feed = None
        if feed is not None:
            at = " at the calibration samples' shape" if options.get("input_shapes_from") == "calibration" else ""
            dims = [input_dims(v) for v in graph_inputs(result.model)]
            assumed = not at and any(static_dims(d) is None for d in dims)  # a dynamic batch, set to 1 here
            try:
                outputs = [e.to_dict() for e in result.verify([feed])]
            except TTGraphError:
                if not assumed:
                    raise
                outputs = None  # a model that cannot run at batch 1 (a Reshape fixing 2): unverified, as before
            if outputs is not None:
                result.report.verification = {
                    "inputs": f"one random input{' at batch 1' if assumed else at}, seed 0 (a smoke test, not an "
                    "accuracy measure)",
                    "outputs": outputs,
                }
    files = [str(p) for p in (args.output, args.report, args.html) if p]
    logging.getLogger("ttgraph.compress").info("writing %s", ", ".join(files))
    result.save(args.output, report_path=args.report, html_path=args.html)
    print(render(result.report, verify_skipped=args.no_verify, table=not args.quiet))
    written = [p for p in (args.report, args.html) if p]
    print(f"wrote {args.output}" + "".join(f" and {p}" for p in written))
    return 0


def _calibration_files(calib: str | None) -> tuple[Path, ...]:
    """The files ``--calib`` names (a file, or every file of a folder): no output may replace one."""
    if not calib:
        return ()
    where = Path(calib)
    if where.is_dir():
        return tuple(p for p in where.rglob("*") if p.is_file())
    return (where,)


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _skip_summary(skipped: list) -> str:
    """``21 skipped (quantized convolution … ×21; inspect lists each)``, reasons grouped with names left out."""
    if not skipped:
        return "the model has no Conv"
    reasons = Counter(re.sub(r"'[^']*'", "'…'", s.reason) for s in skipped).most_common()
    shown = "; ".join(f"{reason} ×{n}" if n > 1 else reason for reason, n in reasons[:3])
    more = f"; {len(reasons) - 3} other reason{'s' * (len(reasons) != 4)}" if len(reasons) > 3 else ""
    return f"{len(skipped)} skipped ({shown}{more}; inspect lists each)"


def render(report: CompressionReport, *, verify_skipped: bool = False, table: bool = True) -> str:
    calibrated = report.calibration is not None
    rows = []
    for layer in report.layers:
        row = [
            layer.name,
            f"{layer.cout}×{layer.cin}",
            layer.format,
            str(layer.cores),
            ",".join(map(str, layer.ranks[1:-1])),
            f"{human(layer.params_before)}→{human(layer.params_after)}",
            f"{human(layer.macs_before)}→{human(layer.macs_after)}",
            f"{layer.weight_error:.2e}",
        ]
        if calibrated:
            row += [_err(layer.calibration_error), _err(layer.heldout_error)]
        rows.append(row)
    header = ["layer", "Cout×Cin", "format", "d", "ranks", "params", "MACs", "weight err"]
    if calibrated:
        header += ["calib err", "held-out err"]
    lines = [format_table(header, rows), ""] if table and rows else []
    if not report.layers:  # an unchanged (only lowered) copy must not read as done
        lines.append(f"no 1×1 conv to rewrite: {_skip_summary(report.skipped)}; only the lowering passes ran")
    t = report.totals
    params = f"{human(t['params_before'])}→{human(t['params_after'])}"
    n = t["layers_rewritten"]
    line = f"{n} layer{'s' * (n != 1)} rewritten; 1×1 params {params}"
    if "params_ratio" in t:
        line += f" ({t['params_ratio']:.3f}×)"
    if "macs_ratio" in t:
        line += f", MACs {human(t['macs_before'])}→{human(t['macs_after'])} ({t['macs_ratio']:.3f}×)"
    written = as_written_text(t, (report.lowering or {}).get("params_folded_in"))
    lines.append(line + (f"; {written}" if written else ""))
    if whole_model_text(t):
        lines.append(f"whole model: {whole_model_text(t)}")
    factors = our_factors(report.skipped)
    if factors:
        lines.append(
            f"the input was compressed by ttgraph before: its {factors} factor convs stay as they are, and the "
            f"figures above (and the budget) cover the {len(report.layers)} other 1×1 convs"
        )
    costlier = [k for k in ("macs_ratio", "params_ratio") if (t.get(k) or 0) > 1]
    if report.allocation is None and costlier:
        worse = " and ".join(f"{k.split('_')[0]} {t[k]:.2f}×" for k in costlier).replace("macs", "MACs")
        lines.append(
            f"note: these ranks cost more than the original 1×1 convs ({worse}): a rank rule does not look at "
            "cost; --calib with --macs-ratio or --params-ratio chooses ranks for a budget"
        )
    if report.allocation is not None and costlier:  # a budget in one metric can cost more in the other
        bounded = {k: v for k, v in (report.allocation.get("budget") or {}).items() if v is not None}
        loose = [k for k in costlier if k not in bounded]
        if loose:
            worse = " and ".join(f"{k.split('_')[0]} {t[k]:.2f}×" for k in loose).replace("macs", "MACs")
            flags = " / ".join(f"--{k.replace('_', '-')}" for k in loose)
            lines.append(
                f"note: the rewritten 1×1 convs cost more than the original's in {worse}: this budget does "
                f"not bound that ({flags} does)"
            )
    if report.options.get("input_shapes_from") == "calibration":
        at = ", ".join(f"{k}={','.join(map(str, v))}" for k, v in report.options["input_shapes"].items())
        lines.append(f"MACs counted at the first calibration sample's size, {at}; the model keeps its dynamic dims")
    notes = [f"  {layer.name}: {layer.note}" for layer in report.layers if layer.note]
    if notes and table:
        lines += ["notes:", *notes]
    elif notes:  # --quiet: the per-layer detail is the table's and the report's
        lines.append(f"{len(notes)} layer note{'s' * (len(notes) != 1)} in the report (and without --quiet)")
    if report.lowering:
        done = [f"{p['pass']} ×{p['count']}" for p in report.lowering["passes"] if p["count"]]
        err = report.lowering.get("max_rel_error")
        unchecked = report.lowering.get("error_check")
        lines.append(
            f"lowering: {', '.join(done) or 'nothing to change'}; nodes {report.lowering['nodes_before']}→"
            f"{report.lowering['nodes_after']}"
            + (
                f"; check {unchecked}"
                if unchecked
                else ""
                if err is None
                else f", max rel. change {err:.2g} on {report.lowering.get('error_input', 'one input')}"
            )
            + (
                f"; {report.lowering['params_folded_in']} params of the folded ops went into the layers' biases"
                " (the ops left the model)"
                if report.lowering.get("params_folded_in")
                else ""
            )
            + (
                "; rolled back (the passes are exact: please report this model)"
                if report.lowering.get("rolled_back")
                else (
                    f" (float rounding here: the original's outputs move {report.lowering['rounding_scale']:.2g} "
                    "when its inputs change by 1e-6)"
                    if report.lowering.get("rounding_scale") is not None
                    else ""
                )
            )
        )
    cal = report.calibration
    if cal:
        lines.append(
            f"calibration: {cal['samples']} sample{'s' * (cal['samples'] != 1)}, {cal['heldout_samples']} held out "
            "for verification "
            f"({cal['source']})"
        )
        names = cal.get("heldout_names") or []
        if names:
            lines.append(
                f"held out: {', '.join(names[:6])}" + (f" and {len(names) - 6} more" if len(names) > 6 else "")
            )
    if report.allocation:
        a = report.allocation
        asked = a.get("budget") or {}
        wanted = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in asked.items() if k != "metric" and v is not None)
        alone = wanted.startswith("max error") and "," not in wanted  # no ratio: each layer's cheapest within it
        how = f" (each layer's cheapest form in {a['metric']} within it)" if alone else ""
        lines.append(
            f"budget {wanted or a['metric']}{how}: {a['layers_compressed']} of {len(report.layers)} layers "
            "compressed; "
            f"objective Σ err² = {a['objective_value']:.4g}"
            + (
                f"; measured 1×1 time {a['latency_ratio']:.3f}× ({a['latency_threads']} thread(s), "
                f"{a.get('latency_measured_on') or 'this machine'})"
                if a.get("latency_ratio") is not None
                else ""
            )
        )
    blank = (report.calibration or {}).get("blank_inputs")
    if blank:
        lines.append(f"warning: {blank_text(blank)}")
    comp = report.compensation
    if comp and not comp.get("applied"):
        lines.append(f"not compensated: {comp.get('reason')}")
    elif comp:
        n, passes = len(comp["layers"]), comp["passes"]
        line = f"compensated {n} layer{'s' * (n != 1)} in {passes} pass{'es' * (passes != 1)}"
        line += f" over {comp['samples']} samples"
        piecewise = _piecewise(comp)
        unchecked = "; not checked: no samples were held out to judge it on" if comp.get("checked") is False else ""
        lines.append(line + f" ({comp['seconds']:.1f} s{piecewise})" + _end_to_end(comp.get("end_to_end")) + unchecked)
        if comp.get("kept") is False:
            lines.append(f"compensation not kept: {comp.get('reason')}")
        elif report.layers and table:  # it explains the table's columns
            lines.append(LAYER_ERRORS_BEFORE_COMPENSATION)
    dist = report.distillation
    if dist and not dist.get("applied"):
        lines.append(f"not distilled: {dist.get('reason')}")
    elif dist:
        line = (
            f"distilled {dist['parameters']} parameters, {dist['epochs']} epoch{'s' * (dist['epochs'] != 1)} over "
            f"{dist['samples']} samples "
            f"({dist['seconds']:.1f} s): held-out loss {_number(dist['heldout_loss_before'])} → "
            f"{_number(dist['heldout_loss_after'])}"
        )
        if dist.get("step_size_reductions"):
            line += f", step size cut tenfold {dist['step_size_reductions']}×"
        if dist["kept"] and dist["best_epoch"] < dist["epochs"]:
            line += f", epoch {dist['best_epoch']} kept"
        per_epoch = ", ".join(_number(v) for v in dist.get("heldout_loss_per_epoch") or [])
        line += (
            _end_to_end(dist.get("end_to_end"))
            if dist["kept"]
            else "; not kept (no better on held-out samples"
            + (f": after each epoch {per_epoch})" if per_epoch else ")")
        )
        lines.append(line)
    if report.verification:
        noisy = report.verification.get("original_under_input_noise") or {}
        moved = {out["name"]: out for out in noisy.get("outputs", [])}
        for out in report.verification["outputs"]:
            judged = f"; judged by --judge {out['judged_by']}" if out.get("judged_by") else ""
            lines.append(f"output {out['name']}: {_fidelity(out)} ({report.verification['inputs']}{judged})")
            if out["name"] in moved:
                lines.append(f"  for scale, the original under {noisy['noise']}: {_fidelity(moved[out['name']])}")
            far = far_off(out, moved.get(out["name"])) if held_out(report) else None  # not on a random smoke test
            if far:
                lines.append(f"  warning: {far}; the model may be broken for its task: check it there before deploying")
            elif held_out(report) and (steady := steady_output(out)):
                lines.append(f"  warning: {steady}")
    elif verify_skipped:
        lines.append("not verified (--no-verify)")
    else:
        lines.append("not verified: the model has dynamic input dims (fix them with --input-shape)")
    return "\n".join(lines)
