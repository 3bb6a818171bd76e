"""The find pass lists every rewritable 1×1 conv and gives a reason for every other conv."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.find_pointwise import FindPointwiseConvs
from tests.conftest import conv_model
from ttgraph import inspect


def find(model: onnx.ModelProto):
    return FindPointwiseConvs()(gs.import_onnx(model))


def test_finds_all_42_pointwise_convs_in_the_ppocr_detector(det_path):
    report = inspect(det_path, {"x": [1, 3, 640, 640]})
    assert len(report.layers) == 42
    assert len(report.skipped) == 62 - 42 + 2  # and its two ConvTranspose
    assert sum(s.op == "ConvTranspose" for s in report.skipped) == 2
    assert all(s.reason for s in report.skipped)
    assert report.pointwise_macs and report.model_macs and 0.3 < report.pointwise_macs / report.model_macs < 0.45


def test_finds_all_41_pointwise_convs_in_the_direction_classifier(cls_path):
    report = inspect(cls_path, {"x": [1, 3, 48, 192]})
    assert len(report.layers) == 41
    assert {s.reason for s in report.skipped} >= {"kernel 3×3 depthwise is not 1×1"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2},
        {"dilation": 3},
        {"bias": False},
        {"auto_pad": "SAME_UPPER", "stride": 2},
        {"weight_as_constant_node": True},
        {"spatial_rank": 1},
        {"spatial_rank": 3},
    ],
)
def test_pointwise_variants_are_candidates(kwargs):
    found = find(conv_model(8, 6, **kwargs))
    assert [c.label for c in found.candidates] == ["conv"], found.skipped
    conv = found.candidates[0]
    assert conv.weight.shape == (6, 8)
    assert (conv.bias is None) == (kwargs.get("bias") is False)


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"kernel": 3, "pads": 1}, "kernel 3×3 is not 1×1"),
        ({"group": 8}, "depthwise 1×1 (group = 8)"),
        ({"group": 2}, "grouped 1×1 (group = 2)"),
        ({"pads": 1}, "padded 1×1"),
        ({"weight_as_input": True}, "is not a constant (comes from a graph input)"),
    ],
)
def test_other_convs_are_skipped_with_their_reason(kwargs, reason):
    found = find(conv_model(8, 8, **kwargs))
    assert found.candidates == []
    assert len(found.skipped) == 1 and reason in found.skipped[0].reason


@pytest.mark.parametrize(("cin", "cout", "side"), [(128, 1, "output"), (1, 96, "input")])
def test_a_conv_of_one_channel_on_a_side_is_skipped(cin, cout, side):
    """A rank-1 pair holds Cin + Cout values, more than the Cin·Cout it replaces: a rank rule rewrote a 128→1
    head conv into a bigger one."""
    found = find(conv_model(cin, cout))
    assert found.candidates == []
    assert found.skipped[0].reason == f"one {side} channel ({cout}×{cin}): no factorization is smaller"


def _x_to_y(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.GraphProto:
    """A graph from input x (1×4×3×3) to output y."""
    return helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        initializers,
    )


def _two_convs_sharing_one_weight() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["a"], name="c1"),
        helper.make_node("Conv", ["a", "w"], ["y"], name="c2"),
    ]
    graph = _x_to_y(nodes, [w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_shared_weight_is_skipped():
    found = find(_two_convs_sharing_one_weight())
    assert found.candidates == []
    assert [s.reason for s in found.skipped] == ["weight 'w' is shared by 2 nodes"] * 2


def test_conv_inside_an_if_branch_is_reported_not_rewritten():
    inner = conv_model(4, 4).graph
    branch = helper.make_graph(list(inner.node), "branch", [], list(inner.output), list(inner.initializer))
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], name="if0", then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        [cond],
    )
    found = find(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert found.candidates == []
    assert len(found.skipped) == 2 and all("inside a subgraph of If node 'if0'" in s.reason for s in found.skipped)


def test_convs_it_does_not_rewrite_are_listed_too():
    """A transposed conv, a runtime's fused conv (a saved optimized model) and a conv inside a local function."""
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    inner = helper.make_node("Conv", ["a", "fw"], ["b"], name="in_function")
    fw = helper.make_node("Constant", [], ["fw"], value=numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32)))
    function = helper.make_function("local", "Block", ["a"], ["b"], [fw, inner], [helper.make_opsetid("", 17)])
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], name="deconv"),
        helper.make_node("FusedConv", ["t", "w"], ["f"], name="fused", domain="com.microsoft", activation="Relu"),
        helper.make_node("Block", ["f"], ["y"], name="block", domain="local"),
    ]
    graph = _x_to_y(nodes, [w])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1), helper.make_opsetid("com.microsoft", 1)]
    found = find(helper.make_model(graph, opset_imports=opsets, functions=[function]))
    assert found.candidates == []
    assert {s.label: s.reason for s in found.skipped} == {
        "deconv": "transposed convolution: only Conv is rewritten",
        "fused": "com.microsoft.FusedConv is a runtime's own conv op: only ONNX Conv is rewritten",
        "in_function": "inside local function 'Block'; only the main graph is rewritten",
    }


def test_inspect_without_fixed_shapes_reports_unknown_macs(det_path):
    report = inspect(det_path)
    assert len(report.layers) == 42
    assert report.pointwise_macs is None
    assert all(layer.macs is None for layer in report.layers if layer.input_shape is None)
