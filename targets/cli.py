"""The ``compile`` and ``bench`` sub-commands of the ``ttgraph`` CLI.

``add_parser(subparsers)`` registers both (the main CLI's convention); ``add_compile_parser`` and
``add_bench_parser`` register one each. Each sets ``func`` to a ``(args) -> int`` runner; problems the
user can fix are raised as :class:`~ttgraph.errors.TTGraphError` (printed as one line, exit 2).

    ttgraph compile det.onnx --target arm64-linux -o det.so --input-shape x=1,3,640,640
    ttgraph compile --list-targets
    ttgraph bench det.onnx --target arm64-linux --rpc 192.168.1.20:9090 --input-shape x=1,3,640,640
    ttgraph bench det.onnx det.tt.onnx --threads 1,2 --json            # A/B in onnxruntime
    ttgraph bench det.onnx det.tt.onnx --runtime tvm --plot speed.png  # A/B in TVM (local .so)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ttgraph.calibration import UNREADABLE_ARRAY, numpy_reason
from ttgraph.commands.common import log_to_stderr
from ttgraph.errors import TTGraphError
from ttgraph.model_io import parse_input_shapes

from .presets import format_targets, resolve_target


def add_parser(subparsers: Any) -> None:
    """Register ``compile`` and ``bench``."""
    add_compile_parser(subparsers)
    add_bench_parser(subparsers)


def add_compile_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "compile",
        help="compile an ONNX model with TVM for a target preset",
        description="Compile an ONNX model with Apache TVM into a library for a target preset "
        "(see --list-targets) or a TVM target dict given as JSON.",
    )
    p.add_argument("model", nargs="?", help="ONNX model file")
    p.add_argument("--target", "-t", default="x86_64", help="preset name or TVM target JSON (default: x86_64)")
    p.add_argument("-o", "--output", help="library to write (default: ./<model name>.<target>.so or .tar)")
    _add_shape_option(p)
    p.add_argument("--tune", type=int, default=0, metavar="N", help="MetaSchedule trials before building (0: none)")
    p.add_argument(
        "--tune-minutes",
        type=float,
        metavar="M",
        help="stop tuning after about M minutes, keeping what was measured (alone: time is the only bound)",
    )
    p.add_argument(
        "--tracker",
        metavar="HOST:PORT",
        help="measure tuning candidates on the device registered with this TVM RPC tracker (with --key)",
    )
    p.add_argument("--key", help="device key registered with the tracker")
    db = p.add_mutually_exclusive_group()
    db.add_argument(
        "--tune-db",
        metavar="DIR",
        help="tuning database folder, reused across runs: a build applies the records it has for the target, "
        "tuning adds to them (default $TTGRAPH_CACHE_DIR/tune-db, else ~/.cache/ttgraph/tune-db)",
    )
    db.add_argument(
        "--no-tune-db", action="store_true", help="build with TVM's default schedules, applying no tuning records"
    )
    p.add_argument("--list-targets", action="store_true", help="list the target presets and exit")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_compile)
    return p


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="time an original against compressed models (A/B, same runtime), or one model over TVM RPC",
        description="With two or more models: time them A/B alternated in the same runtime (onnxruntime, or "
        "TVM here or over RPC) after warm-up and report each one's speedup over the first, pair by pair "
        "(median and 10th-90th percentile), at each thread count. With one model and --rpc/--tracker: build it "
        "for the target, time it on the device with time_evaluator and compare its outputs with onnxruntime.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="ONNX model files; the first is the reference")
    p.add_argument("--target", "-t", help="preset name or TVM target JSON (TVM runs; default x86_64 for A/B)")
    p.add_argument(
        "--runtime",
        choices=("onnxruntime", "tvm"),
        help="runtime of an A/B comparison (default: onnxruntime; tvm with --rpc/--tracker)",
    )
    p.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: 1 and all cores, or $TTGRAPH_THREADS)"
    )
    p.add_argument("--warmup", type=int, default=3, help="warm-up rounds, not timed (default 3)")
    p.add_argument("--runs", type=int, default=20, help="timed rounds (default 20)")
    p.add_argument("--plot", metavar="PNG", help="write a bar chart of the speedups (matplotlib)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS measurement (onnxruntime)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--rpc", metavar="HOST:PORT", help="address of a TVM RPC server")
    where.add_argument("--tracker", metavar="HOST:PORT", help="address of a TVM RPC tracker (with --key)")
    p.add_argument("--key", help="device key registered with the tracker")
    _add_shape_option(p)
    p.add_argument("--inputs", metavar="NPZ", help="input values (.npz keyed by input name; default: random)")
    p.add_argument(
        "--number", type=int, default=None, help="runs averaged per timing (default 10; one model on a device)"
    )
    p.add_argument("--repeat", type=int, default=None, help="timings taken (default 3; one model on a device)")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max relative error accepted (default 1e-3; one model on a device)",
    )
    p.add_argument("-o", "--output", help="also keep the built library at this path (.so)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run_bench)
    return p


def _add_shape_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=D1,D2,...",
        help="fix an input's shape, e.g. x=1,3,640,640 (repeatable)",
    )


def _default_output(model: str, target: str) -> Path:
    """``<model>.<target><suffix>``: an Android target's ``.so`` when ``$TVM_NDK_CC`` is set to link it (and
    checked like one given with ``-o``), else its ``.tar`` of objects — a set TVM_NDK_CC was ignored for it."""
    preset = resolve_target(target)
    label = preset.name if preset.name != "custom" else "custom"
    suffix = ".so" if preset.ndk and os.environ.get("TVM_NDK_CC") else preset.export_format
    return Path(f"{Path(model).stem}.{label}{suffix}")


def run_compile(args: argparse.Namespace) -> int:
    if args.list_targets:
        print(format_targets())
        return 0
    if not args.model:
        raise TTGraphError("compile", "expected a MODEL to compile (or --list-targets)")
    if args.key and not args.tracker:
        raise TTGraphError("--key", "names a device registered with a tracker: give --tracker HOST:PORT too")
    from .compile import compile_model

    log_to_stderr("ttgraph.targets")
    output = Path(args.output) if args.output else _default_output(args.model, args.target)
    result = compile_model(
        args.model,
        args.target,
        output,
        input_shapes=parse_input_shapes(args.input_shape) or None,
        tune=args.tune,
        tune_db=False if args.no_tune_db else args.tune_db,
        tune_minutes=args.tune_minutes,
        tune_tracker=args.tracker,
        tune_key=args.key,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0


def run_bench(args: argparse.Namespace) -> int:
    if args.tracker and not args.key:
        raise TTGraphError("--tracker", "needs --key KEY (the device key the RPC servers registered)")
    if len(args.models) >= 2:
        return _run_ab(args)
    if not (args.rpc or args.tracker) or not args.target:
        raise TTGraphError(
            "bench", "give a second MODEL to compare with, or --target and --rpc/--tracker to time one on a device"
        )
    from .rpc import bench

    log_to_stderr("ttgraph.targets")
    args.model = args.models[0]
    args.number = 10 if args.number is None else args.number
    args.repeat = 3 if args.repeat is None else args.repeat
    args.tolerance = 1e-3 if args.tolerance is None else args.tolerance
    if args.number < 1 or args.repeat < 1:
        raise TTGraphError("--number", "--number and --repeat must be at least 1")
    inputs = _load_inputs(args.inputs) if args.inputs else None
    result = bench(
        args.model,
        args.target,
        rpc=args.rpc,
        tracker=args.tracker,
        key=args.key,
        input_shapes=parse_input_shapes(args.input_shape) or None,
        inputs=inputs,
        number=args.number,
        repeat=args.repeat,
        tolerance=args.tolerance,
        library=args.output,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.summary())
    return 0 if result.ok else 1


MAX_THREADS = 1024  # beyond any machine's cores; 100000 made onnxruntime hang creating its pool


def _parse_threads(text: str | None) -> list[int]:
    """``--threads``; by default 1 and all cores — or $TTGRAPH_THREADS, the cap a pipeline sets on every
    onnxruntime session ttgraph opens, which bench ignored."""
    from ttgraph.verify import default_threads

    if text is None:
        cores = default_threads() or os.cpu_count() or 1
        if cores > MAX_THREADS:
            raise TTGraphError("TTGRAPH_THREADS", f"bench times at most {MAX_THREADS} threads, got {cores}")
        return [1] if cores == 1 else [1, cores]
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise TTGraphError("--threads", f"expected thread counts like 1,2, got {text!r}")
    if max(values) > MAX_THREADS:
        raise TTGraphError("--threads", f"at most {MAX_THREADS} threads, got {max(values)}")
    return values


def _run_ab(args: argparse.Namespace) -> int:
    from ttgraph.bench import compare

    runtime = args.runtime or ("tvm" if args.rpc or args.tracker else "onnxruntime")
    if runtime == "onnxruntime" and (args.rpc or args.tracker):
        raise TTGraphError("--runtime", "onnxruntime runs here; --rpc/--tracker go with --runtime tvm")
    if args.plot:
        from ttgraph.files import check_output_path

        check_output_path(args.plot, tuple(args.models))
        if Path(args.plot).suffix.lower() != ".png":
            raise TTGraphError(args.plot, "--plot writes a PNG: name it *.png")
    if args.output:
        raise TTGraphError("-o", "keeping the built library goes with timing one model over --rpc; A/B keeps none")
    # options of the other modes would be ignored here, and a result read as what they asked for (an onnxruntime
    # table on x86 under --target arm64-android)
    one_model = [f"--{k}" for k in ("number", "repeat", "tolerance") if getattr(args, k) is not None]
    if one_model:
        raise TTGraphError(
            one_model[0], f"{', '.join(one_model)} go with timing one model on a device; A/B does not use them"
        )
    if args.target and runtime != "tvm":
        raise TTGraphError("--target", "A/B in onnxruntime runs here; a target goes with --runtime tvm")
    if args.key and not args.tracker:
        raise TTGraphError("--key", "goes with --tracker HOST:PORT")
    for path in args.models:
        if not Path(path).is_file():
            raise TTGraphError(path, "no such model file")
    labels = _labels(args.models)
    factory = device = None
    threads = _parse_threads(args.threads)
    if runtime == "tvm":
        from .abbench import tvm_factory

        log_to_stderr("ttgraph.targets")
        session = None
        if args.rpc or args.tracker:
            from .rpc import connect

            session = connect(args.rpc, args.tracker, args.key)
            device = f"{args.target or 'x86_64'} via RPC"
            threads = threads[:1]  # the device's runtime decides its threads
        factory = tvm_factory(args.target or "x86_64", session=session)
    report = compare(
        dict(zip(labels, args.models, strict=True)),
        threads=threads,
        warmup=args.warmup,
        runs=args.runs,
        input_shapes=parse_input_shapes(args.input_shape) or None,
        feed=_load_inputs(args.inputs) if args.inputs else None,
        feed_source=args.inputs,
        runtime=runtime,
        factory=factory,
        device=device,
        memory=not args.no_memory,
    )
    if runtime == "tvm":  # a speedup past the MACs ratio's bound read as the compression's (both untuned)
        report.notes.append(
            "TVM builds untuned: TVM's default schedules, not what tuning (ttgraph compile --tune) would run; "
            "read the speedups as untuned code's"
        )
    if args.plot:
        report.plot(args.plot)
    if args.json:
        print(report.to_json(), end="")
    else:
        print(report.table())
        if args.plot:
            print(f"wrote {args.plot}")
    return 0


def _labels(paths: list[str]) -> list[str]:
    """Short unique labels: the file names, or the paths where names repeat."""
    names = [Path(p).name for p in paths]
    labels = names if len(set(names)) == len(names) else list(paths)
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def _load_inputs(path: str) -> dict[str, np.ndarray]:
    """The ``--inputs`` file: an .npz with one array per model input, keyed by input name."""
    expected = "expected an .npz with one array per model input, keyed by input name (np.savez(path, x=array))"
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            raise TTGraphError(path, f"{expected}, got a single .npy array")
        with data:  # the members are read here, inside the guard: a damaged one is the same one line
            return {name: data[name] for name in data.files}
    except UNREADABLE_ARRAY as err:
        raise TTGraphError(path, f"cannot read inputs: {expected}; {numpy_reason(err)}") from err
