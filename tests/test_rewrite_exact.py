"""At full rank the TT rewrite is exact: the rewritten model reproduces the original's outputs in onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from tests.conftest import (
    CLS_SHAPE,
    DET_SHAPE,
    cls_input,
    conv_model,
    det_input,
    feed_for,
    photo,
    sha256,
    text_line,
)
from ttgraph.verify import compare_outputs, session

DET_PHOTOS = ["astronaut", "page"]
LINES = ["Tensor Train cores 1x1", "deployment on phones 42", "ONNX graph rewrite ok"]


def assert_exact(errors, tol=1e-4):
    for e in errors:
        assert e.max_rel <= tol, e


def new_nodes(model: onnx.ModelProto, label: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.name.startswith(f"{label}/tt/")]


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_full_rank_rewrite_reproduces_detector_outputs(det_path, d):
    before = sha256(det_path)
    result = ttgraph.compress(det_path, cores=d, rank_ratio=1.0, input_shapes={"x": DET_SHAPE})
    assert len(result.report.layers) == 42
    assert max(layer.cores for layer in result.report.layers) == d
    errors = result.verify([{"x": det_input(photo(name))} for name in DET_PHOTOS])
    assert_exact(errors)
    assert sha256(det_path) == before


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_full_rank_rewrite_reproduces_classifier_outputs_on_rendered_lines(cls_path, d):
    result = ttgraph.compress(cls_path, cores=d, rank_ratio=1.0, input_shapes={"x": CLS_SHAPE})
    assert len(result.report.layers) == 41
    feeds = [{"x": cls_input(text_line(t, i, rotate=i % 2 == 1))} for i, t in enumerate(LINES)]
    assert_exact(result.verify(feeds))


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"stride": 2},
        {"stride": 3, "bias": False},
        {"dilation": 2},
        {"auto_pad": "SAME_UPPER", "stride": 2},
        {"weight_as_constant_node": True},
        {"spatial_rank": 1},
        {"spatial_rank": 3, "stride": 2},
        {"opset": 11},
    ],
)
def test_full_rank_rewrite_of_synthetic_pointwise_convs_is_exact(d, kwargs):
    model = conv_model(24, 36, **kwargs)
    result = ttgraph.compress(model, cores=d, rank_ratio=1.0)
    shape = [1, 24, 9, 10, 4][: 2 + kwargs.get("spatial_rank", 2)]
    assert_exact(compare_outputs(model, result.model, [feed_for(model, shape)]), 1e-5)
    assert result.report.layers[0].cores == d


def test_dynamic_batch_and_spatial_dims_are_kept_and_run_at_any_size():
    model = conv_model(24, 36, hw=("h", "w"), batch="n", stride=2)
    result = ttgraph.compress(model, cores=3, rank_ratio=1.0)
    assert result.report.layers[0].macs_before is None
    out_x = [d.dim_param for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert out_x[0] == "n" and out_x[2:] == ["h", "w"]
    for shape in ([1, 24, 7, 5], [3, 24, 16, 12]):
        assert_exact(compare_outputs(model, result.model, [feed_for(model, shape)]), 1e-5)


def test_a_stale_static_value_info_does_not_pin_a_dynamic_batch():
    """A batch-1 export made dynamic by editing its input keeps value_info and outputs at batch 1."""
    model = conv_model(16, 24, batch="n", hw=(8, 8))
    model.graph.value_info.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 24, 8, 8]))
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    assert result.report.layers[0].cores == 2
    assert_exact(compare_outputs(model, result.model, [feed_for(model, [2, 16, 8, 8])]), 1e-5)


def relu_between_kron_convs(stale_batch1: bool) -> onnx.ModelProto:
    """x[n,16,8,8] → Conv → Relu → Conv, both weights A ⊗ B (TT rank 1 over modes 4×4, so a budget picks TT
    layers); optionally the value_info a batch-1 export leaves on the Relu's output, which feeds a 1×1."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(
            np.kron(rng.standard_normal((4, 4)), rng.standard_normal((4, 4))).astype(np.float32).reshape(16, 16, 1, 1),
            name,
        )
        for name in ("w1", "w2")
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], name="c1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="c2"),
    ]
    stale = [helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 16, 8, 8])] if stale_batch1 else []
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 8, 8])],
        inits,
        value_info=stale,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_stale_value_info_on_a_tt_layers_input_does_not_pin_its_run_time_shape():
    """onnxruntime trusts value_info over its own inference: a kept batch-1 size would fold the TT layer's
    run-time Shape and break the written model at every other batch."""
    model = relu_between_kron_convs(stale_batch1=True)
    exact = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    calib = [feed_for(model, [1, 16, 8, 8], seed=s) for s in range(12)]
    budget = ttgraph.compress(model, calibration=calib, macs_ratio=0.5, cores=2, compensate=False)
    for result in (exact, budget):
        assert all(layer.cores == 2 for layer in result.report.layers)
        assert_exact(compare_outputs(model, result.model, [feed_for(model, [3, 16, 8, 8])]), 1e-4)


def test_a_conv_whose_size_depends_on_an_input_value_reads_it_at_run_time():
    """Static input dims, but a Pad whose pads are an input: a shape probed on zeros must not be baked in."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"), helper.make_node("Conv", ["p", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8]),
            helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, None, None])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    assert result.report.layers[0].cores == 2
    feed = {"x": feed_for(model, [1, 16, 8, 8])["x"], "pads": np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64)}
    assert_exact(compare_outputs(model, result.model, [feed]), 1e-5)


def test_a_budget_counts_macs_at_the_first_samples_size_but_keeps_the_dynamic_dims():
    # W = A ⊗ B: exactly TT rank 1 over modes 4×4, so the budget picks a TT layer, whose output shape is then
    # read at run time
    rng = np.random.default_rng(0)
    model = conv_model(16, 16, batch="n", hw=("h", "w"), bias=False)
    kron = np.kron(rng.standard_normal((4, 4)), rng.standard_normal((4, 4))).astype(np.float32)
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(kron.reshape(16, 16, 1, 1), "w"))
    calib = [feed_for(model, [1, 16, 8, 8], seed=s) for s in range(12)]
    result = ttgraph.compress(model, calibration=calib, macs_ratio=0.5, cores=2, compensate=False)
    assert result.report.layers[0].cores == 2
    assert result.report.options["input_shapes"] == {"x": [1, 16, 8, 8]}
    assert result.report.options["input_shapes_from"] == "calibration"
    assert result.report.totals["macs_before"] == 16 * 16 * 64
    dims = [d.dim_param or d.dim_value for d in result.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["n", 16, "h", "w"]
    assert_exact(compare_outputs(model, result.model, [feed_for(model, [3, 16, 10, 6])]), 1e-4)
    assert_exact(result.verify([feed_for(model, [2, 16, 5, 7])]), 1e-4)


def test_samples_of_several_sizes_calibrate_a_params_budget_and_are_refused_a_macs_one():
    """A list of a pipeline's real inputs, of several sizes, was refused from the second size on ("the first
    calibration sample fixed the model's dynamic dims"), where a generator of the same feeds calibrated the
    dynamic model; now both do, and give the same model."""
    model = conv_model(16, 24, batch="n", hw=("h", "w"))
    calib = [feed_for(model, [1, 16, 8 + 2 * (s % 3), 8], seed=s) for s in range(10)]
    from_list = ttgraph.compress(model, calibration=calib, params_ratio=0.5, holdout=0, compensate=False)
    from_generator = ttgraph.compress(model, calibration=iter(calib), params_ratio=0.5, holdout=0, compensate=False)
    assert from_list.model.SerializeToString() == from_generator.model.SerializeToString()
    assert from_list.report.layers[0].format == "lowrank" and from_list.report.totals["macs_before"] is None
    for data in (calib, iter(calib)):
        with pytest.raises(ttgraph.TTGraphError, match="input dims are dynamic: .* samples of one size"):
            ttgraph.compress(model, calibration=data, macs_ratio=0.5, holdout=0)


def test_an_empty_list_attribute_elsewhere_survives_the_rewrite_and_the_lowering():
    """Squeeze-11 with axes=[] (onnxruntime squeezes every size-1 dim): graphsurgeon cannot export it alone."""
    model = conv_model(16, 24, hw=(8, 8), opset=11)
    model.ir_version = 6
    relu_out = model.graph.node[-1].output[0]
    model.graph.node[-1].output[0] = "r"
    squeeze = helper.make_node("Squeeze", ["g"], [relu_out], name="squeeze")
    squeeze.attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    model.graph.node.extend([helper.make_node("GlobalAveragePool", ["r"], ["g"]), squeeze])
    model.graph.output[0].CopyFrom(helper.make_tensor_value_info(relu_out, TensorProto.FLOAT, [24]))
    onnx.checker.check_model(model)
    for cores in (1, 2):
        result = ttgraph.compress(model, cores=cores, rank_ratio=1.0)
        kept = [n for n in result.model.graph.node if n.op_type == "Squeeze"]
        assert [a.name for a in kept[0].attribute] == ["axes"]
        assert_exact(compare_outputs(model, result.model, [feed_for(model, [1, 16, 8, 8])]), 1e-5)


def test_prime_channel_counts_fall_back_to_lowrank_with_a_note():
    model = conv_model(13, 17)
    result = ttgraph.compress(model, cores=3, rank_ratio=1.0)
    layer = result.report.layers[0]
    assert (layer.format, layer.cores) == ("lowrank", 1)
    assert "cannot both split into 3 modes" in layer.note
    assert_exact(compare_outputs(model, result.model, [feed_for(model, [1, 13, 9, 10])]), 1e-5)


def test_opset_9_strided_layers_use_lowrank_instead_of_a_strided_slice():
    model = conv_model(24, 36, stride=2, opset=9)
    result = ttgraph.compress(model, cores=2, rank_ratio=1.0)
    assert result.report.layers[0].cores == 1
    assert "needs Slice with steps (opset ≥ 10, the model has 9)" in result.report.layers[0].note
    assert_exact(compare_outputs(model, result.model, [feed_for(model, [1, 24, 9, 10])]), 1e-5)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_rewritten_graph_is_plain_onnx_that_passes_the_full_checker(d):
    model = conv_model(48, 96, stride=2)
    result = ttgraph.compress(model, cores=d, rank=6)
    onnx.checker.check_model(result.model, full_check=True)
    onnx.shape_inference.infer_shapes(result.model, strict_mode=True)
    ops = {n.op_type for n in result.model.graph.node}
    assert not ops & {"Einsum", "Transpose"}
    assert ops <= {"Conv", "MatMul", "Reshape", "Slice", "Add", "Relu"}
    assert {n.name for n in result.model.graph.node} - {"relu"} == {n.name for n in new_nodes(result.model, "conv")}
    assert ("Conv" in ops) == (d == 1)


def test_compress_never_mutates_a_model_given_in_memory():
    model = conv_model(16, 16)
    snapshot = copy.deepcopy(model)
    ttgraph.compress(model, cores=2, rank=2)
    assert model == snapshot


def test_reduced_rank_output_is_close_to_but_not_equal_to_the_original():
    model = conv_model(32, 32)
    full = ttgraph.compress(model, cores=2, rank_ratio=1.0).model
    low = ttgraph.compress(model, cores=2, rank=2).model
    feed = feed_for(model, [1, 32, 9, 10])
    ref, a, b = (session(m).run(None, feed)[0] for m in (model, full, low))
    assert np.abs(a - ref).max() < 1e-4 < np.abs(b - ref).max()
