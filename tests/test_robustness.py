"""Any ONNX model in, a correct model, a correct skip with its reason, or one clear error out.

The corpus is generated here (no binary blobs in the repo). Every case states its expected outcome.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from tests.conftest import conv_model, feed_for, sha256
from ttgraph.calibration import holdout_indices
from ttgraph.verify import compare_outputs


def cli(*args) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ttgraph", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def model_of(nodes, inputs, outputs, inits=(), opset=17, ir=8) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    return model


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def weight(name, cout, cin, seed=0, dtype=np.float32):
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal((cout, cin, 1, 1)).astype(dtype), name)


# ------------------------------------------------------------------------------------- corrupt files


def test_bit_flipped_models_never_crash_and_never_change_the_input(tmp_path, cls_path):
    """Bits flipped in the graph's structure (the nodes and names serialized before the weights, where a flip
    breaks the model rather than changing a weight): each run either writes a valid model or stops with one
    line naming the file — never a traceback — and the file it read stays as it was."""
    data = cls_path.read_bytes()
    stripped = onnx.load(cls_path)
    del stripped.graph.initializer[:]
    structure = len(stripped.SerializeToString())  # protobuf writes nodes (field 1) before initializers (5)
    errors = 0
    for seed in range(12):
        flipped = bytearray(data)
        rng = np.random.default_rng(seed)
        for pos in rng.integers(0, structure, size=4 + 4 * (seed % 4)):
            flipped[pos] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"flipped{seed}.onnx"
        path.write_bytes(bytes(flipped))
        before = sha256(path)
        out = tmp_path / f"out{seed}.onnx"
        proc = cli("compress", path, "-o", out, "--rank-ratio", "0.5", "--input-shape", "x=1,3,48,192", "--quiet")
        assert proc.returncode in (0, 2), (seed, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, seed
        if proc.returncode == 2:
            errors += 1
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and (lines[0].startswith(f"ttgraph: error: {path}") or "(rewritten)" in lines[0])
            assert not out.exists()
        else:
            onnx.checker.check_model(onnx.load(out))
        assert sha256(path) == before
    assert errors >= 4  # the error path is exercised, not just files whose flips happened to be harmless


# ------------------------------------------------------------------------------------- opsets, dtypes


@pytest.mark.parametrize("opset", range(7, 22))
def test_every_opset_from_7_to_21_is_rewritten_exactly(opset):
    ir = 3 if opset < 8 else (4 if opset < 9 else (5 if opset < 10 else (6 if opset < 11 else 7)))
    model = conv_model(24, 36, stride=2, opset=opset)
    model.ir_version = ir
    if ir < 4:  # IR 3 lists every initializer among the graph inputs
        model.graph.input.extend(
            helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in model.graph.initializer
        )
    onnx.checker.check_model(model)
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    layer = result.report.layers[0]
    assert layer.cores == (2 if opset >= 10 else 1)  # strided MatMul chains need Slice-10
    assert result.model.opset_import[0].version == opset and result.model.ir_version == ir
    assert compare_outputs(model, result.model, [feed_for(model, [1, 24, 9, 10])])[0].max_rel < 1e-5


def test_a_weight_that_is_also_a_graph_input_is_left_alone_and_stays_an_input():
    """From IR 4 an initializer listed among the inputs is a default the caller may feed: not a constant to
    factor, and the written model must still accept it (onnx-graphsurgeon alone drops it from the inputs)."""
    model = conv_model(8, 8, hw=(4, 4))
    model.graph.node.append(helper.make_node("Identity", ["y"], ["y2"], name="copy"))  # something to keep
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    model.graph.input.append(helper.make_tensor_value_info(w.name, w.data_type, w.dims))
    report = ttgraph.inspect(model)
    assert not report.layers and "may be fed at run time" in report.skipped[0].reason
    lowrank = conv_model(8, 8, hw=(4, 4))  # the same conv with a plain constant weight is rewritten
    assert ttgraph.inspect(lowrank).layers
    out = ttgraph.compress(model, rank=2).model
    assert [i.name for i in out.graph.input] == ["x", w.name]
    onnx.checker.check_model(out)


def test_a_weight_holding_nan_is_skipped_with_the_reason():
    model = conv_model(8, 8, hw=(4, 4))
    w = next(t for t in model.graph.initializer if len(t.dims) == 4)
    value = numpy_helper.to_array(w).copy()
    value[0, 0] = np.nan
    w.CopyFrom(numpy_helper.from_array(value, w.name))
    (skipped,) = ttgraph.inspect(model).skipped
    assert "NaN or infinite" in skipped.reason
    assert not ttgraph.compress(model, rank=2).report.layers  # left dense, not an SVD that does not converge


def test_fp16_weights_are_computed_in_float64_and_written_back_as_fp16():
    model = model_of(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [vi("x", [1, 8, 5, 5], TensorProto.FLOAT16)],
        [vi("y", [1, 16, 5, 5], TensorProto.FLOAT16)],
        [weight("w", 16, 8, dtype=np.float16)],
    )
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    floats = {t.data_type for t in result.model.graph.initializer if t.data_type != TensorProto.INT64}
    assert floats == {TensorProto.FLOAT16}
    x = {"x": np.random.default_rng(1).standard_normal((1, 8, 5, 5)).astype(np.float16)}
    assert compare_outputs(model, result.model, [x])[0].max_rel < 5e-3  # fp16 rounding of the factors


def test_bf16_weights_are_skipped_with_a_reason(tmp_path):
    w = np.ones((16, 8, 1, 1), np.float32)
    wt = helper.make_tensor("w", TensorProto.BFLOAT16, w.shape, w.flatten().tolist())
    model = model_of(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        [vi("x", [1, 8, 5, 5], TensorProto.BFLOAT16)],
        [vi("y", [1, 16, 5, 5], TensorProto.BFLOAT16)],
        [wt],
    )
    result = ttgraph.compress(model, rank=2)
    assert result.report.layers == []
    assert "bfloat16" in result.report.skipped[0].reason
    path = tmp_path / "bf16.onnx"
    onnx.save_model(model, path)
    proc = cli("inspect", path, "--json")  # graphsurgeon's warnings must not leak into the JSON on stdout
    assert proc.returncode == 0 and "bfloat16" in json.loads(proc.stdout)["skipped"][0]["reason"]


def test_qlinearconv_and_qdq_convs_are_skipped_with_reasons():
    q = [
        numpy_helper.from_array(np.array(v, dt), n)
        for n, v, dt in [
            ("xs", 0.1, np.float32),
            ("xz", 0, np.uint8),
            ("ws", 0.1, np.float32),
            ("wz", 0, np.int8),
            ("ys", 0.1, np.float32),
            ("yz", 0, np.uint8),
        ]
    ]
    wq = numpy_helper.from_array(np.ones((8, 8, 1, 1), np.int8), "wq")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "wq", "ws", "wz", "ys", "yz"], ["yq"], name="qconv"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["a"]),
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"]),
        helper.make_node("Conv", ["a", "wdq"], ["y"], name="qdq_conv"),
    ]
    model = model_of(nodes, [vi("x", [1, 8, 4, 4])], [vi("y", [1, 8, 4, 4])], [*q, wq])
    onnx.checker.check_model(model)
    report = ttgraph.inspect(model)
    reasons = {s.label: s.reason for s in report.skipped}
    assert report.layers == []
    assert "quantized convolution (QLinearConv)" in reasons["qconv"]
    assert "quantized (QDQ: DequantizeLinear)" in reasons["qdq_conv"]


# ------------------------------------------------------------------------------------- graph shapes


def test_conv_inside_a_loop_body_is_reported_and_the_main_graph_still_rewritten():
    body_conv = conv_model(4, 4).graph
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), *body_conv.node],
        "body",
        [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL)],
        [vi("cond_out", [], TensorProto.BOOL), vi("y", [1, 4, 9, 10])],
        list(body_conv.initializer),
    )
    nodes = [
        helper.make_node("Loop", ["n", "keep_going"], ["scan_y"], name="loop", body=body),
        helper.make_node("Conv", ["x", "w2"], ["z"], name="outer"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2, np.int64), "n"),
        numpy_helper.from_array(np.array(True), "keep_going"),
        weight("w2", 6, 4),
    ]
    model = model_of(nodes, [vi("x", [1, 4, 9, 10])], [vi("scan_y", [2, 1, 4, 9, 10]), vi("z", [1, 6, 9, 10])], inits)
    result = ttgraph.compress(model, rank_ratio=1.0)
    assert [layer.name for layer in result.report.layers] == ["outer"]
    assert any("inside a subgraph of Loop node 'loop'" in s.reason for s in result.report.skipped)
    onnx.checker.check_model(result.model, full_check=True)


def test_multiple_inputs_outputs_duplicate_and_empty_names_and_a_conv_output_that_is_a_graph_output():
    nodes = [
        helper.make_node("Conv", ["x1", "w1"], ["a"], name="dup"),
        helper.make_node("Conv", ["x2", "w2"], ["b"], name="dup"),
        helper.make_node("Conv", ["a", "w3"], ["c"], name=""),
        helper.make_node("Add", ["b", "c"], ["y"], name="add"),
    ]
    inits = [weight("w1", 12, 8, 1), weight("w2", 12, 6, 2), weight("w3", 12, 12, 3)]
    model = model_of(
        nodes, [vi("x1", [2, 8, 5, 5]), vi("x2", [2, 6, 5, 5])], [vi("y", [2, 12, 5, 5]), vi("a", [2, 12, 5, 5])], inits
    )
    onnx.checker.check_model(model)
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    labels = [layer.name for layer in result.report.layers]
    assert labels == ["dup", "dup#1", "Conv@c"]
    names = [n.name for n in result.model.graph.node]
    assert len(names) == len(set(names))
    assert [o.name for o in result.model.graph.output] == ["y", "a"]
    rng = np.random.default_rng(5)
    feed = {
        "x1": rng.standard_normal((2, 8, 5, 5)).astype(np.float32),
        "x2": rng.standard_normal((2, 6, 5, 5)).astype(np.float32),
    }
    unique = onnx.ModelProto()  # onnxruntime refuses duplicate node names, so the reference gets unique ones
    unique.CopyFrom(model)
    for k, node in enumerate(unique.graph.node):
        node.name = f"n{k}"
    errors = compare_outputs(unique, result.model, [feed])
    assert [e.name for e in errors] == ["y", "a"] and all(e.max_rel < 1e-5 for e in errors)


def test_compress_is_deterministic_byte_for_byte(tmp_path):
    model = conv_model(48, 96, stride=2)
    paths = []
    for k in range(2):
        result = ttgraph.compress(model, cores=3, rank=5)
        out, report = tmp_path / f"m{k}.onnx", tmp_path / f"r{k}.json"
        result.save(out, report_path=report)
        paths.append((out, report))
    assert paths[0][0].read_bytes() == paths[1][0].read_bytes()
    assert paths[0][1].read_bytes() == paths[1][1].read_bytes()


def test_kill_during_save_leaves_the_old_file_or_nothing(tmp_path):
    out = tmp_path / "big.onnx"
    out.write_bytes(b"previous content")
    script = (
        "import numpy as np, onnx\n"
        "from onnx import helper, numpy_helper\n"
        "from ttgraph.model_io import save_model\n"
        "w = numpy_helper.from_array(np.ones((8192, 8192, 1, 1), np.float32), 'w')\n"
        "g = helper.make_graph([helper.make_node('Conv', ['x', 'w'], ['y'])], 'g',\n"
        "    [helper.make_tensor_value_info('x', 1, [1, 8192, 1, 1])],\n"
        "    [helper.make_tensor_value_info('y', 1, [1, 8192, 1, 1])], [w])\n"
        "m = helper.make_model(g)\n"
        "print('ready', flush=True)\n"
        f"save_model(m, {str(out)!r})\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    import time

    time.sleep(0.3)  # mid-write of 256 MB
    proc.kill()
    proc.wait()
    content = out.read_bytes()
    assert content == b"previous content" or onnx.load_model_from_string(content).graph.node[0].op_type == "Conv"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["big.onnx"]


def test_reports_are_placed_only_once_the_model_is_written(tmp_path):
    """A model that cannot be saved (its name is taken by a folder) leaves no report: reports are staged first."""
    result = ttgraph.compress(conv_model(16, 16), rank=4)
    (tmp_path / "model.onnx").mkdir()
    report, html = tmp_path / "r.json", tmp_path / "r.html"
    with pytest.raises(ttgraph.TTGraphError, match="directory"):
        result.save(tmp_path / "model.onnx", report_path=report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no report, no temporary file
    with pytest.raises(ttgraph.TTGraphError, match="two outputs"):
        result.save(tmp_path / "m.onnx", report_path=report, html_path=report)
    result.save(tmp_path / "m.onnx", report_path=report, html_path=html)
    assert json.loads(report.read_text())["layers"] and "<table" in html.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "model.onnx", "r.html", "r.json"]


def test_a_scalar_output_is_verified_and_an_empty_weight_is_skipped():
    """A 1×1 conv with no output channels (onnxruntime runs it) has nothing to factor; the model's scalar
    output still gets compared."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="empty"),
        helper.make_node("ReduceSum", ["h"], ["s"], keepdims=0),
        helper.make_node("Conv", ["x", "v"], ["g"], name="pw"),
        helper.make_node("ReduceSum", ["g"], ["t"], keepdims=0),
        helper.make_node("Add", ["s", "t"], ["y"]),
    ]
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.zeros((0, 16, 1, 1), np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "v"),
    ]
    model = model_of(nodes, [x], [y], inits, opset=13)
    result = ttgraph.compress(model, rank_ratio=0.5)
    assert [s.reason for s in result.report.skipped if s.label == "empty"] == [
        "weight 'w' is empty (0×16×1×1): nothing to factor"
    ]
    (error,) = result.verify([feed_for(model, [1, 16, 8, 8])])
    assert error.name == "y" and 0 < error.max_abs < np.inf  # half the rank: a real, finite difference


def test_new_names_avoid_the_names_a_subgraph_already_uses():
    """If/Loop bodies share the graph's SSA namespace: a branch's tensor named like a generated one."""
    vi = helper.make_tensor_value_info
    then = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["a/tt/conv0:0"]), helper.make_node("Neg", ["a/tt/conv0:0"], ["t"])],
        "then",
        [],
        [vi("t", TensorProto.FLOAT, [1, 32, 8, 8])],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["h"], ["e"])], "else", [], [vi("e", TensorProto.FLOAT, [1, 32, 8, 8])]
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], name="a"),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    model = model_of(
        nodes, [vi("x", TensorProto.FLOAT, [1, 16, 8, 8])], [vi("y", TensorProto.FLOAT, [1, 32, 8, 8])], inits
    )
    result = ttgraph.compress(model, rank_ratio=1.0)
    onnx.checker.check_model(result.model, full_check=True)
    assert max(e.rel_l2 for e in result.verify([feed_for(model, [1, 16, 8, 8])])) < 1e-5


def test_a_fixed_input_shape_the_model_cannot_run_at_is_named_as_the_reason():
    """A detector runs only at multiples of 32; here an Add with a fixed 8×8 constant: at 9×9 the sizes are
    unknown because onnxruntime cannot run the model, not because the input is dynamic."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"), helper.make_node("Conv", ["a", "w"], ["y"])]
    inits = [
        numpy_helper.from_array(rng.standard_normal((1, 16, 8, 8)).astype(np.float32), "c"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "w"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, "h", "w"])
    model = model_of(
        nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, "h", "w"])], inits, opset=13
    )
    calib = [{"x": rng.standard_normal((1, 16, 9, 9)).astype(np.float32)} for _ in range(4)]
    for budget in ({"macs_ratio": 0.5}, {"params_ratio": 0.5}):  # not "cannot load the model", as if broken
        with pytest.raises(ttgraph.TTGraphError, match=r"at input shape x=1×16×9×9: onnxruntime .*add"):
            ttgraph.compress(model, calibration=calib, input_shapes={"x": [1, 16, 9, 9]}, **budget)


def test_a_layer_calibrated_on_fewer_rows_than_channels_says_so():
    """On 1×1 inputs (a squeeze-excitation conv) six samples are six rows: any rank fits them."""
    model = conv_model(16, 16, hw=(1, 1))
    calib = [feed_for(model, [1, 16, 1, 1], seed=s) for s in range(8)]
    (layer,) = ttgraph.compress(model, calibration=calib, params_ratio=0.5, holdout=2).report.layers
    assert layer.note == (
        "calibrated on 6 input rows, fewer than its 16 channels: its calibration error understates the real one "
        "(give more samples)"
    )
    big = ttgraph.compress(model, calibration=calib * 3, params_ratio=0.5, holdout=2)
    assert big.report.layers[0].note is None


def test_inspect_gives_no_share_of_a_model_total_it_knows_only_in_part():
    """A model whose other branch has dynamic sizes: its known MACs are not the model's total."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="known"),
        helper.make_node("Conv", ["z", "k"], ["b"], name="unsized", kernel_shape=[3, 3]),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "k"),
    ]
    vi = helper.make_tensor_value_info
    ins = [vi("x", TensorProto.FLOAT, [1, 16, 8, 8]), vi("z", TensorProto.FLOAT, [1, 16, "h", "w"])]
    outs = [vi("a", TensorProto.FLOAT, [1, 16, 8, 8]), vi("b", TensorProto.FLOAT, [1, 16, "p", "q"])]
    report = ttgraph.inspect(model_of(nodes, ins, outs, inits))
    (layer,) = report.layers
    assert report.unknown_macs_nodes == 1 and layer.macs == 16 * 16 * 64 and layer.macs_share is None
    assert report.model_macs is None  # was the known part, 16·16·64, read as the whole model's


def test_compensation_that_leaves_held_out_outputs_worse_is_not_kept():
    """Compensation fits the layers to the calibration samples; where the held-out samples then come out worse
    (here: calibration saw only half the input channels, the held-out samples all of them), the model is
    written without it and the summary says so. Where it helps (the same model, more samples alike) it is kept."""
    from ttgraph.commands.compress import render

    c = 16
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"), helper.make_node("Relu", ["a"], ["r"])]
    nodes += [helper.make_node("Conv", ["r", "w2"], ["b"], name="conv2"), helper.make_node("Relu", ["b"], ["s"])]
    nodes += [helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3")]
    inits = [weight("w1", c, c, 1), weight("w2", c, c, 2), weight("w3", c, c, 3)]
    model = model_of(nodes, [vi("x", [1, c, 2, 2])], [vi("y", [1, c, 2, 2])], inits)

    def compressed(shifted: bool, samples: int) -> tuple[ttgraph.CompressionResult, float, float]:
        rng = np.random.default_rng(2)
        calib = [{"x": rng.standard_normal((1, c, 2, 2)).astype(np.float32)} for _ in range(samples)]
        for i, feed in enumerate(calib):
            if shifted and i not in holdout_indices(samples, 4):
                feed["x"][:, c // 2 :] = 0
        result = ttgraph.compress(model, calibration=calib, params_ratio=0.5, holdout=4, compensate_samples=samples - 4)
        ends = result.report.compensation["end_to_end"]
        return result, ends["before"][0]["rel_l2"], ends["after"][0]["rel_l2"]

    result, before, after = compressed(shifted=True, samples=8)
    assert after > before * 1.05  # measured 0.725 → 0.800
    report = result.report
    assert report.compensation["kept"] is False and "1 of 1 outputs worse" in report.compensation["reason"]
    assert report.verification["outputs"][0]["rel_l2"] == pytest.approx(before, rel=1e-5)  # written without it
    assert "compensation not kept: 1 of 1 outputs worse on the held-out samples" in render(report)
    assert result.decomposition is not None and result.decomposition.compensation is not None  # not lost

    result, before, after = compressed(shifted=False, samples=32)
    assert after < before and result.report.compensation["kept"] is True
    assert result.report.verification["outputs"][0]["rel_l2"] == pytest.approx(after, rel=1e-5)
    assert "compensation not kept" not in render(result.report)
    # the layer table's errors are the allocated factors', and both reports say so where compensation is kept
    from ttgraph.report_html import LAYER_ERRORS_BEFORE_COMPENSATION, render_html

    assert LAYER_ERRORS_BEFORE_COMPENSATION in render(result.report)
    assert "before compensation refitted them" in render_html(result.report)
    assert LAYER_ERRORS_BEFORE_COMPENSATION not in render(report)


def test_the_random_smoke_input_of_a_uint8_model_spans_the_pixel_range():
    """A standard normal cast to uint8 is nearly all 0, 1, 2 and 255: a smoke test of an image model on that
    checks little. uint8 inputs get uniform pixels; float inputs stay standard normal."""
    from ttgraph.verify import random_feed

    model = model_of([helper.make_node("Identity", ["x"], ["y"])], [vi("x", [1, 3, 16, 16], TensorProto.UINT8)], [])
    pixels = random_feed(model)["x"]
    assert pixels.dtype == np.uint8 and len(np.unique(pixels)) > 200 and pixels.min() < 5 and pixels.max() > 250
    x = random_feed(model_of([], [vi("x", [1, 3, 64, 64])], []))["x"]
    assert x.dtype == np.float32 and abs(float(x.mean())) < 0.05 and 0.95 < float(x.std()) < 1.05


def test_macs_come_from_the_inputs_not_from_a_stale_value_info():
    """Exported at 16×16, inputs and outputs edited to 8×8 since: the value_info still said 16×16 and the MACs
    were counted there — the second conv 4× over, and a --macs-ratio budget met on paper only."""
    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["t"], name="c1"),
        helper.make_node("Relu", ["t"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    inits = [
        numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((16, 32, 1, 1)).astype(np.float32), "w2"),
    ]
    model = onnx.shape_inference.infer_shapes(
        model_of(
            nodes, [vi("x", TensorProto.FLOAT, [1, 16, 16, 16])], [vi("y", TensorProto.FLOAT, [1, 16, 16, 16])], inits
        )
    )
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[2].dim_value = value.type.tensor_type.shape.dim[3].dim_value = 8
    report = ttgraph.inspect(model)
    assert [layer.macs for layer in report.layers] == [16 * 32 * 64, 16 * 32 * 64]
    assert [layer.input_shape for layer in report.layers] == [[1, 16, 8, 8], [1, 32, 8, 8]]
    assert report.model_macs == report.pointwise_macs == 2 * 16 * 32 * 64


def test_constants_written_as_value_floats_or_ints_are_constants():
    """Constant(value_floats=…) as a conv's bias was "not a constant" to the pass; Constant(value_float / value_ints)
    was a KeyError in distillation's executor. Loading makes them Constant(value=…) tensors of the same values."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 16, 1, 1)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Constant", [], ["b"], value_floats=[0.5] * 8),
        helper.make_node("Constant", [], ["k"], value_float=2.0),
        helper.make_node("Constant", [], ["shape"], value_ints=[1, -1]),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "k"], ["m"]),
        helper.make_node("Reshape", ["m", "shape"], ["y"]),
    ]
    model = model_of(nodes, [vi("x", [1, 16, 4, 4])], [vi("y", [1, 128])], [w])
    assert [layer.name for layer in ttgraph.inspect(model).layers] == ["conv"]
    result = ttgraph.compress(model, rank_ratio=1.0)
    assert result.report.layers[0].name == "conv"
    (error,) = compare_outputs(model, result.model, [feed_for(model, [1, 16, 4, 4])])
    assert error.max_rel < 1e-5
    from ttgraph.model_io import load_model

    loaded = load_model(model)
    assert [a.name for n in loaded.graph.node if n.op_type == "Constant" for a in n.attribute] == ["value"] * 3
    assert compare_outputs(model, loaded, [feed_for(model, [1, 16, 4, 4])])[0].max_abs == 0


def test_outputs_that_are_infinite_by_design_compare_equal_where_both_models_agree():
    """A Div by a per-channel scale with zeros puts ±inf in the output by design: an exact rewrite read as
    "max |Δ| inf, rel L2 inf" and the exact BatchNorm fold was rolled back as a wrong pass."""
    rng = np.random.default_rng(0)
    scale = np.where(np.arange(32) % 4 == 0, 0, 1).astype(np.float32).reshape(1, 32, 1, 1)
    bn = {
        "g": rng.standard_normal(32) + 2,
        "bb": rng.standard_normal(32),
        "m": rng.standard_normal(32),
        "v": np.abs(rng.standard_normal(32)) + 0.5,
    }
    inits = [numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), k) for k, v in bn.items()]
    inits.append(numpy_helper.from_array(scale, "k"))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["t"], name="conv"),
        helper.make_node("BatchNormalization", ["t", "g", "bb", "m", "v"], ["tb"]),
        helper.make_node("Div", ["tb", "k"], ["y"]),
    ]
    model = model_of(nodes, [vi("x", [1, 16, 8, 8])], [vi("y", [1, 32, 8, 8])], inits, opset=13)
    result = ttgraph.compress(model, rank_ratio=1.0, verify_feeds=[feed_for(model, [1, 16, 8, 8])])
    assert not result.report.lowering.get("rolled_back") and result.report.lowering["nodes_after"] == 3
    (error,) = result.report.verification["outputs"]
    assert error["max_rel"] < 1e-5 and error["rel_l2"] < 1e-5
    wrong = onnx.ModelProto()
    wrong.CopyFrom(result.model)
    for node in wrong.graph.node:
        if node.op_type == "Div":
            node.input[0], node.input[1] = node.input[1], node.input[0]  # k / x: infinities move elsewhere
    assert compare_outputs(model, wrong, [feed_for(model, [1, 16, 8, 8])])[0].max_abs == np.inf


def test_a_checker_complaint_keeps_the_node_it_names(tmp_path):
    """onnx.checker names the offending node on its second line; the error kept the first one alone."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["b"], ["y"], name="late"), helper.make_node("Relu", ["x"], ["b"], name="early")],
        "unsorted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "unsorted.onnx")
    with pytest.raises(ttgraph.TTGraphError) as err:
        ttgraph.inspect(tmp_path / "unsorted.onnx")
    assert "topologically sorted" in str(err.value) and "name: late OpType: Relu" in str(err.value)
    assert "\n" not in str(err.value)
