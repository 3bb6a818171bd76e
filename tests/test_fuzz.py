"""Fuzzing the loader and the passes: random graphs of Conv/Relu/Add/Concat with random 1×1 convs.

After a full-rank compress, every result passes onnx.checker and reproduces the original in onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from ttgraph.errors import TTGraphError
from ttgraph.model_io import load_model
from ttgraph.verify import compare_outputs


@st.composite
def random_graphs(draw):
    c0 = draw(st.integers(1, 12))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    tensors = {"x": (c0, h, w)}  # name → (channels, H, W)
    nodes, inits = [], []
    for k in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["Conv", "Conv", "Conv", "Relu", "Add", "Concat"]))
        src = draw(st.sampled_from(sorted(tensors)))
        c, th, tw = tensors[src]
        out = f"t{k}"
        if op == "Conv":
            cout, stride = draw(st.integers(1, 16)), draw(st.sampled_from([1, 1, 2]))
            dil = draw(st.sampled_from([1, 2]))
            weight = np.random.default_rng(k).standard_normal((cout, c, 1, 1)).astype(np.float32)
            inits.append(numpy_helper.from_array(weight, f"w{k}"))
            inputs = [src, f"w{k}"]
            if draw(st.booleans()):
                inits.append(numpy_helper.from_array(np.full(cout, 0.1 * k, np.float32), f"b{k}"))
                inputs.append(f"b{k}")
            nodes.append(
                helper.make_node("Conv", inputs, [out], name=f"conv{k}", strides=[stride] * 2, dilations=[dil] * 2)
            )
            tensors[out] = (cout, (th - 1) // stride + 1, (tw - 1) // stride + 1)
        elif op == "Relu":
            nodes.append(helper.make_node("Relu", [src], [out], name=f"relu{k}"))
            tensors[out] = tensors[src]
        else:
            partners = sorted(
                n for n, s in tensors.items() if s[1:] == (th, tw) and (op == "Concat" or s == (c, th, tw))
            )
            other = draw(st.sampled_from(partners))
            if op == "Add":
                nodes.append(helper.make_node("Add", [src, other], [out], name=f"add{k}"))
                tensors[out] = (c, th, tw)
            else:
                nodes.append(helper.make_node("Concat", [src, other], [out], name=f"cat{k}", axis=1))
                tensors[out] = (c + tensors[other][0], th, tw)
    last = nodes[-1].output[0]
    outputs = [helper.make_tensor_value_info(last, TensorProto.FLOAT, [1, *tensors[last]])]
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c0, h, w])], outputs, inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, draw(st.integers(1, 3))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_full_rank_compress_of_random_graphs_is_valid_and_exact(case):
    model, cores = case
    result = ttgraph.compress(model, cores=cores, rank_ratio=1.0)
    onnx.checker.check_model(result.model, full_check=True)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feed = {"x": np.random.default_rng(0).standard_normal(dims).astype(np.float32)}
    for error in compare_outputs(model, result.model, [feed]):
        assert error.max_rel <= 1e-4 or error.max_abs <= 1e-5, error


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=256))
def test_loader_turns_any_bytes_into_a_model_or_one_clear_error(data):
    try:
        load_model(data)
    except TTGraphError as err:
        assert "\n" not in err.one_line() and err.one_line().startswith("<bytes>: ")
