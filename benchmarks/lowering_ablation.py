"""What each fast-lowering pass buys on its own, in onnxruntime: the original model against the model after one
pass and after all of them, timed A/B alternated (speedup = pair-by-pair ratio, median and 10th–90th percentile).

    python benchmarks/lowering_ablation.py layout [--threads 1,2] [--runs 15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from passes.lower import DEFAULT_PASSES  # noqa: E402
from ttgraph.bench import compare  # noqa: E402
from ttgraph.examples import EXAMPLES, example_model, example_shape  # noqa: E402
from ttgraph.lowering import lower_model  # noqa: E402
from ttgraph.model_io import graph_inputs, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=sorted(EXAMPLES))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    proto = onnx.load(str(example_model(args.model)))
    model = load_model(proto, {graph_inputs(proto)[0].name: list(example_shape(args.model))})
    models = {"original": model}
    for name in DEFAULT_PASSES:
        lowered, report = lower_model(model, [name])
        models[name] = lowered
        print(
            f"{name}: {report['passes'][0]['count']} changes, nodes {report['nodes_before']}→"
            f"{report['nodes_after']}, max rel. output change {report['max_rel_error']}"
        )
    models["all"] = lower_model(model)[0]
    threads = [int(t) for t in args.threads.split(",")]
    print(compare(models, threads=threads, warmup=args.warmup, runs=args.runs, memory=False).table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
