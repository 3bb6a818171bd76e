"""How long the DP contraction planner takes on realistic layers, and what its plans save.

Plans every 1x1 conv of the rapidocr PP-OCRv4 detector (42 layers, shapes read once from
``ch_PP-OCRv4_det_infer.onnx`` at 640x640 input and listed below) as TT layers with d = 2..4 cores
and ranks 4..32, under each cost model, then d = 8 layers. With ``--ort`` it also times, in
onnxruntime, the planned order against the left-to-right order of one layer (both emitted as the
NCHW Reshape/MatMul chain, runs alternated A/B). Prints numbers; asserts nothing.

    python benchmarks/plan_speed.py [--ort]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

from ttgraph.planner import ContractionPlan, left_to_right_plan, plan_layer

# (cin, cout, H, W) of the 42 pointwise convs of ch_PP-OCRv4_det_infer.onnx for a 1x3x640x640 input.
DETECTOR_1X1 = [
    (16, 32, 320, 320), (32, 48, 160, 160), (48, 48, 160, 160), (48, 96, 80, 80), (96, 96, 80, 80),
    (96, 192, 40, 40), (192, 192, 40, 40), (192, 192, 40, 40), (192, 192, 40, 40), (192, 192, 40, 40),
    (192, 48, 1, 1), (48, 192, 1, 1), (192, 384, 20, 20), (384, 96, 1, 1), (96, 384, 1, 1),
    (384, 384, 20, 20), (384, 384, 20, 20), (384, 384, 20, 20), (48, 12, 160, 160), (96, 18, 80, 80),
    (192, 42, 40, 40), (384, 360, 20, 20), (360, 96, 20, 20), (96, 24, 1, 1), (24, 96, 1, 1),
    (42, 96, 40, 40), (96, 24, 1, 1), (24, 96, 1, 1), (18, 96, 80, 80), (96, 24, 1, 1), (24, 96, 1, 1),
    (12, 96, 160, 160), (96, 24, 1, 1), (24, 96, 1, 1), (24, 6, 1, 1), (6, 24, 1, 1), (24, 6, 1, 1),
    (6, 24, 1, 1), (24, 6, 1, 1), (6, 24, 1, 1), (24, 6, 1, 1), (6, 24, 1, 1),
]  # fmt: skip


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out + ([n] if n > 1 else [])


def balanced_modes(n: int, d: int) -> tuple[int, ...]:
    """Split n into d factors as even as possible (largest prime first into the smallest bin)."""
    bins = [1] * d
    for p in sorted(prime_factors(n), reverse=True):
        bins[bins.index(min(bins))] *= p
    return tuple(sorted(bins))


def detector_layers() -> list[tuple[tuple[int, ...], tuple[int, ...], int, int]]:
    """One TT format per detector layer: d cycles 2, 3, 4 (fewer when a channel count has fewer
    prime factors), inner ranks cycle 4, 8, 16, 32."""
    layers = []
    for i, (cin, cout, h, w) in enumerate(DETECTOR_1X1):
        d = min(2 + i % 3, len(prime_factors(cin)), len(prime_factors(cout)))
        d = max(d, 1)
        modes_in = balanced_modes(cin, d)
        modes_out = balanced_modes(cout, d)
        layers.append((modes_in, modes_out, (4, 8, 16, 32)[i % 4], h * w))
    return layers


def time_calls(fn, repeats: int = 5) -> float:
    """Best-of-``repeats`` wall time of ``fn()`` in seconds."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_detector() -> None:
    layers = detector_layers()
    print(f"rapidocr PP-OCRv4 detector: {len(layers)} pointwise layers as TT layers (d = 2..4, ranks 4..32)")
    variants = {
        "flops": {},
        "flops, transpose-free only": {"transpose_free_only": True},
        "flops, no offline merges": {"allow_offline_merges": False},
        "flops, merges charged": {"offline_merge_cost": "charged"},
        "roofline": {"cost": "roofline"},
    }
    for label, kwargs in variants.items():
        per_layer = [
            time_calls(lambda a=layer, k=kwargs: plan_layer(*a[:3], pixels=a[3], **k)) for layer in layers
        ]
        print(
            f"  {label:28s} all layers {sum(per_layer) * 1e3:7.2f} ms   "
            f"max {max(per_layer) * 1e3:6.2f} ms   median {statistics.median(per_layer) * 1e3:6.3f} ms"
        )
    # The order effect alone (no offline merges, transpose-free), on the layers whose TT format has
    # fewer parameters than the dense weight (an allocator would not pick the others).
    planned_macs = l2r_macs = dense_macs = 0
    better = compressing = 0
    for modes_in, modes_out, rank, pixels in layers:
        kwargs = {"pixels": pixels, "transpose_free_only": True, "allow_offline_merges": False}
        plan = plan_layer(modes_in, modes_out, rank, **kwargs)
        if plan.tt_params >= math.prod(modes_in) * math.prod(modes_out):
            continue
        compressing += 1
        l2r = left_to_right_plan(modes_in, modes_out, rank, pixels=pixels)
        planned_macs += plan.total_cost
        l2r_macs += l2r.total_cost
        dense_macs += plan.dense_cost
        better += plan.total_cost < l2r.total_cost
    print(
        f"  MACs of the {compressing} compressing layers, orders without merges: "
        f"planned {planned_macs / 1e6:,.1f} M, "
        f"left-to-right {l2r_macs / 1e6:,.1f} M, dense {dense_macs / 1e6:,.1f} M; "
        f"planned order cheaper on {better}/{compressing}"
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
            seconds = time_calls(
                lambda a=(modes_in, modes_out, ranks), k=kwargs: plan_layer(*a, pixels=6400, **k)
            )
            plan = plan_layer(modes_in, modes_out, ranks, pixels=6400, **kwargs)
            shape = f"{'x'.join(map(str, modes_in)):>15s} -> {'x'.join(map(str, modes_out)):<15s}"
            print(
                f"  {shape} ranks {ranks!s:<28s} {label:8s} {seconds * 1e3:6.2f} ms"
                f"  graph {plan.graph_nodes:3d} nodes {plan.graph_edges:4d} edges"
                f"  cost/dense {plan.runtime_macs / plan.dense_cost:.3f}"
            )


def emit_onnx(plan: ContractionPlan, batch: int, h: int, w: int, seed: int = 0):
    """The NCHW Reshape/MatMul chain of a transpose-free plan as an ONNX model (random cores)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    d, r = len(plan.modes_in), plan.ranks
    cores = [
        rng.standard_normal((r[k], plan.modes_out[k], plan.modes_in[k], r[k + 1])).astype(np.float32) / 4
        for k in range(d)
    ]
    merged = []
    for group in plan.groups or ():
        acc = cores[group[0]]
        for k in group[1:]:
            a, m1, n1, _ = acc.shape
            _, m2, n2, c = cores[k].shape
            acc = np.einsum("aijb,bklc->aikjlc", acc, cores[k]).reshape(a, m1 * m2, n1 * n2, c)
        merged.append(acc)
    nodes, inits, data, lo, hi = [], [], "x", None, None
    for i, (gi, step) in enumerate(zip(plan.order or (), plan.runtime_steps, strict=True)):
        left, out, contracted, right = step.shape
        ra, m, n, rb = merged[gi].shape
        if lo is None:
            matrix = merged[gi].transpose(0, 1, 3, 2).reshape(ra * m * rb, n)
            lo = hi = gi
        elif gi == hi + 1:
            matrix = merged[gi].transpose(1, 3, 0, 2).reshape(m * rb, ra * n)
            hi = gi
        else:
            matrix = merged[gi].reshape(ra * m, n * rb)
            lo = gi
        inits.append(numpy_helper.from_array(np.ascontiguousarray(matrix), f"w{i}"))
        inits.append(numpy_helper.from_array(np.array([batch, left, contracted, right // batch]), f"s{i}"))
        nodes.append(helper.make_node("Reshape", [data, f"s{i}"], [f"r{i}"]))
        nodes.append(helper.make_node("MatMul", [f"w{i}", f"r{i}"], [f"m{i}"]))
        data = f"m{i}"
    cout = math.prod(plan.modes_out)
    inits.append(numpy_helper.from_array(np.array([batch, cout, h, w]), "s_out"))
    nodes.append(helper.make_node("Reshape", [data, "s_out"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "tt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, math.prod(plan.modes_in), h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cout, h, w])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def bench_onnxruntime(rounds: int = 30) -> None:
    import numpy as np
    import onnxruntime as ort

    modes_in, modes_out, rank, h, w = (8, 48), (48, 8), 8, 80, 80
    planned = plan_layer(modes_in, modes_out, rank, pixels=h * w)
    l2r = left_to_right_plan(modes_in, modes_out, rank, pixels=h * w)
    x = np.random.default_rng(1).standard_normal((1, math.prod(modes_in), h, w)).astype(np.float32)
    sessions = {}
    for label, plan in (("planned", planned), ("left-to-right", l2r)):
        model = emit_onnx(plan, 1, h, w)
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
    parser.add_argument(
        "--ort", action="store_true", help="also time planned vs left-to-right in onnxruntime"
    )
    args = parser.parse_args()
    bench_detector()
    bench_eight_cores()
    if args.ort:
        bench_onnxruntime()


if __name__ == "__main__":
    main()
