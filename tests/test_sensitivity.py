"""Sensitivity-weighted allocation (ttgraph.sensitivity): the measured weight is exact where it can be
computed by hand, it moves the error budget to the layers whose errors do not reach the output, and the
option reaches the report and fails clearly where it cannot work."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from ttgraph.allocate import Budget, allocate
from ttgraph.api import _analyse, rewrite_allocation
from ttgraph.calibration import collect_statistics
from ttgraph.decompose import build_candidates
from ttgraph.errors import TTGraphError
from ttgraph.sensitivity import measured_sensitivities
from ttgraph.verify import session

C = 16


def two_branches(quiet: float) -> onnx.ModelProto:
    """y = ConvA(x) + quiet · ConvB(x): B's error reaches y scaled by ``quiet``. Both 16→16, no bias, with
    decaying spectra so that low rank loses something."""
    rng = np.random.default_rng(3)
    decay = np.linspace(1.0, 0.05, C)
    wa = (rng.standard_normal((C, C)) * decay).reshape(C, C, 1, 1).astype(np.float32)
    wb = (rng.standard_normal((C, C)) * decay).reshape(C, C, 1, 1).astype(np.float32)
    inits = [
        numpy_helper.from_array(wa, "wa"),
        numpy_helper.from_array(wb, "wb"),
        numpy_helper.from_array(np.array(quiet, np.float32), "quiet"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["a"], name="convA", kernel_shape=[1, 1]),
        helper.make_node("Conv", ["x", "wb"], ["b"], name="convB", kernel_shape=[1, 1]),
        helper.make_node("Mul", ["b", "quiet"], ["bq"], name="scale"),
        helper.make_node("Add", ["a", "bq"], ["y"], name="sum"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, 6, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, C, 6, 6)).astype(np.float32)} for _ in range(n)]


def candidates(model: onnx.ModelProto, data):
    _, found, _ = _analyse(model)
    stats = collect_statistics(model, found.candidates, data)
    return [build_candidates(c, stats.layers[c.label], metric="macs") for c in found.candidates]


def output_error(original, model, data) -> float:
    a, b = session(original), session(model)
    num = sum(float(np.sum((a.run(None, f)[0] - b.run(None, f)[0]) ** 2)) for f in data)
    return num / sum(float(np.sum(a.run(None, f)[0] ** 2)) for f in data)


def test_a_layer_whose_output_is_the_model_output_has_sensitivity_one():
    """With B's branch multiplied by 0, y = ConvA(x): A's relative output error is exactly the model's, so its
    weight is 1 (to float32 rounding) when probed on the calibration data itself; B's error never arrives."""
    model = two_branches(0.0)
    data = feeds(6, seed=1)
    weights = measured_sensitivities(model, candidates(model, data), data)
    assert weights["convA"] == pytest.approx(1.0, rel=1e-3)
    assert weights["convB"] < 1e-9


def test_weighting_moves_the_error_to_the_layer_the_output_barely_sees():
    """y = ConvA(x) + 0.05 · ConvB(x), half the MACs: unweighted, both layers look alike and share the cut;
    weighted, B (whose error is damped 20× at the output) takes it, and the held-out output error drops."""
    model = two_branches(0.05)
    calib, held = feeds(8, seed=1), feeds(8, seed=2)
    layers = candidates(model, calib)
    weights = measured_sensitivities(model, layers, calib[:2])
    assert weights["convB"] < weights["convA"] / 50
    plain = allocate(layers, Budget(macs_ratio=0.5))
    weighted = allocate(layers, Budget(macs_ratio=0.5), weights=weights)
    assert weighted.choices["convA"].macs > plain.choices["convA"].macs
    assert weighted.choices["convB"].macs < plain.choices["convB"].macs
    err_plain = output_error(model, rewrite_allocation(model, layers, plain), held)
    err_weighted = output_error(model, rewrite_allocation(model, layers, weighted), held)
    assert err_weighted < 0.5 * err_plain


def test_compress_with_sensitivity_reports_the_weights(tmp_path):
    model = two_branches(0.05)
    result = ttgraph.compress(model, calibration=feeds(10, seed=1), holdout=2, macs_ratio=0.5, sensitivity=3)
    report = result.report
    assert report.options["sensitivity"] == 3
    assert report.allocation["objective"].endswith("each weighted by its sensitivity (measured on 3 samples)")
    more = ttgraph.compress(model, calibration=feeds(10, seed=1), holdout=2, macs_ratio=0.5, sensitivity=100)
    assert more.report.allocation["objective"].endswith(
        "(measured on 8 samples: all the calibration has, of the 100 asked for)"
    )
    by_name = {layer.name: layer for layer in report.layers}
    assert by_name["convB"].sensitivity < by_name["convA"].sensitivity / 50
    assert by_name["convA"].macs_after > by_name["convB"].macs_after
    plain = ttgraph.compress(model, calibration=feeds(10, seed=1), holdout=2, macs_ratio=0.5)
    assert all(layer.sensitivity is None for layer in plain.report.layers)
    path = tmp_path / "r.html"
    from ttgraph.report_html import write_html

    write_html(result.report, path)
    assert ">sensitivity</th>" in path.read_text()


def test_sensitivity_errors_are_one_clear_line(tmp_path):
    model = two_branches(0.05)
    with pytest.raises(TTGraphError, match="sensitivity weights a budget"):
        ttgraph.compress(model, rank=4, sensitivity=2)
    with pytest.raises(TTGraphError, match=r"^sensitivity: expected a sample count ≥ 0 \(0: off\), got -1$"):
        ttgraph.compress(model, calibration=feeds(4, seed=1), macs_ratio=0.5, sensitivity=-1)
    with pytest.raises(TTGraphError, match="one-pass iterable"):
        ttgraph.compress(model, calibration=iter(feeds(6, seed=1)), holdout=0, macs_ratio=0.5, sensitivity=2)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    proc = subprocess.run(
        [sys.executable, "-m", "ttgraph", "compress", str(path), "-o", str(tmp_path / "o.onnx"), "--rank", "4",
         "--sensitivity", "2"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and "--sensitivity" in proc.stderr
    assert not (tmp_path / "o.onnx").exists()


def three_levels_two_outputs() -> onnx.ModelProto:
    """x → A → Relu → r (an output too) → B → + r → C → y, and a constant output k: an output made before the
    last two levels, one made by no node, and a skip over one level; 16 channels, decaying spectra."""
    rng = np.random.default_rng(4)
    decay = np.linspace(1.0, 0.05, C)
    inits = [
        numpy_helper.from_array((rng.standard_normal((C, C)) * decay).reshape(C, C, 1, 1).astype(np.float32), f"w{n}")
        for n in "ABC"
    ]
    nodes = [
        helper.make_node("Conv", ["x", "wA"], ["a"], name="convA"),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "wB"], ["b"], name="convB"),
        helper.make_node("Add", ["b", "r"], ["s"]),
        helper.make_node("Conv", ["s", "wC"], ["y"], name="convC"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 6, 6])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, C, 6, 6]) for n in ("r", "y", "k")],
        [*inits, numpy_helper.from_array(np.ones((1, C, 6, 6), np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def test_probes_run_from_the_cut_before_their_level_as_the_whole_model_does():
    """Each probe runs only what lies downstream of its layer, from the original's values kept at the cut before
    its level; the weights are those of running the whole model per probe (early and constant outputs included)."""
    model = three_levels_two_outputs()
    reads = []

    class Counted(list):  # how many passes read the samples
        def __iter__(self):
            reads.append(1)
            return super().__iter__()

    data = Counted(feeds(5, seed=2))
    layers = candidates(model, data)
    reads.clear()
    piecewise = measured_sensitivities(model, layers, data)
    assert len(reads) == 2  # the reference outputs, and the first cut: no probe reads the samples again
    reads.clear()
    whole = measured_sensitivities(model, layers, data, cut_bytes=0)
    assert len(reads) == 1 + 3
    assert set(piecewise) == {"convA", "convB", "convC"}
    assert piecewise == pytest.approx(whole, rel=1e-4)
    assert piecewise["convC"] > 0 and piecewise["convA"] > 0


def test_a_graph_listed_out_of_order_gets_the_weights_of_the_same_graph_in_order():
    """onnxruntime runs a graph whose nodes are not listed producers first (compress() rejects it through
    onnx.checker, a direct caller need not); its levels were read in list order, and the probes from the kept
    cuts reported 0 for layers that matter."""
    model = three_levels_two_outputs()
    data = feeds(5, seed=2)
    layers = candidates(model, data)
    in_order = measured_sensitivities(model, layers, data)
    reversed_model = onnx.ModelProto()
    reversed_model.CopyFrom(model)
    nodes = list(reversed_model.graph.node)[::-1]
    del reversed_model.graph.node[:]
    reversed_model.graph.node.extend(nodes)
    out_of_order = measured_sensitivities(reversed_model, candidates(reversed_model, data), data)
    assert out_of_order == pytest.approx(in_order, rel=1e-4)
    assert all(weight > 0 for weight in out_of_order.values())
