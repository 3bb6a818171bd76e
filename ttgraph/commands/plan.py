"""``ttgraph plan``: the cheapest contraction order of one TT layer, or of every TT layer of a compressed model."""

from __future__ import annotations

import argparse
import json

from ttgraph.api import MAX_CORES, provenance
from ttgraph.commands.common import format_table, help_text
from ttgraph.costs import human
from ttgraph.errors import TTGraphError
from ttgraph.model_io import load_model
from ttgraph.planner import (
    ContractionPlan,
    expand_ranks,
    format_cost,
    format_plan,
    left_to_right_plan,
    plan_layer,
    plan_to_dict,
)
from ttgraph.tt import TTFormat


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="DP-plan the contraction order of TT layers", description=help_text(__doc__))
    p.add_argument("model", nargs="?", help="a model written by `ttgraph compress` (plans all its TT layers)")
    p.add_argument("--cin", type=int, help="input channels of one layer")
    p.add_argument("--cout", type=int, help="output channels of one layer")
    p.add_argument("--modes-in", type=_ints, help="split of Cin, e.g. 16,24")
    p.add_argument("--modes-out", type=_ints, help="split of Cout, e.g. 16,24")
    p.add_argument("--ranks", type=_ints, help="one inner rank for all bonds, the d−1 inner ranks, or all d+1")
    p.add_argument("--hw", help="spatial size HxW of the layer's output (default 1x1)")
    p.add_argument("--batch", type=int, default=None, help="images per run (default 1; one layer only)")
    p.add_argument(
        "--cost", default="flops", choices=["flops", "roofline", "measured"], help="cost model (default flops)"
    )
    p.add_argument("--merges", action="store_true", help="allow offline core-core merges (changes params)")
    p.add_argument("--any-layout", action="store_true", help="allow orders that need a Transpose on NCHW data")
    p.add_argument("--json", action="store_true", help="print JSON (total_cost in MACs under --cost flops)")
    p.set_defaults(func=run)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _pixels(args: argparse.Namespace) -> int:
    try:
        h, w = (int(v) for v in (args.hw or "1x1").lower().split("x"))
    except ValueError:
        raise TTGraphError("--hw", f"expected HxW such as 80x80, got {args.hw!r}") from None
    if h < 1 or w < 1:
        raise TTGraphError("--hw", f"expected a positive HxW such as 80x80, got {args.hw!r}")
    batch = 1 if args.batch is None else args.batch
    if batch < 1:
        raise TTGraphError("--batch", f"expected a positive batch, got {batch}")
    return batch * h * w


def _plan(args: argparse.Namespace, modes_in, modes_out, ranks, pixels: int) -> tuple[ContractionPlan, ContractionPlan]:
    plan = plan_layer(
        modes_in,
        modes_out,
        ranks,
        pixels=pixels,
        cost=args.cost,
        allow_offline_merges=args.merges,
        transpose_free_only=not args.any_layout,
    )
    return plan, left_to_right_plan(modes_in, modes_out, ranks, pixels=pixels, cost=args.cost)


def run(args: argparse.Namespace) -> int:
    if args.model:
        one_layer = ("cin", "cout", "modes_in", "modes_out", "ranks", "hw", "batch")
        given = [f"--{key.replace('_', '-')}" for key in one_layer if getattr(args, key) is not None]
        if given:
            raise TTGraphError(
                given[0],
                "describes one layer, and a MODEL's layers come from its metadata: give either a MODEL or "
                "--modes-in, --modes-out and --ranks, not both",
            )
        return _run_model(args)
    for key in ("cin", "cout"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise TTGraphError(f"--{key}", f"expected a positive channel count, got {getattr(args, key)}")
    if not (args.modes_in and args.modes_out and args.ranks):
        raise TTGraphError("plan", "give a compressed MODEL, or --modes-in, --modes-out and --ranks")
    if args.cin is not None and args.cin != _prod(args.modes_in):
        raise TTGraphError("--modes-in", f"multiply to {_prod(args.modes_in)}, but --cin is {args.cin}")
    if args.cout is not None and args.cout != _prod(args.modes_out):
        raise TTGraphError("--modes-out", f"multiply to {_prod(args.modes_out)}, but --cout is {args.cout}")
    if len(args.modes_in) != len(args.modes_out):
        raise TTGraphError(
            "--modes-in", f"{len(args.modes_in)} modes, --modes-out {len(args.modes_out)}: give as many on each side"
        )
    if len(args.modes_in) > MAX_CORES:  # the DP is exponential in the modes: 24 ran for minutes
        raise TTGraphError("--modes-in", f"at most {MAX_CORES} modes (TT cores), got {len(args.modes_in)}")
    if len(args.modes_in) == 1 and args.ranks not in ([1], [1, 1]):  # one core has no bond: a rank would be dropped
        raise TTGraphError("--ranks", "one mode each side is one core, the dense matrix, with no bond rank to give")
    ranks = args.ranks[0] if len(args.ranks) == 1 else args.ranks
    _check_ranks(args.modes_in, args.modes_out, ranks)
    plan, naive = _plan(args, args.modes_in, args.modes_out, ranks, _pixels(args))
    if args.json:
        data = plan_to_dict(plan)
        data["left_to_right_cost"] = naive.total_cost
        print(json.dumps(data, indent=2))
    else:
        print(format_plan(plan))
        cost = format_cost(naive.total_cost)  # as the plan's table prints costs: MACs whole, seconds not rounded to 0
        print(f"left-to-right order: {cost} ({naive.total_cost / plan.total_cost:.2f}× the plan)")
    return 0


def _check_ranks(modes_in: list[int], modes_out: list[int], ranks: int | list[int]) -> None:
    """A bond rank above the largest useful one (where the TT is already exact) only adds cost: ``compress --rank``
    caps it there, and a plan of it (64 at a bond of 4: 48× the dense MACs) answers a question nobody asks."""
    full = TTFormat(tuple(modes_out), tuple(modes_in), (1,) * (len(modes_in) + 1)).max_ranks()
    given = expand_ranks(ranks, len(modes_in))
    over = [(k, r, m) for k, (r, m) in enumerate(zip(given[1:-1], full[1:-1], strict=True), 1) if r > m]
    if over:
        k, r, m = over[0]
        raise TTGraphError(
            "--ranks", f"bond {k} has rank {r}, above the {m} at which the TT is exact (the mode sizes on either side)"
        )


def _run_model(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    meta = provenance(model, args.model)
    if meta is None:
        raise TTGraphError(args.model, "no ttgraph metadata: plan works on models written by `ttgraph compress`")
    nodes = [node.name for node in model.graph.node]
    for layer in meta["layers"]:
        if layer["format"] != "dense" and not any(n.startswith(f"{layer['name']}/tt/") for n in nodes):
            missing = f"the metadata names layer {layer['name']!r}, whose factors are not in the graph"
            raise TTGraphError(args.model, missing)
    rows, out, unsized = [], [], []
    for layer in meta["layers"]:
        if layer["format"] != "tt":
            continue
        pixels = layer["pixels"] or 1
        if not layer["pixels"]:
            unsized.append(layer["name"])
        plan, naive = _plan(args, layer["modes_in"], layer["modes_out"], layer["ranks"], pixels)
        emitted = [plan.groups[i][0] for i in plan.order] if plan.order and plan.groups else None
        rows.append(
            [
                layer["name"],
                "×".join(map(str, layer["modes_out"])),
                "×".join(map(str, layer["modes_in"])),
                ",".join(map(str, layer["ranks"][1:-1])),
                ",".join(map(str, layer["order"])),
                ",".join(map(str, emitted)) if emitted else "-",
                human(plan.total_cost),
                human(naive.total_cost),
            ]
        )
        out.append(
            {
                "name": layer["name"],
                "emitted_order": layer["order"],
                **plan_to_dict(plan),
                "left_to_right_cost": naive.total_cost,
            }
        )
    if args.json:
        print(json.dumps({"model": args.model, "layers": out}, indent=2))
    else:
        header = ["layer", "modes out", "modes in", "ranks", "emitted", "planned", "cost", "left-to-right"]
        print(format_table(header, rows) if rows else "no TT (d ≥ 2) layers in this model")
        if unsized:  # the order is the same at any size under flops; the costs are per pixel
            n = len(unsized)
            print(f"costs of {n} layer{'s' * (n != 1)} are per output pixel: the model's spatial sizes are dynamic")
    return 0


def _prod(values: list[int]) -> int:
    out = 1
    for v in values:
        out *= v
    return out
