"""How long the DP contraction planner takes on realistic layers, and what its plans save.

Compresses the rapidocr PP-OCRv4 detector (640x640) with d = 2..4 cores at rank 8 and plans every
TT layer of the result under each cost model, then d = 8 layers. With ``--ort`` it also times, in
onnxruntime, the planned order against the left-to-right order of one layer (both emitted as the
NCHW Reshape/MatMul chain by ttgraph's rewrite pass, runs alternated A/B). Prints numbers; asserts nothing.

    python benchmarks/plan_speed.py [--ort]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from ttgraph.planner import left_to_right_plan, plan_layer


def time_calls(fn, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_detector() -> None:
    """Compress the real detector (d = 2..4, rank 8), then plan every TT layer it holds, as `ttgraph plan` does."""
    import ttgraph
    from ttgraph.examples import example_model, example_shape

    for d in (2, 3, 4):
        result = ttgraph.compress(example_model("det"), cores=d, rank=8, input_shapes={"x": list(example_shape("det"))})
        layers = [layer for layer in result.report.layers if layer.format == "tt"]
        variants = {
            "flops": {},
            "flops, transpose-free, no merges": {"transpose_free_only": True, "allow_offline_merges": False},
            "roofline": {"cost": "roofline"},
        }
        for label, kwargs in variants.items():
            per_layer = [
                time_calls(lambda a=layer, k=kwargs: plan_layer(a.modes_in, a.modes_out, a.ranks, pixels=a.pixels, **k))
                for layer in layers
            ]
            print(
                f"detector d={d}: planning all {len(layers)} TT layers ({label}) {sum(per_layer) * 1e3:7.2f} ms, "
                f"slowest layer {max(per_layer) * 1e3:6.2f} ms"
            )
        planned = sum(layer.macs_after for layer in layers)
        naive = sum(layer.macs_left_to_right for layer in layers)
        print(
            f"detector d={d}: emitted MACs {planned / 1e6:,.1f} M with planned orders, "
            f"{naive / 1e6:,.1f} M left to right"
        )


def bench_eight_cores() -> None:
    print("d = 8 layers (pixels 80x80)")
    cases = [
        ((2,) * 8, (2,) * 8, 8),
        ((4,) * 8, (4,) * 8, 16),
        ((2, 3, 4, 2, 3, 4, 2, 3), (3, 2, 4, 3, 2, 4, 3, 2), 32),
        ((8, 2, 2, 2, 2, 2, 2, 8), (2, 8, 2, 2, 2, 2, 8, 2), (1, 4, 30, 7, 22, 9, 31, 5, 1)),
    ]
    for modes_in, modes_out, ranks in cases:
        for label, kwargs in [
            ("flops", {}),
            ("charged", {"offline_merge_cost": "charged"}),
            ("roofline", {"cost": "roofline"}),
        ]:
            seconds = time_calls(lambda a=(modes_in, modes_out, ranks), k=kwargs: plan_layer(*a, pixels=6400, **k))
            plan = plan_layer(modes_in, modes_out, ranks, pixels=6400, **kwargs)
            shape = f"{'x'.join(map(str, modes_in)):>15s} -> {'x'.join(map(str, modes_out)):<15s}"
            print(
                f"  {shape} ranks {ranks!s:<28s} {label:8s} {seconds * 1e3:6.2f} ms"
                f"  graph {plan.graph_nodes:3d} nodes {plan.graph_edges:4d} edges"
                f"  cost/dense {plan.runtime_macs / plan.dense_cost:.3f}"
            )


def emit_onnx(modes_in, modes_out, rank: int, order, h: int, w: int, seed: int = 0):
    """One 1×1 conv rewritten by ttgraph's own passes as random TT cores contracted in ``order``."""
    import numpy as np
    import onnx_graphsurgeon as gs
    from onnx import TensorProto, helper, numpy_helper

    from passes import FindPointwiseConvs, LayerRewrite, RewriteAsTT
    from ttgraph.tt import TTFormat

    cin, cout = math.prod(modes_in), math.prod(modes_out)
    fmt = TTFormat(tuple(modes_out), tuple(modes_in), (1, *[rank] * (len(modes_in) - 1), 1))
    rng = np.random.default_rng(seed)
    cores = [rng.standard_normal(shape) / 4 for shape in fmt.core_shapes()]
    weight = numpy_helper.from_array(np.zeros((cout, cin, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, h, w])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    ir = gs.import_onnx(model)
    conv = FindPointwiseConvs({"y": (1, cout, h, w)})(ir).candidates[0]
    RewriteAsTT([LayerRewrite(conv, cores, tuple(order))])(ir)
    return gs.export_onnx(ir)


def bench_onnxruntime(rounds: int = 30) -> None:
    import numpy as np
    import onnxruntime as ort

    modes_in, modes_out, rank, h, w = (8, 48), (48, 8), 8, 80, 80
    planned = plan_layer(modes_in, modes_out, rank, pixels=h * w, transpose_free_only=True, allow_offline_merges=False)
    l2r = left_to_right_plan(modes_in, modes_out, rank, pixels=h * w)
    x = np.random.default_rng(1).standard_normal((1, math.prod(modes_in), h, w)).astype(np.float32)
    sessions = {}
    for label, plan in (("planned", planned), ("left-to-right", l2r)):
        order = [plan.groups[i][0] for i in plan.order]
        model = emit_onnx(modes_in, modes_out, rank, order, h, w)
        sessions[label] = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [s.run(None, {"x": x})[0] for s in sessions.values()]
    err = float(np.abs(outs[0] - outs[1]).max() / np.abs(outs[1]).max())
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(rounds):  # A/B alternated
        for label, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"x": x})
            times[label].append(time.perf_counter() - start)
    med = {label: statistics.median(t) for label, t in times.items()}
    print(
        f"onnxruntime, {modes_in} -> {modes_out}, rank {rank}, 1x{math.prod(modes_in)}x{h}x{w}: "
        f"planned order {planned.order} {planned.total_cost / 1e6:.1f} M MACs {med['planned'] * 1e3:.2f} ms, "
        f"left-to-right {l2r.total_cost / 1e6:.1f} M MACs {med['left-to-right'] * 1e3:.2f} ms, "
        f"speed ratio {med['left-to-right'] / med['planned']:.2f}x (MACs ratio "
        f"{l2r.total_cost / planned.total_cost:.2f}x), outputs agree to {err:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ort", action="store_true", help="also time planned vs left-to-right in onnxruntime")
    args = parser.parse_args()
    bench_detector()
    bench_eight_cores()
    if args.ort:
        bench_onnxruntime()


if __name__ == "__main__":
    main()
