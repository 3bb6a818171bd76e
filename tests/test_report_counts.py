"""The report's params and MACs are what the emitted graph really holds and computes."""

from __future__ import annotations

import math

import onnx
import pytest
from onnx import numpy_helper

import ttgraph
from tests.conftest import DET_SHAPE, conv_model
from ttgraph.costs import node_macs
from ttgraph.shapes import infer_shapes


def emitted_costs(model: onnx.ModelProto, label: str, shapes) -> tuple[int, int]:
    """Float weights read and MACs done by the nodes the rewrite emitted for one conv."""
    floats = {
        t.name: t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    params, macs = 0, 0
    for node in model.graph.node:
        if not node.name.startswith(f"{label}/tt/"):
            continue
        params += sum(math.prod(floats[i].dims) for i in node.input if i in floats)
        if node.op_type in ("Conv", "MatMul"):
            macs += node_macs(node, shapes)
    return params, macs


@pytest.mark.parametrize(
    ("d", "rule"), [(1, {"rank_ratio": 0.25}), (2, {"rank": 8}), (3, {"rank_ratio": 0.5}), (4, {"rank": 4})]
)
def test_reduced_rank_report_matches_the_emitted_detector_graph(det_path, d, rule):
    # the rewrite's own counts: the fast-lowering passes (on by default) may fold a following affine op into
    # the last factor, which the report's ``lowering`` section accounts for
    result = ttgraph.compress(det_path, cores=d, input_shapes={"x": DET_SHAPE}, lower=False, **rule)
    assert len(result.report.layers) == 42
    shapes = infer_shapes(result.model)
    for layer in result.report.layers:
        params, macs = emitted_costs(result.model, layer.name, shapes)
        assert (layer.params_after, layer.macs_after) == (params, macs), layer.name
    totals = result.report.totals
    assert totals["params_after"] == sum(layer.params_after for layer in result.report.layers)
    assert totals["macs_ratio"] == pytest.approx(totals["macs_after"] / totals["macs_before"])


def test_report_before_counts_are_the_original_convs():
    model = conv_model(24, 36, stride=2, hw=(16, 16))
    layer = ttgraph.compress(model, cores=2, rank=3).report.layers[0]
    weight = numpy_helper.to_array(model.graph.initializer[0])
    assert layer.params_before == weight.size + 36
    assert layer.macs_before == 36 * 24 * 8 * 8  # stride 2: 8×8 output positions
    assert 0 < layer.weight_error < 1  # rank 3 of a random 36×24 matrix: lossy, not useless


def test_the_report_says_what_lowering_folded_into_the_factors():
    """A BatchNormalization after a bias-free 1×1 conv is folded into the last factor: the report says so."""
    import numpy as np
    from onnx import TensorProto, helper

    model = conv_model(16, 24, hw=(8, 8), bias=False)
    rng = np.random.default_rng(0)
    bn = {k: rng.uniform(0.5, 2, 24).astype(np.float32) for k in ("s", "t", "mu", "v")}
    model.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in bn.items())
    relu = model.graph.node[-1]
    model.graph.node.insert(len(model.graph.node) - 1, helper.make_node("BatchNormalization", ["c", *bn], ["z"]))
    relu.input[0] = "z"
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    result = ttgraph.compress(model, rank=4)
    assert result.report.lowering["passes"][1]["count"] == 1  # the BatchNormalization was folded
    layer = result.report.layers[0]
    params, _ = emitted_costs(result.model, layer.name, infer_shapes(result.model))
    assert params == 4 * (16 + 24) + 24  # the written factors hold the BatchNormalization's shift as a bias
    assert layer.params_after == result.report.totals["params_after"] == 4 * (16 + 24)  # what the budget counts
    assert result.report.lowering["params_folded_in"] == 24
    # the summary and the HTML give the count a look at the written file gives, beside the budget's
    from ttgraph.commands.compress import render
    from ttgraph.report_html import render_html

    folded = "as written 184 params (0.479×): 24 folded in from the ops after them"
    assert f"1×1 params 384→160 (0.417×), MACs 24.6k→10.2k (0.417×); {folded}" in render(result.report)
    # and the whole model: the conv's 384 weights and the BatchNormalization's 4×24 before, the factors and bias after
    whole = result.report.totals["model"]
    assert (whole["params_before"], whole["params_after"]) == (384 + 4 * 24, 4 * (16 + 24) + 24)
    assert "whole model: weights 480 → 184 (0.383×), MACs 24.6k → 10.2k (0.417×)" in render(result.report)
    assert f"160 (0.417×); {folded}" in render_html(result.report)


def test_a_kept_dense_conv_whose_weight_is_a_constant_node_folds_nothing_in():
    """Weights may come from Constant nodes (the PP-OCR detector's do): they count as the layer's written params."""
    from tests.conftest import feed_for

    model = conv_model(16, 24, hw=(8, 8), weight_as_constant_node=True)
    calib = [feed_for(model, [1, 16, 8, 8], seed=s) for s in range(6)]
    result = ttgraph.compress(model, calibration=calib, max_error=1e-9, holdout=2)
    assert [layer.format for layer in result.report.layers] == ["dense"]
    assert result.report.lowering["params_folded_in"] == 0


def test_a_budget_in_params_that_costs_more_macs_says_so():
    """The classifier at --params-ratio 0.5 --cores 3 came out at 1.83× the MACs and the summary said nothing,
    where a rank rule's summary notes it. Rendered from a real report with the totals such a run gives."""
    import dataclasses

    import numpy as np

    from ttgraph.commands.compress import render

    calib = np.random.default_rng(0).standard_normal((12, 1, 24, 8, 8)).astype(np.float32)
    report = ttgraph.compress(conv_model(24, 36, hw=(8, 8)), calibration=calib, params_ratio=0.5, holdout=2).report
    assert "cost more" not in render(report)
    totals = {**report.totals, "macs_ratio": 1.83, "macs_after": int(1.83 * report.totals["macs_before"])}
    costlier = dataclasses.replace(report, totals=totals)
    assert (
        "note: the rewritten 1×1 convs cost more than the original's in MACs 1.83×: this budget does not bound "
        "that (--macs-ratio does)" in render(costlier)
    )


def test_the_models_macs_include_recurrent_einsum_and_quantized_layers():
    """A speech model's GRU or an OCR model's LSTM holds most of its MACs: counting Conv/MatMul/Gemm alone told
    one user its 1×1 convs were 93 % of the model when they were 22 %."""
    import numpy as np
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    t, b, c, hidden = 10, 1, 16, 8
    inits = {
        "w": rng.standard_normal((c, c, 1, 1)),
        "lw": rng.standard_normal((1, 4 * hidden, c)),
        "lr": rng.standard_normal((1, 4 * hidden, hidden)),
        "e": rng.standard_normal((hidden, 5)),
        "qw": rng.integers(-8, 8, (c, c, 1, 1)),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"]),  # 1×16×10×1 → 16·16·10 MACs
        helper.make_node("Squeeze", ["y", "axes"], ["s"]),  # 1×16×10
        helper.make_node("Transpose", ["s"], ["seq"], perm=[2, 0, 1]),  # 10×1×16
        helper.make_node("LSTM", ["seq", "lw", "lr"], ["h"], hidden_size=hidden),  # 10×1×1×8
        helper.make_node("Einsum", ["h", "e"], ["z"], equation="tbdh,hk->tbdk"),
        helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["xq"]),
        helper.make_node("ConvInteger", ["xq", "qw"], ["yq"]),
    ]
    init = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items() if k != "qw"]
    init += [
        numpy_helper.from_array(inits["qw"].astype(np.int8), "qw"),
        numpy_helper.from_array(np.array([3], np.int64), "axes"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0, np.int8), "zero"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, c, t, 1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None), helper.make_tensor_value_info("yq", 6, None)],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = ttgraph.inspect(model)
    conv = c * c * t
    lstm = t * b * 4 * hidden * (c + hidden)
    einsum = t * b * 1 * hidden * 5
    assert report.model_macs == conv + lstm + einsum + conv  # the ConvInteger as its float twin
    assert report.pointwise_macs == conv
