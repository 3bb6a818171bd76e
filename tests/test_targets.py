"""Compile real third-party models with TVM for this machine and check them against onnxruntime.

The rapidocr detector, direction classifier and recognizer are Paddle exports with dynamic dims,
Constant-node weights and run-time shape arithmetic; the last two fail TVM's raw ONNX import. The
front end must make all three compile, and the library must reproduce onnxruntime on real inputs.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conv_model
from onnx import TensorProto, helper, numpy_helper
from tvm_helpers import compressed, det_input, line_input, pointwise_model, record, resize_model

from targets.cli import add_parser
from targets.compile import compile_model
from targets.frontend import prepare_for_tvm
from targets.run import onnxruntime_outputs, relative_errors, run_library
from targets.tune import search_setup
from ttgraph.errors import TTGraphError
from ttgraph.examples import example_model

pytestmark = pytest.mark.tvm

X86_TOLERANCE = 1e-4

# name → (model source, feed). Any ONNX model can be added here (e.g. a TT-compressed detector).
X86_CASES: dict[str, Callable[[], tuple[object, dict[str, np.ndarray]]]] = {
    # 320×320 keeps CI time down; the detector is fully convolutional.
    "det": lambda: (example_model("det"), {"x": det_input(320)}),
    "cls": lambda: (example_model("cls"), {"x": line_input("Hello ttgraph 42", 192, rotate=True)}),
    "rec": lambda: (example_model("rec"), {"x": line_input("Tensor Train 2024", 320)}),
    # TT-compressed models, checked against onnxruntime on the compressed ONNX: low-rank Conv pairs (d = 1)
    # and Reshape/MatMul chains (d = 2, ranks from a weight tolerance that keeps the detector's map alive).
    "det-tt1": lambda: (compressed("det", [1, 3, 320, 320], cores=1, rank_ratio=0.5), {"x": det_input(320)}),
    "det-tt2": lambda: (compressed("det", [1, 3, 320, 320], cores=2, tolerance=0.1), {"x": det_input(320)}),
    "cls-tt2": lambda: (
        compressed("cls", [1, 3, 48, 192], cores=2, rank_ratio=0.5),
        {"x": line_input("Hello ttgraph 42", 192, rotate=True)},
    ),
    "rec-tt1": lambda: (
        compressed("rec", [1, 3, 48, 320], cores=1, rank_ratio=0.5),
        {"x": line_input("Tensor Train 2024", 320)},
    ),
}


def compile_and_compare(name: str, model: object, feed: dict[str, np.ndarray], out: Path, tolerance: float):
    """Build for x86_64, run here, compare with onnxruntime on the original model; returns errors."""
    shapes = {k: list(v.shape) for k, v in feed.items()}
    start = time.perf_counter()
    result = compile_model(model, "x86_64", out, shapes)
    build_s = time.perf_counter() - start
    got = run_library(out, feed, names=result.input_names)
    errors = relative_errors(onnxruntime_outputs(model, feed), got)
    record(name, "x86_64", built=True, ran=True, error=max(errors), build_s=build_s)
    assert max(errors) <= tolerance, f"{name}: relative errors {errors} exceed {tolerance}"
    return result, errors


@pytest.mark.parametrize("case", list(X86_CASES))
def test_x86_library_matches_onnxruntime(case, tmp_path):
    model, feed = X86_CASES[case]()
    result, _ = compile_and_compare(case, model, feed, tmp_path / f"{case}.so", X86_TOLERANCE)
    assert result.output.is_file() and result.export_format == ".so"
    assert any(step.startswith("onnxslim") for step in result.frontend_steps)


def test_front_end_makes_an_exporter_style_model_importable(tmp_path):
    """Opset 11, dynamic H×W, Resize with empty roi/scales and run-time sizes, Squeeze with attribute axes."""
    model = resize_model(opset=11)
    feed = {"x": np.random.default_rng(0).standard_normal((1, 2, 6, 5)).astype(np.float32)}
    with pytest.raises(TTGraphError, match=r"dynamic dims \[1,2,\?,\?\].*input_shapes=\{'x': \(1, 2, H, W\)\}"):
        prepare_for_tvm(model)
    prepared = prepare_for_tvm(model, {"x": [1, 2, 6, 5]})
    assert "upgraded opset 11 -> 13" in prepared.steps
    assert any("Resize" in step for step in prepared.steps)
    resize = next(n for n in prepared.model.graph.node if n.op_type == "Resize")
    assert list(resize.input)[1:3] == ["", ""]  # empty roi and scales dropped, sizes kept
    onnx.checker.check_model(prepared.model)
    compile_and_compare("resize-opset11", model, feed, tmp_path / "resize.so", X86_TOLERANCE)


def test_unimportable_model_is_one_line_and_leaves_the_old_output(tmp_path):
    model = pointwise_model()
    model.graph.node[1].op_type = "Mish2"  # not an ONNX op: onnxslim keeps it, TVM's importer refuses it
    out = tmp_path / "m.so"
    out.write_bytes(b"old library")
    with pytest.raises(TTGraphError) as info:
        compile_model(model, "x86_64", out)
    assert "\n" not in info.value.one_line()
    assert out.read_bytes() == b"old library"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.so"]  # no temporary files left


def test_target_tvm_rejects_is_a_one_line_error(tmp_path):
    with pytest.raises(TTGraphError, match="TVM rejects the target"):
        compile_model(pointwise_model(), '{"kind": "no-such-kind"}', tmp_path / "m.so")
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_llvm_does_not_know_is_refused_not_built_generic(tmp_path):
    """TVM only warns about an unknown ``mcpu`` and builds generic code (a typo would lose the phone's tuning)."""
    with pytest.raises(TTGraphError, match="LLVM knows no CPU 'cortex-a67' for aarch64-linux-gnu"):
        compile_model(pointwise_model(), '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a67"}',
                      tmp_path / "m.so")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_a_cpu_feature_llvm_does_not_know_is_refused_not_ignored(tmp_path):
    target = '{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a55", "mattr": ["+dotpord"]}'
    with pytest.raises(TTGraphError, match=r"LLVM knows no CPU feature \+dotpord"):
        compile_model(pointwise_model(), target, tmp_path / "m.so")
    assert list(tmp_path.iterdir()) == []


def test_a_b_timing_of_code_this_machine_cannot_run_needs_the_device(tmp_path):
    from targets.abbench import tvm_factory

    with pytest.raises(TTGraphError, match=r"arm64-linux cannot run here \(it is aarch64-linux-gnu code.*--rpc"):
        tvm_factory("arm64-linux")
    import tvm

    if not tvm.cuda(0).exist:
        with pytest.raises(TTGraphError, match="cuda-sm80 cannot run here .*no GPU"):
            tvm_factory("cuda-sm80")
    tvm_factory("x86_64")  # this machine's own code is fine


def test_compile_cli_writes_the_library(tmp_path, capsys):
    model_path = tmp_path / "pw.onnx"
    onnx.save(pointwise_model(), model_path)
    parser = argparse.ArgumentParser(prog="ttgraph")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "pw.so"
    args = parser.parse_args(
        ["compile", str(model_path), "--target", "x86_64", "-o", str(out), "--input-shape", "x=1,16,16,16"]
    )
    assert args.func(args) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out


def test_tuning_is_bounded_and_reuses_its_database(tmp_path, capsys):
    model = pointwise_model()
    feed = {"x": np.random.default_rng(0).standard_normal((1, 16, 16, 16)).astype(np.float32)}
    db = tmp_path / "db"
    first = compile_model(model, "x86_64", tmp_path / "a.so", tune=4, tune_db=db)
    assert (first.tuned_tasks, first.reused_tasks) == (2, 0)  # conv2d and conv2d+add+relu
    assert capsys.readouterr().out == ""  # MetaSchedule's tables go to its log folder, not to the caller's stdout
    records = (db / "x86_64" / "database_tuning_record.json").read_text().splitlines()
    assert 2 <= len(records) <= 4  # the trial budget bounds the measurements
    start = time.perf_counter()
    second = compile_model(model, "x86_64", tmp_path / "b.so", tune=4, tune_db=db)
    assert (second.tuned_tasks, second.reused_tasks) == (0, 2)
    assert time.perf_counter() - start < 30
    # applying the records without tuning says so (it said nothing, and its JSON 0 of 0 tasks)
    third = compile_model(model, "x86_64", tmp_path / "c.so", tune_db=db)
    assert (third.tune_tasks, third.reused_tasks) == (2, 2)
    assert f"tuning records of 2 of its 2 tasks applied from {db / 'x86_64'}" in third.summary()
    ref = onnxruntime_outputs(model, feed)
    for lib in ("a.so", "b.so", "c.so"):
        assert max(relative_errors(ref, run_library(tmp_path / lib, feed))) <= X86_TOLERANCE


def test_a_trial_budget_below_the_task_count_says_how_many_were_measured(tmp_path, monkeypatch):
    # no tune_db: the records go to ttgraph's cache folder, which $TTGRAPH_CACHE_DIR moves, as it moves the others
    monkeypatch.setenv("TTGRAPH_CACHE_DIR", os.fspath(tmp_path / "cache"))
    result = compile_model(pointwise_model(), "x86_64", tmp_path / "one.so", tune=1)
    assert (result.tuned_tasks, result.reused_tasks) == (1, 0)
    assert ", 1 of 2 tasks measured (0 reused)" in result.summary()
    assert result.tune_db is not None and result.tune_db.is_relative_to(tmp_path / "cache" / "tune-db")
    assert list(result.tune_db.glob("*.json"))
    # a later plain build applies them (it built untuned without a word: hours of tuning lost to a rebuild)
    plain = compile_model(pointwise_model(), "x86_64", tmp_path / "plain.so")
    assert f"tuning records of 1 of its 2 tasks applied from {result.tune_db}" in plain.summary()
    bare = compile_model(pointwise_model(), "x86_64", tmp_path / "bare.so", tune_db=False)
    assert bare.tune_db is None and "untuned: TVM's default CPU schedules run on one thread" in bare.summary()
    with pytest.raises(TTGraphError, match="tune_db=False: tuning keeps its records in a database"):
        compile_model(pointwise_model(), "x86_64", tmp_path / "t.so", tune=1, tune_db=False)
    # another model, whose tasks the records do not cover, is untuned and says so (it read "0 of its 1 tasks")
    other = compile_model(conv_model(8, 4, hw=(6, 6)), "x86_64", tmp_path / "other.so")
    assert (
        "untuned: TVM's default CPU schedules" in other.summary()
        and "holds no records for its tasks" in other.summary()
    )
    # a damaged default database, which nobody asked for, is a plain build with a warning, not an error
    records = result.tune_db / "database_tuning_record.json"
    records.write_bytes(records.read_bytes()[:-20])
    damaged = compile_model(pointwise_model(), "x86_64", tmp_path / "damaged.so")
    assert damaged.tune_db is None and "untuned" in damaged.summary()
    with pytest.raises(TTGraphError, match=r"damaged .* \(or tune_db=False\)"):  # given explicitly, it is an error
        compile_model(pointwise_model(), "x86_64", tmp_path / "e.so", tune_db=tmp_path / "cache" / "tune-db")


def test_a_damaged_tuning_database_is_named(tmp_path):
    db = tmp_path / "db"
    compile_model(pointwise_model(), "x86_64", tmp_path / "a.so", tune=2, tune_db=db)
    records = db / "x86_64" / "database_tuning_record.json"
    records.write_bytes(records.read_bytes()[:-50])  # cut short, as by an interrupted run
    with pytest.raises(TTGraphError, match="tuning database is damaged .* remove its .json files"):
        compile_model(pointwise_model(), "x86_64", tmp_path / "b.so", tune_db=db)


def test_tuning_bounded_by_time_stops_and_keeps_what_it_measured(tmp_path):
    model = pointwise_model()
    feed = {"x": np.random.default_rng(1).standard_normal((1, 16, 16, 16)).astype(np.float32)}
    db = tmp_path / "db"
    # A handler the calling application put on MetaSchedule's logger (unnamed, like pytest's capture handler)
    # used to make tuning fail in TVM's logger set-up; it is set aside while tuning and then restored.
    logger, handler = logging.getLogger("tvm.s_tir.meta_schedule"), logging.NullHandler()
    logger.addHandler(handler)
    try:
        result = compile_model(model, "x86_64", tmp_path / "t.so", tune_db=db, tune_minutes=0.001)
        assert handler in logger.handlers
    finally:
        logger.removeHandler(handler)
    # Time is up after the first measured batch: tuning stops there instead of running unbounded trials.
    assert result.tune_timed_out and result.tuned_tasks >= 1
    records = (db / "x86_64" / "database_tuning_record.json").read_text().splitlines()
    assert 1 <= len(records) <= 2 * 16  # at most one batch per task
    assert "time ran out" in result.summary()
    ref = onnxruntime_outputs(model, feed)
    assert max(relative_errors(ref, run_library(tmp_path / "t.so", feed))) <= X86_TOLERANCE


@pytest.mark.parametrize(
    ("inputs", "tolerance", "needle"),
    [
        ({"x": np.zeros((1, 8, 4, 4), np.int64)}, 1e-3, "inputs: input 'x' is int64, the model expects float32"),
        ({"x": np.full((1, 8, 4, 4), np.nan, np.float32)}, 1e-3, "inputs: input 'x' holds NaN"),
        ({"z": np.zeros((1, 8, 4, 4), np.float32)}, 1e-3, "inputs: a feed needs the model inputs ['x'], got 'z'"),
        (None, -1.0, "tolerance: expected a relative error ≥ 0"),
    ],
)
def test_timing_one_model_on_a_device_checks_its_inputs_before_connecting(tmp_path, inputs, tolerance, needle):
    """Port 1 refuses connections: these must fail on the inputs first, not on the device or after a build."""
    from targets.rpc import bench

    path = tmp_path / "m.onnx"
    onnx.save(conv_model(8, 8, hw=(4, 4)), path)
    with pytest.raises(TTGraphError, match="^" + re.escape(needle)):
        bench(path, "x86_64", rpc="127.0.0.1:1", inputs=inputs, tolerance=tolerance)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("trials", [-5, 10**20])
def test_tuning_trials_out_of_range_are_refused_before_building(tmp_path, trials):
    with pytest.raises(TTGraphError, match=r"^tune: expected a number of trials from 0 to 1000000"):
        compile_model(pointwise_model(), "x86_64", tmp_path / "m.so", tune=trials)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("minutes", [0.0, -1.0, float("nan")])
def test_tuning_time_bound_must_be_positive(tmp_path, minutes):
    with pytest.raises(TTGraphError, match="expected a positive number of minutes"):
        compile_model(pointwise_model(), "x86_64", tmp_path / "m.so", tune_minutes=minutes)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("trials", "minutes", "xgb", "expected"),
    [
        (64, None, True, ("random", "replay-trace")),  # below the learned model's warm-up: sample
        (400, None, True, ("xgb", "evolutionary")),
        (400, None, False, ("random", "replay-trace")),  # no xgboost installed
        (0, 5.0, True, ("random", "replay-trace")),
        (0, 60.0, True, ("xgb", "evolutionary")),
    ],
)
def test_a_learned_cost_model_is_used_only_where_the_budget_pays_for_it(trials, minutes, xgb, expected):
    assert search_setup(trials, minutes, xgb) == expected


def test_a_device_key_without_a_tracker_is_refused(tmp_path, capsys):
    from ttgraph.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(conv_model(8, 8, hw=(4, 4)), path)
    assert main(["compile", str(path), "--key", "phone", "-o", str(tmp_path / "m.so")]) == 2
    assert "--key: names a device registered with a tracker" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_shape_output_is_read_back_and_an_unused_input_is_named(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((8, 4, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Shape", ["c"], ["shape"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1]),
        ],
        [
            helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 8, 8, 8]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [4]),
        ],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = compile_model(model, "x86_64", tmp_path / "m.so")
    assert "unused input(s) 'unused': not arguments of the library's main" in result.summary()
    x = np.random.default_rng(0).standard_normal((1, 4, 8, 8)).astype(np.float32)
    conv, shape = run_library(tmp_path / "m.so", {"x": x}, names=result.input_names)
    np.testing.assert_array_equal(shape, [1, 8, 8, 8])
    np.testing.assert_allclose(conv, np.broadcast_to(x.sum(axis=1, keepdims=True), (1, 8, 8, 8)), rtol=1e-5)


def test_tuning_through_a_tracker_nothing_listens_on_fails_at_once_in_one_line(tmp_path):
    """Found probing: MetaSchedule's runner retried such a tracker without end, printing a thread's traceback every
    minute, and a SIGTERM then read as "TVM could not build it: 15"."""
    import socket

    with socket.socket() as sock:  # a port nothing listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(TTGraphError, match=f"127.0.0.1:{port}: cannot reach the TVM RPC tracker"):
        compile_model(
            pointwise_model(), "x86_64", tmp_path / "m.so", tune=4, tune_tracker=f"127.0.0.1:{port}", tune_key="phone"
        )
    assert time.perf_counter() - start < 30 and list(tmp_path.iterdir()) == []


def test_a_build_tvm_cannot_do_at_the_given_size_names_the_size(tmp_path):
    """The classifier runs in onnxruntime at 8×8, but TVM's passes stop with "Divide by zero" there (its pooling is
    larger than the feature map); without the size in the message nothing pointed at the cause."""
    with pytest.raises(TTGraphError, match=r"TVM could not build it for x86_64 at x 1×3×8×8: .*Divide by zero"):
        compile_model(example_model("cls"), "x86_64", tmp_path / "c.so", {"x": [1, 3, 8, 8]})
    assert list(tmp_path.iterdir()) == []


def test_a_time_bound_beside_a_trial_count_is_kept_on_a_model_of_many_tasks(tmp_path):
    """`--tune 1000 --tune-minutes 0.5` on a detector's 131 tasks ran for minutes: the gradient scheduler
    collects no measured batch — so runs no deadline check — until every task has had its first. Each of these
    six convs is a task of its own; time is up at once, so tuning stops after the first batch it collects."""
    rng = np.random.default_rng(0)
    nodes, inits, current, channels = [], [], "x", 8
    for i, width in enumerate((12, 16, 20, 24, 28, 32)):
        w = (rng.standard_normal((width, channels, 1, 1)) / np.sqrt(channels)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [current, f"w{i}"], [f"c{i}"], name=f"conv{i}"))
        current, channels = f"c{i}", width
    graph = helper.make_graph(
        nodes,
        "six",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, [1, channels, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    db = tmp_path / "db"
    import tempfile

    before = set(Path(tempfile.gettempdir()).iterdir())
    result = compile_model(model, "x86_64", tmp_path / "t.so", tune=600, tune_db=db, tune_minutes=0.001)
    staged = [p for p in set(Path(tempfile.gettempdir()).iterdir()) - before if (p / "tvm_tmp_mod.tar").exists()]
    assert staged == []  # the builder's candidate folders live in a private TMPDIR, removed after tuning
    assert result.tune_timed_out and result.tune_tasks == 6
    assert 1 <= result.tuned_tasks < 6  # stopped before every task had its batch of 600 / 6 = 100
    records = (db / "x86_64" / "database_tuning_record.json").read_text().splitlines()
    assert len(records) <= 2 * 16  # a time-bounded batch is at most 16 candidates


def test_a_device_run_against_an_output_that_is_zero_on_these_inputs_is_inconclusive_not_a_mismatch(tmp_path):
    """The detector's sigmoid map on bench's default random input peaks at 4e-7: float noise over it read
    'MISMATCH' (0.19 relative) for a correct library, where a real page gives 4e-5."""
    from targets.compile import CompileResult
    from targets.rpc import BenchResult, RemoteRun

    compiled = CompileResult(tmp_path / "m.so", "x86_64", {}, "so", {"x": [1]}, {"x": "float32"}, ["map", "n"], [],
                             0, 0, 0)  # fmt: skip
    run = RemoteRun(outputs=[], times_ms=[1.0], number=1, device="cpu via RPC")
    noise = BenchResult(compiled, run, errors=[0.194, 0.0], tolerance=1e-3, output_names=["map", "n"],
                        peaks=[4.1e-7, 3.0])  # fmt: skip
    assert not noise.ok and noise.near_zero == ["map"]
    assert "-> inconclusive: map is ≈0 everywhere (max |ref| 4.1e-07) on these inputs" in noise.summary()
    assert "give real data with --inputs" in noise.summary() and "MISMATCH" not in noise.summary()
    real = BenchResult(compiled, run, errors=[0.194, 0.2], tolerance=1e-3, output_names=["map", "n"],
                       peaks=[4.1e-7, 3.0])  # fmt: skip
    assert "MISMATCH (tolerance 0.001)" in real.summary()  # a real output off too: a mismatch it is
    assert noise.to_dict()["near_zero"] == ["map"] and noise.to_dict()["peaks"] == {"map": 4.1e-7, "n": 3.0}


def test_an_op_tvm_cannot_import_is_named_with_its_nodes(tmp_path):
    """ddddocr's and DeepFilterNet's LSTM/GRU: TVM names op types only, in a model of hundreds of nodes."""
    w = numpy_helper.from_array(np.ones((1, 8, 8), np.float32), "W")
    r = numpy_helper.from_array(np.ones((1, 8, 2), np.float32), "R")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="enc_lstm", hidden_size=2)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w, r],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(TTGraphError, match=r"LSTM \(nodes enc_lstm\): this TVM cannot build them; run it in onnx"):
        compile_model(model, "x86_64", tmp_path / "l.so")
    assert list(tmp_path.iterdir()) == []
