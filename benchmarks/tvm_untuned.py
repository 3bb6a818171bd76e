"""Untuned TVM against onnxruntime: what a build without tuning records costs, measured side by side.

Builds an example model for the host (``x86_64`` preset) without any tuning database (TVM's default CPU schedules,
which run on one thread) and times it A/B alternated against the same model in onnxruntime at the same thread
count. Prints the pair-by-pair ratio time(TVM) / time(onnxruntime): the README's "tune before timing" figure.

    python benchmarks/tvm_untuned.py --model det --runs 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from targets.abbench import tvm_factory  # noqa: E402
from ttgraph.bench import onnxruntime_runner, ratio_stats, time_alternated  # noqa: E402
from ttgraph.examples import example_model  # noqa: E402
from ttgraph.model_io import load_model  # noqa: E402

SHAPES = {"det": (1, 3, 640, 640), "cls": (1, 3, 48, 192), "rec": (1, 3, 48, 320)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="det", choices=list(SHAPES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    shape = SHAPES[args.model]
    model: onnx.ModelProto = load_model(example_model(args.model), {"x": shape})
    feed = {"x": np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    with tempfile.TemporaryDirectory(prefix="ttgraph-untuned-") as work:
        factory = tvm_factory("x86_64", workdir=work)  # tune=0: no database, default schedules
        runners = {
            "onnxruntime": onnxruntime_runner(model, feed, args.threads),
            "tvm untuned": factory(model, feed, args.threads),
        }
        times = time_alternated(runners, warmup=1, runs=args.runs)
    stats = ratio_stats(times["tvm untuned"], times["onnxruntime"])
    print(
        f"{args.model} {'x'.join(map(str, shape))}, {args.threads} thread(s), {args.runs} pairs: time(TVM untuned) / "
        f"time(onnxruntime) median {stats['median']:.1f} (p10 {stats['p10']:.1f}, p90 {stats['p90']:.1f})"
    )


if __name__ == "__main__":
    main()
