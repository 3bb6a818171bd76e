"""``ttgraph bench``: A/B timing of an original and a compressed model; and the per-layer latency probe."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import conv_model, feed_for

from ttgraph import latency
from ttgraph.api import compress
from ttgraph.cli import main
from ttgraph.errors import TTGraphError


@pytest.fixture
def pair(tmp_path):
    original = conv_model(32, 32, hw=(16, 16), seed=1)
    compressed = compress(original, rank_ratio=0.25).model
    a, b = tmp_path / "orig.onnx", tmp_path / "small.onnx"
    onnx.save(original, a)
    onnx.save(compressed, b)
    return a, b


def test_bench_json_has_ratios_pair_by_pair_for_each_thread_count(pair, tmp_path, capsys):
    a, b = pair
    plot = tmp_path / "speed.png"
    code = main(
        ["bench", str(a), str(b), "--threads", "1,2", "--warmup", "1", "--runs", "5", "--json", "--plot", str(plot)]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "onnxruntime" and list(out["models"]) == ["orig.onnx", "small.onnx"]
    assert [row["threads"] for row in out["results"]] == [1, 2]
    for row in out["results"]:
        assert row["speedup"]["orig.onnx"]["median"] == 1.0  # the reference against itself, pair by pair
        ratio = row["speedup"]["small.onnx"]
        assert ratio["p10"] <= ratio["median"] <= ratio["p90"] and ratio["median"] > 0
        assert row["times"]["small.onnx"]["median_ms"] > 0
    assert all(v is None or v > 10 for v in out["peak_rss_mb"].values())
    assert plot.stat().st_size > 1000


def test_bench_speedup_is_reference_time_over_model_time(pair, tmp_path, capsys):
    """A model with 49× the MACs (7×7 kernel, same shapes) is slower: its speedup over the light reference is
    well below 1, and with the roles swapped the light one's is well above 1."""
    light = pair[0]
    heavy = tmp_path / "heavy.onnx"
    onnx.save(conv_model(32, 32, kernel=7, pads=3, hw=(16, 16), seed=2), heavy)
    speedups = []
    for ref, other in ((light, heavy), (heavy, light)):
        assert main(["bench", str(ref), str(other), "--warmup", "1", "--runs", "7", "--json"]) == 0
        row = json.loads(capsys.readouterr().out)["results"][0]
        speedups.append(row["speedup"][other.name]["median"])
    assert speedups[0] < 0.5 < 2 < speedups[1]


def test_bench_table_names_the_reference_and_the_speedup(pair, capsys):
    a, b = pair
    assert main(["bench", str(a), str(b), "--threads", "1", "--warmup", "0", "--runs", "3", "--no-memory"]) == 0
    out = capsys.readouterr().out
    assert "speedup = time(orig.onnx) / time(model)" in out and "small.onnx" in out and "×" in out


@pytest.mark.parametrize("bad", ["missing", "garbage"])
def test_bench_on_a_bad_file_is_a_one_line_error(pair, tmp_path, capsys, bad):
    a, _ = pair
    path = tmp_path / "bad.onnx"
    if bad == "garbage":
        path.write_bytes(b"this is not a model")
    assert main(["bench", str(a), str(path), "--runs", "2", "--no-memory"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttgraph: error:") and "\n" not in err


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--inputs", "EMPTY"], "empty.npz: cannot read inputs: expected an .npz"),
        (["--inputs", "NOTZIP"], "notzip.npz: cannot read inputs: expected an .npz"),
        (["--plot", "PLOT.txt"], "--plot writes a PNG: name it *.png"),
        (["-o", "lib.so"], "-o: keeping the built library goes with timing one model over --rpc"),
        (["--threads", "100000"], "--threads: at most 1024 threads"),
        (["RENAMED"], "renamed.onnx: inputs ['z'] differ from the reference orig.onnx's ['x']"),
        # other modes' options were ignored, and an onnxruntime table on x86 read as an arm64 measurement
        (["--target", "arm64-android"], "--target: A/B in onnxruntime runs here; a target goes with --runtime tvm"),
        (["--tolerance", "0.5", "--number", "5"], "--number: --number, --tolerance go with timing one model on a"),
        (["--key", "abc"], "--key: goes with --tracker HOST:PORT"),
    ],
)
def test_bench_options_that_cannot_work_are_one_line_errors_before_timing(pair, tmp_path, capsys, extra, needle):
    a, b = pair
    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "notzip.npz").write_bytes(b"PK\x03\x04garbage")
    renamed = onnx.load(b)
    renamed.graph.input[0].name = "z"
    for node in renamed.graph.node:
        node.input[:] = ["z" if n == "x" else n for n in node.input]
    onnx.save(renamed, tmp_path / "renamed.onnx")
    subst = {"EMPTY": "empty.npz", "NOTZIP": "notzip.npz", "PLOT.txt": "plot.txt", "RENAMED": "renamed.onnx"}
    extra = [str(tmp_path / subst[x]) if x in subst else x for x in extra]
    models = [str(a), *(extra if extra[0].endswith(".onnx") else [str(b)])]
    options = [] if extra[0].endswith(".onnx") else extra
    assert main(["bench", *models, "--runs", "2", "--warmup", "0", "--no-memory", *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttgraph: error:") and "\n" not in err and needle in err
    assert not (tmp_path / "plot.txt").exists() and not Path("lib.so").exists()


@pytest.mark.parametrize(
    ("other", "needle"),
    [
        ("bigger", "other.onnx: input 'x' has shape 1×32×16×16, the model expects 1×32×24×24"),
        ("inputs.npy", "inputs.npy: expected an .npz with one array per model input, keyed by input name"),
        ("wrong.npz", "wrong.npz, fed to orig.onnx: input 'x' has shape 1×32×8×8, the model expects 1×32×16×16"),
        ("nan.npz", "nan.npz, fed to orig.onnx: input 'x' holds NaN or infinite values"),
    ],
)
def test_bench_inputs_that_do_not_fit_a_model_are_one_line_errors(pair, tmp_path, capsys, other, needle):
    """Every model runs the same feed; onnxruntime would stop with a traceback on one it cannot take."""
    a, b = pair
    args = ["bench", str(a), str(b), "--runs", "2", "--warmup", "0", "--threads", "1", "--no-memory"]
    if other == "bigger":
        onnx.save(conv_model(32, 32, hw=(24, 24), seed=1), tmp_path / "other.onnx")
        args[2] = str(tmp_path / "other.onnx")
    elif other == "inputs.npy":
        np.save(tmp_path / other, np.zeros((1, 32, 16, 16), np.float32))
        args += ["--inputs", str(tmp_path / other)]
    else:
        shape = (1, 32, 8, 8) if other == "wrong.npz" else (1, 32, 16, 16)
        np.savez(tmp_path / other, x=np.full(shape, np.nan if other == "nan.npz" else 0, np.float32))
        args += ["--inputs", str(tmp_path / other)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttgraph: error:") and "\n" not in err and needle in err, err


def test_bench_of_one_model_without_a_device_is_an_error(pair, capsys):
    assert main(["bench", str(pair[0])]) == 2
    assert "second MODEL" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bench", "compile"])
def test_tvm_commands_without_tvm_give_the_install_hint(pair, tmp_path, command):
    """In a process where ``import tvm`` fails (as without the extra): one line and exit 2, not a traceback."""
    import subprocess
    import sys

    a, b = pair
    blocked = "import sys; sys.modules['tvm'] = None; from ttgraph.cli import main; sys.exit(main(sys.argv[1:]))"
    args = [str(a), str(b), "--runtime", "tvm"] if command == "bench" else [str(a), "-o", str(tmp_path / "m.so")]
    done = subprocess.run([sys.executable, "-c", blocked, command, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "Apache TVM is not installed" in done.stderr and "pip install 'ttgraph[tvm]'" in done.stderr


@pytest.mark.tvm
def test_bench_in_tvm_runs_both_libraries_alternated(pair, capsys):
    a, b = pair
    allowed = os.sched_getaffinity(0)
    assert main(["bench", str(a), str(b), "--runtime", "tvm", "--threads", "1", "--runs", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "tvm" and out["results"][0]["speedup"]["small.onnx"]["median"] > 0
    assert any(note.startswith("TVM builds untuned") for note in out["notes"])  # speedups past the MACs bound
    # TVM's thread pool pins the thread that configures it; what runs next in the process keeps every core
    assert os.sched_getaffinity(0) == allowed


# ------------------------------------------------------------------------------------- latency probe


def test_latency_cache_hit_returns_the_same_value_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    first = latency.lowrank_speedup(32, 32, 8, 8, rank=16, warmup=1, runs=3)
    assert first > 0 and latency.cache_path().is_file()

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(latency, "time_alternated", no_timing)
    assert latency.lowrank_speedup(32, 32, 8, 8, rank=16) == first
    with pytest.raises(AssertionError, match="measured again"):
        latency.lowrank_speedup(32, 32, 8, 8, rank=8)  # another shape is another key


def test_latency_models_compute_the_same_shapes(tmp_path, monkeypatch):
    from ttgraph.bench import feed_for
    from ttgraph.verify import session

    dense, lowrank = latency.pointwise_models(16, 24, 10, 10, rank=8, stride=2)
    feed = feed_for(dense)
    assert session(dense).run(None, feed)[0].shape == session(lowrank).run(None, feed)[0].shape == (1, 24, 5, 5)


def test_latency_sees_a_thin_high_resolution_layer_gain_less_than_a_wide_low_resolution_one(tmp_path, monkeypatch):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    memory_bound = latency.lowrank_speedup(48, 48, 160, 160, rank=24, runs=15)
    compute_bound = latency.lowrank_speedup(384, 384, 20, 20, rank=96, runs=15)
    assert compute_bound > memory_bound


@pytest.mark.tvm
def test_bench_in_tvm_over_rpc_reports_device_side_times(pair, tmp_path, capsys):
    import sys

    from targets.qemu import free_port, serving_process

    a, b = pair
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "tvm.exec.rpc_server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--port-end",
        str(port + 1),
    ]
    with serving_process(cmd, "127.0.0.1", port, log_path=tmp_path / "rpc.log"):
        code = main(["bench", str(a), str(b), "--rpc", f"127.0.0.1:{port}", "--runs", "3", "--warmup", "1", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runtime"] == "tvm" and out["device"].endswith("via RPC")
    assert out["results"][0]["speedup"]["small.onnx"]["median"] > 0


def test_dynamic_dims_are_shown_the_way_input_shape_takes_them():
    from ttgraph.bench import feed_for

    with pytest.raises(TTGraphError, match=r"input 'x' has dynamic dims \[\?,16,\?,\?\]; fix them with input_shapes"):
        feed_for(conv_model(16, 16, batch="n", hw=("h", "w")))


def test_peak_memory_is_the_models_process_not_the_callers():
    """ru_maxrss carries the forking process's high-water mark across exec: a bench process holding 600 MB
    read 600 MB for every model."""
    from ttgraph.bench import peak_rss_mb

    model = conv_model(8, 8, hw=(8, 8))
    alone = peak_rss_mb(model, feed_for(model, [1, 8, 8, 8]))
    ballast = np.ones(600 << 20, np.uint8)  # touched: resident in this process
    beside = peak_rss_mb(model, feed_for(model, [1, 8, 8, 8]))
    del ballast
    assert alone is not None and beside is not None and beside < alone + 100


@pytest.mark.parametrize("name", ["file", "allow_pickle", "x"])
def test_peak_memory_is_measured_whatever_the_inputs_are_called(name):
    """The feed went to np.savez as keywords: an input named "file" was a TypeError out of bench, one named
    "allow_pickle" was taken for numpy's flag and left out, so the model's run failed and memory read n/a."""
    from onnx import TensorProto, helper

    from ttgraph.bench import peak_rss_mb

    graph = helper.make_graph(
        [helper.make_node("Relu", [name], ["y"])],
        "g",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert peak_rss_mb(model, {name: np.ones((1, 4), np.float32)}) is not None


def test_a_dynamic_original_is_benched_at_the_shape_its_fixed_rewrite_has(tmp_path, capsys):
    """`ttgraph bench ORIGINAL COMPRESSED` with a dynamic original and a rewrite fixed by --input-shape asked for
    --input-shape again; the rewrite's shape is the one to time both at. Two dynamic models still need it."""
    dynamic = conv_model(32, 32, hw=("h", "w"), seed=1)
    fixed = compress(dynamic, rank_ratio=0.25, input_shapes={"x": [1, 32, 16, 16]}).model
    a, b = tmp_path / "orig.onnx", tmp_path / "small.onnx"
    onnx.save(dynamic, a)
    onnx.save(fixed, b)
    options = ["--runs", "2", "--warmup", "0", "--threads", "1", "--no-memory", "--json"]
    assert main(["bench", str(a), str(b), *options]) == 0
    assert json.loads(capsys.readouterr().out)["results"]
    assert main(["bench", str(a), str(a), *options]) == 2
    assert "orig.onnx: input 'x' has dynamic dims [1,32,?,?]; fix them with --input-shape" in capsys.readouterr().err


def test_a_model_whose_inputs_differ_from_a_dynamic_reference_is_the_one_named(tmp_path, capsys):
    """The feed comes from the first static model: with a dynamic reference, the odd model's names were given
    as the reference's, and the reference was blamed ("det.onnx: inputs ['x'] differ from the reference
    det.onnx's ['image']")."""
    dynamic = conv_model(8, 8, hw=("h", "w"), seed=1)
    other = conv_model(8, 8, hw=(6, 6), seed=2)
    other.graph.input[0].name = "image"
    for node in other.graph.node:
        node.input[:] = ["image" if n == "x" else n for n in node.input]
    onnx.save(dynamic, tmp_path / "det.onnx")
    onnx.save(other, tmp_path / "layout.onnx")
    code = main(["bench", str(tmp_path / "det.onnx"), str(tmp_path / "layout.onnx"), "--runs", "2", "--no-memory"])
    assert code == 2
    assert "layout.onnx: inputs ['image'] differ from the reference det.onnx's ['x']" in capsys.readouterr().err


@pytest.mark.tvm
def test_a_scalar_input_and_one_nothing_reads_run_in_every_tvm_path(tmp_path, capsys):
    """silero-vad's sample rate is a scalar: every TVM run made it shape (1,) ("expect Tensor with ndim 0"), a
    traceback; an input the model never reads, which compile drops from the library's main, was still passed
    ("main expects 1 arguments") or demanded ("no value for input 'unused'") even when given."""
    import gc
    import sys
    import time

    from onnx import TensorProto, helper, numpy_helper

    from targets.qemu import free_port, serving_process

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Conv", ["xs", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("unused", TensorProto.FLOAT, [1, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [w],
    )
    model = tmp_path / "a.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    copy = tmp_path / "b.onnx"
    copy.write_bytes(model.read_bytes())
    assert main(["bench", str(model), str(copy), "--runtime", "tvm", "--threads", "1", "--runs", "3"]) == 0
    np.savez(
        tmp_path / "in.npz", x=np.ones((1, 4, 8, 8), np.float32), s=np.float32(2.0), unused=np.ones((1, 4), np.float32)
    )
    port = free_port()
    cmd = [sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", str(port), "--port-end",
           str(port + 1)]  # fmt: skip
    log = tmp_path / "rpc.log"
    with serving_process(cmd, "127.0.0.1", port, log_path=log):
        capsys.readouterr()
        gc.disable()  # a session freed only by the collector kept the server busy: the second bench hung in connect
        try:
            for count, given in enumerate(([], ["--inputs", str(tmp_path / "in.npz")]), 1):
                assert main(["bench", str(model), "--target", "x86_64", "--rpc", f"127.0.0.1:{port}", *given]) == 0
                assert "-> ok" in capsys.readouterr().out
                deadline = time.monotonic() + 20
                while log.read_text().count("finish serving") < count and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert log.read_text().count("finish serving") == count, "the session was left open"
        finally:
            gc.enable()


def test_a_table_says_when_its_speedups_span_one_or_rest_on_too_few_rounds():
    """Two copies of one model at 20 rounds read 0.13–9.02 with no flag; --runs 1 printed '1.35× 1.35–1.35'."""
    from ttgraph.bench import BenchReport

    def row(p10: float, median: float, p90: float) -> dict:
        times = {"median_ms": 1.0, "p10_ms": 0.9, "p90_ms": 1.1}
        return {
            "threads": 1,
            "times": {"a": times, "b": times},
            "speedup": {"a": {"median": 1.0, "p10": 1.0, "p90": 1.0}, "b": {"median": median, "p10": p10, "p90": p90}},
        }

    same = BenchReport({"a": "a.onnx", "b": "b.onnx"}, "onnxruntime", 3, 20, [row(0.13, 1.02, 9.02)]).table()
    assert "0.13–9.02 *" in same and "* the pairs' speedups span 1: not reliably faster or slower on this run" in same
    faster = BenchReport({"a": "a.onnx", "b": "b.onnx"}, "onnxruntime", 3, 20, [row(1.4, 1.6, 1.9)]).table()
    assert "*" not in faster and "rounds" in faster.splitlines()[0] and "only" not in faster
    once = BenchReport({"a": "a.onnx", "b": "b.onnx"}, "onnxruntime", 0, 1, [row(1.35, 1.35, 1.35)]).table()
    assert "only 1 round: the p10–p90 spans rest on too few pairs to read (--runs 10 or more)" in once


def test_the_default_thread_counts_follow_ttgraph_threads(monkeypatch):
    """$TTGRAPH_THREADS caps every onnxruntime session ttgraph opens; bench still timed at every core."""
    from targets.cli import _parse_threads

    monkeypatch.setenv("TTGRAPH_THREADS", "3")
    assert _parse_threads(None) == [1, 3] and _parse_threads("2") == [2]  # given explicitly: as given
    monkeypatch.setenv("TTGRAPH_THREADS", "1")
    assert _parse_threads(None) == [1]
    monkeypatch.setenv("TTGRAPH_THREADS", "100000")  # past the cap --threads has (onnxruntime hung there)
    with pytest.raises(TTGraphError, match="TTGRAPH_THREADS: bench times at most 1024 threads, got 100000"):
        _parse_threads(None)


def test_a_model_whose_batch_alone_is_dynamic_is_timed_at_batch_1_and_says_so(tmp_path, capsys):
    """PyTorch's usual export (dynamic batch, fixed image size) was refused: "fix them with --input-shape"."""
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(conv_model(16, 16, batch="n", hw=(6, 6)), a)
    onnx.save(conv_model(16, 16, batch="n", hw=(6, 6)), b)
    assert main(["bench", str(a), str(b), "--threads", "1", "--runs", "2", "--warmup", "0", "--no-memory"]) == 0
    assert "dynamic batch dim set to 1 (x 1×16×6×6; --input-shape to time another)" in capsys.readouterr().out


def test_a_model_that_cannot_run_at_the_assumed_batch_is_named_not_a_traceback(tmp_path, capsys):
    """A Reshape fixing batch 2 behind a dynamic batch: bench set the batch to 1 and printed onnxruntime's
    traceback; compress's smoke test at batch 1 failed the whole command (it had written it, unverified)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    shape = numpy_helper.from_array(np.array([2, 4, 8, 8], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 8, 8])],
        [w, shape],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    out = tmp_path / "o.onnx"
    assert main(["compress", str(model), "-o", str(out), "--rank", "2", "--quiet"]) == 0
    assert "not verified: the model has dynamic input dims" in capsys.readouterr().out and out.exists()
    assert main(["bench", str(model), str(out), "--runs", "2", "--warmup", "0", "--no-memory"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot run on the feed x 1×4×8×8 (dynamic batch dim set to 1" in err
