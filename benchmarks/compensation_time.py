"""How long error compensation takes as models get deeper: levels run from the kept frontier (the default) against
every level rerunning both models from the inputs, side by side in one run (A/B alternated).

The models: a residual chain of ``--blocks`` blocks (two 1×1 convs each, ``--channels`` wide at 32×32, a skip
over each block; a level per conv), built with ``onnx.helper``, random weights with a decaying spectrum; and,
with ``--detector``, rapidocr's PP-OCRv4 text detector at 640×640 on the quick start's calibration images
(``tests/calib_material.py``). Each is compressed to half its 1×1 MACs with compensation on; prints the seconds
compensation took each way, their ratio, and how far the fits of the two ways differ (float32 rounding only).

    python benchmarks/compensation_time.py [--blocks 20,80,150] [--channels 64] [--samples 8] [--rounds 2]
                                           [--detector]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttgraph  # noqa: E402
import ttgraph.api as api  # noqa: E402
from ttgraph.compensate import compensate  # noqa: E402
from ttgraph.frontier import FRONTIER_BYTES  # noqa: E402


def residual_chain(blocks: int, channels: int) -> onnx.ModelProto:
    """x → [Conv 1×1 → Relu → Conv 1×1 → Add(skip)] × blocks → y, at 32×32."""
    rng = np.random.default_rng(0)
    spectrum = np.linspace(1.0, 0.05, channels) / np.sqrt(channels)
    nodes, inits, x = [], [], "x"
    for b in range(blocks):
        for k in range(2):
            w = (
                (rng.standard_normal((channels, channels)) * spectrum)
                .astype(np.float32)
                .reshape(channels, channels, 1, 1)
            )
            inits.append(numpy_helper.from_array(w, f"w{b}_{k}"))
        nodes += [
            helper.make_node("Conv", [x, f"w{b}_0"], [f"h{b}"], name=f"conv{b}_0"),
            helper.make_node("Relu", [f"h{b}"], [f"r{b}"]),
            helper.make_node("Conv", [f"r{b}", f"w{b}_1"], [f"o{b}"], name=f"conv{b}_1"),
            helper.make_node("Add", [f"o{b}", x], [f"s{b}"]),
        ]
        x = f"s{b}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 32, 32])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, channels, 32, 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, kwargs, frontier_bytes: int):
    api.run_compensation = functools.partial(compensate, frontier_bytes=frontier_bytes)
    result = ttgraph.compress(model, macs_ratio=0.5, **kwargs)
    comp = result.decomposition.compensation
    return comp.seconds, comp


def compare(name: str, model, kwargs, rounds: int) -> None:
    times: dict[str, list[float]] = {"frontier": [], "from inputs": []}
    fits = {}
    for _ in range(rounds):
        for mode, limit in (("frontier", FRONTIER_BYTES), ("from inputs", 0)):
            seconds, comp = run(model, kwargs, limit)
            times[mode].append(seconds)
            fits[mode] = comp.fits
    a, b = (statistics.median(times[m]) for m in ("frontier", "from inputs"))
    diff = max(
        float(np.abs(fits["frontier"][k].approx - fits["from inputs"][k].approx).max())
        / max(float(np.abs(fits["from inputs"][k].approx).max()), 1e-30)
        for k in fits["frontier"]
    )
    passes = comp.passes
    print(
        f"{name}: {len(fits['frontier'])} layers compensated in {passes} level passes; compensation "
        f"{a:.1f} s from the frontier vs {b:.1f} s from the inputs (medians of {rounds}): {b / a:.2f}× faster; "
        f"fits differ by at most {diff:.1e} of the largest weight"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", default="20,80,150", help="chain depths, comma-separated")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument(
        "--samples",
        type=int,
        default=8,
        help="calibration samples of the chain (2 more held out), and the detector's compensation samples",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--detector", action="store_true", help="also the PP-OCRv4 detector (40 rendered images)")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    for blocks in (int(b) for b in args.blocks.split(",") if b):
        model = residual_chain(blocks, args.channels)
        feeds = [
            {"x": rng.standard_normal((1, args.channels, 32, 32)).astype(np.float32)} for _ in range(args.samples + 2)
        ]
        compare(f"chain of {2 * blocks} convs", model, {"calibration": feeds, "holdout": 2}, args.rounds)
    if args.detector:
        from PIL import Image

        from tests.calib_material import det_image
        from ttgraph.examples import example_model

        with tempfile.TemporaryDirectory() as folder:
            for i in range(40):
                Image.fromarray(det_image("calib", i)).save(Path(folder) / f"img{i:04d}.png")
            kwargs = {
                "calibration": folder,
                "preprocess": "paddleocr-det",
                "holdout": 8,
                "input_shapes": {"x": (1, 3, 640, 640)},
                "compensate_samples": args.samples,  # RESULTS.md's row: 8 (the library's default is now 28)
            }
            compare("PP-OCRv4 detector", example_model("det"), kwargs, args.rounds)


if __name__ == "__main__":
    main()
