"""Tuned TVM: original vs compressed, each tuned with the same MetaSchedule budget, and the gap to onnxruntime.

Compresses an example model with the calibrated API (as ``benchmarks/speed_suite.py`` does), tunes the original
and the compressed model with ``--trials`` MetaSchedule trials each (separate record folders, so neither inherits
the other's records), builds both for the host (``x86_64`` preset) and times, A/B alternated in one loop:
onnxruntime on the original, TVM tuned original, TVM tuned compressed (and with ``--untuned`` the untuned
builds too). Prints the pair-by-pair speedups and the tuning time each model took.

    python benchmarks/tvm_tuned.py --model cls --trials 256
    python benchmarks/tvm_tuned.py --model det --macs-ratio 0.5 --trials 512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speed_suite import DEFAULT_COUNTS, DEFAULT_RATIOS, images, preprocess  # noqa: E402

from targets.abbench import tvm_factory  # noqa: E402
from ttgraph import compress  # noqa: E402
from ttgraph.bench import feed_for, onnxruntime_runner, ratio_stats, time_alternated, time_stats  # noqa: E402
from ttgraph.examples import example_model, example_shape  # noqa: E402
from ttgraph.model_io import graph_inputs, load_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cls", choices=["cls", "det", "layout"])
    parser.add_argument("--macs-ratio", type=float, help="1×1 MACs budget (default: the speed suite's)")
    parser.add_argument("--trials", type=int, default=256, help="MetaSchedule trials per model (default 256)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--untuned", action="store_true", help="also time the untuned TVM builds")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    name = args.model
    proto = onnx.load(str(example_model(name)))
    input_name = graph_inputs(proto)[0].name
    original = load_model(proto, {input_name: list(example_shape(name))})
    pre = preprocess(name)
    feeds = [{input_name: pre(img)} for img in images(name, "calib", DEFAULT_COUNTS[name][0])]
    ratio = args.macs_ratio or DEFAULT_RATIOS[name]
    compressed = compress(original, calibration=feeds, macs_ratio=ratio, rank_multiple=16, holdout=0).model
    feed = feed_for(original)

    with tempfile.TemporaryDirectory(prefix="ttgraph-tvm-tuned-") as tmp:
        for sub in ("lib", "plain"):
            Path(tmp, sub).mkdir()
        tuned = tvm_factory("x86_64", workdir=Path(tmp, "lib"), tune=args.trials, tune_db=Path(tmp, "db"))
        runners, tuning = {"onnxruntime original": onnxruntime_runner(original, feed, args.threads)}, {}
        for label, model in (("tvm tuned original", original), ("tvm tuned compressed", compressed)):
            start = time.perf_counter()
            runners[label] = tuned(model, feed, args.threads)
            tuning[label] = time.perf_counter() - start
            print(f"{label}: tuned + built in {tuning[label]:.0f} s", flush=True)
        if args.untuned:
            plain = tvm_factory("x86_64", workdir=Path(tmp, "plain"))
            runners["tvm untuned original"] = plain(original, feed, args.threads)
            runners["tvm untuned compressed"] = plain(compressed, feed, args.threads)
        times = time_alternated(runners, warmup=3, runs=args.runs)

    def speedup(ref: str, other: str) -> float:
        return ratio_stats(times[ref], times[other])["median"]

    result = {
        "model": name,
        "macs_ratio": ratio,
        "trials_per_model": args.trials,
        "threads": args.threads,
        "tuning_seconds": {k: round(v, 1) for k, v in tuning.items()},
        "times": {k: time_stats(v) for k, v in times.items()},
        "tvm tuned: compressed vs original": speedup("tvm tuned original", "tvm tuned compressed"),
        "tvm tuned original vs onnxruntime original": speedup("onnxruntime original", "tvm tuned original"),
        "tvm tuned compressed vs onnxruntime original": speedup("onnxruntime original", "tvm tuned compressed"),
    }
    if args.untuned:
        result["tvm untuned: compressed vs original"] = speedup("tvm untuned original", "tvm untuned compressed")
        result["tuning gain on the original"] = speedup("tvm untuned original", "tvm tuned original")
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
