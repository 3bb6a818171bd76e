"""Model I/O: every source form loads the same model, external data works both ways, writes are atomic."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from tests.conftest import conv_model, feed_for, sha256
from ttgraph import model_io
from ttgraph.errors import TTGraphError
from ttgraph.verify import compare_outputs


def test_path_bytes_and_proto_load_the_same_model(tmp_path):
    model = conv_model(8, 8)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    loaded = [model_io.load_model(path), model_io.load_model(path.read_bytes()), model_io.load_model(model)]
    assert all(m == model for m in loaded)
    assert loaded[2] is not model


def test_external_data_model_loads_compresses_and_saves(tmp_path):
    model = conv_model(64, 64, hw=(6, 6))
    src = tmp_path / "src" / "ext.onnx"
    src.parent.mkdir()
    onnx.save_model(copy.deepcopy(model), src, save_as_external_data=True, location="ext.weights", size_threshold=0)
    before = {p.name: sha256(p) for p in src.parent.iterdir()}
    result = ttgraph.compress(src, cores=2, rank_ratio=1.0)
    out = tmp_path / "out.onnx"
    result.save(out)
    reloaded = onnx.load(out)
    errors = compare_outputs(model, reloaded, [feed_for(model, [1, 64, 6, 6])])
    assert errors[0].max_rel < 1e-5
    assert {p.name: sha256(p) for p in src.parent.iterdir()} == before
    for victim in (src.parent / "ext.weights", src):  # neither may be replaced, by the model or a report
        with pytest.raises(TTGraphError, match="output path is the input file"):
            result.save(victim)
        with pytest.raises(TTGraphError, match="output path is the input file"):
            result.save(tmp_path / "other.onnx", report_path=victim)
    out_cli = subprocess.run(
        [sys.executable, "-m", "ttgraph", "compress", src, "-o", src.parent / "ext.weights", "--rank", "2"],
        capture_output=True,
        text=True,
    )
    assert out_cli.returncode == 2 and "output path is the input file" in out_cli.stderr
    assert {p.name: sha256(p) for p in src.parent.iterdir()} == before


def test_a_model_in_memory_whose_external_data_was_not_loaded_is_refused(tmp_path, monkeypatch):
    """Loaded with load_external_data=False, its tensors point at a file name: read from the current directory
    they took another model's weights of the same layout there, silently (an exact rewrite 126 % off)."""
    src = tmp_path / "a" / "m.onnx"
    src.parent.mkdir()
    onnx.save_model(conv_model(16, 16), src, save_as_external_data=True, location="m.weights", size_threshold=0)
    other = tmp_path / "b"
    other.mkdir()
    onnx.save_model(conv_model(16, 16, seed=1), other / "m.onnx", save_as_external_data=True, location="m.weights",
                    size_threshold=0)  # fmt: skip
    monkeypatch.chdir(other)
    proto = onnx.load(src, load_external_data=False)
    needle = "<(model|bytes)>: tensor '.*' is stored in an external file .'m.weights'. that was not loaded"
    for source in (proto, proto.SerializeToString()):
        with pytest.raises(TTGraphError, match=needle):
            ttgraph.compress(source, rank_ratio=1.0)
    # by its path, or loaded with its data, it is the model in a/
    assert ttgraph.compress(src, rank_ratio=1.0).report.layers
    assert ttgraph.compress(onnx.load(src), rank_ratio=1.0).report.layers


def test_missing_external_data_file_is_a_clear_error(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(conv_model(16, 16), src, save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(TTGraphError, match="cannot load external data"):
        model_io.load_model(src)


def test_models_over_the_protobuf_limit_are_saved_with_external_data(tmp_path, monkeypatch):
    # Exercise the > 2 GB branch on a small model by lowering the limit; the files written are real.
    monkeypatch.setattr(model_io, "PROTOBUF_LIMIT", 1000)
    model = conv_model(64, 64)
    out = tmp_path / "big.onnx"
    model_io.save_model(model, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert out.stat().st_size < 1000
    reloaded = onnx.load(out)
    for a, b in zip(reloaded.graph.initializer, model.graph.initializer, strict=True):
        assert (a.name, numpy_helper.to_array(a).tolist()) == (b.name, numpy_helper.to_array(b).tolist())
    assert model.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT  # the caller's model untouched


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    model_io.save_model(conv_model(8, 8), out)
    assert onnx.load(out) == conv_model(8, 8)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_outputs_named_by_a_symbolic_link_are_written_through_it(tmp_path):
    """A link "latest.onnx → v3.onnx": the rename replaced the link by a plain file and left v3.onnx as it was."""
    from ttgraph.cli import main

    (tmp_path / "v3").mkdir()
    real, report = tmp_path / "v3" / "m.onnx", tmp_path / "v3" / "r.json"
    real.write_bytes(b"old")
    report.write_text("{}")
    (tmp_path / "latest.onnx").symlink_to(real)
    (tmp_path / "latest.json").symlink_to(report)
    src = tmp_path / "src.onnx"
    onnx.save(conv_model(8, 8), src)
    out, json_out = tmp_path / "latest.onnx", tmp_path / "latest.json"
    assert main(["compress", str(src), "-o", str(out), "--rank", "2", "--report", str(json_out), "--quiet"]) == 0
    assert out.is_symlink() and json_out.is_symlink()
    assert onnx.load(real).graph.node and '"layers"' in report.read_text()
    assert sorted(p.name for p in (tmp_path / "v3").iterdir()) == ["m.onnx", "r.json"]
    model_io.save_model(conv_model(4, 4), out)  # the library too
    assert out.is_symlink() and onnx.load(real) == conv_model(4, 4)
    (tmp_path / "loop-a.onnx").symlink_to(tmp_path / "loop-b.onnx")
    (tmp_path / "loop-b.onnx").symlink_to(tmp_path / "loop-a.onnx")
    for source in (None, src):  # with a source to compare with, the comparison raised RuntimeError, a traceback
        with pytest.raises(TTGraphError, match="loop-a.onnx: output path is a symbolic link that loops"):
            model_io.save_model(conv_model(4, 4), tmp_path / "loop-a.onnx", source=source)
    (tmp_path / "src-link.onnx").symlink_to(src)  # a link to the input is still the input
    with pytest.raises(TTGraphError, match="output path is the input file"):
        model_io.save_model(conv_model(4, 4), tmp_path / "src-link.onnx", source=src)


def test_input_shapes_fix_dynamic_dims_and_reject_conflicts():
    model = conv_model(8, 8, hw=("h", "w"), batch="n")
    fixed = model_io.load_model(model, {"x": [2, 8, 5, 7]})
    assert model_io.input_dims(fixed.graph.input[0]) == [2, 8, 5, 7]
    with pytest.raises(TTGraphError, match="fixed size 8 on axis 1"):
        model_io.load_model(model, {"x": [1, 3, 5, 7]})
    with pytest.raises(TTGraphError, match="rank 4"):
        model_io.load_model(model, {"x": [1, 8, 5]})


def test_result_save_refuses_to_overwrite_its_source(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save_model(conv_model(8, 8), src)
    before = sha256(src)
    result = ttgraph.compress(src, rank=2)
    with pytest.raises(TTGraphError, match="output path is the input"):
        result.save(src)
    with pytest.raises(TTGraphError, match="output path is the input"):
        result.save(tmp_path / "ok.onnx", report_path=src)
    assert sha256(src) == before
    assert not (tmp_path / "ok.onnx").exists()
    os.chdir(tmp_path)
    with pytest.raises(TTGraphError, match="output path is the input"):
        result.save(Path("m.onnx"))


def _sparse(dense: np.ndarray, name: str) -> onnx.SparseTensorProto:
    idx = np.flatnonzero(dense).astype(np.int64)
    values = numpy_helper.from_array(dense.reshape(-1)[idx], name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(idx, f"{name}_idx"), list(dense.shape))


@pytest.mark.parametrize("where", ["weight", "shift", "constant"])
def test_sparse_tensors_are_read_as_their_values(where):
    """A pruned weight, a per-channel shift or a Constant stored sparse: onnx-graphsurgeon reads them as zeros."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 16, 1, 1)).astype(np.float32)
    w[np.abs(w) < 1] = 0
    shift = np.zeros((1, 24, 1, 1), np.float32)
    shift[0, 3], shift[0, 7] = 1.5, -2.0
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Add", ["c", "shift"], ["y"], name="add"),
    ]
    dense = {"w": w, "shift": shift}
    stored = {"weight": "w", "shift": "shift", "constant": "shift"}[where]  # the tensor not stored dense
    model = helper.make_model(
        helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 24, 8, 8])],
            [numpy_helper.from_array(v, k) for k, v in dense.items() if k != stored],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    if where == "constant":
        model.graph.node.insert(0, helper.make_node("Constant", [], ["shift"], sparse_value=_sparse(shift, "s")))
    else:
        model.graph.sparse_initializer.append(_sparse(dense[stored], stored))
    onnx.checker.check_model(model)
    result = ttgraph.compress(model, rank_ratio=1.0)
    assert [layer.name for layer in result.report.layers] == ["conv"]
    assert result.report.layers[0].weight_error < 1e-6
    feed = {"x": rng.standard_normal((1, 16, 8, 8)).astype(np.float32)}
    for e in compare_outputs(model, result.model, [feed]):
        assert e.max_rel < 1e-5, e


def test_doc_strings_and_metadata_of_nodes_inputs_outputs_and_graph_are_kept(tmp_path):
    """An exporter's provenance (pkg.torch.onnx.* on every node) and the author's notes survive the rewrite."""
    model = conv_model(16, 24, hw=(8, 8), opset=18)
    model.ir_version = 10
    relu = model.graph.node[-1]
    relu.doc_string = "relu doc"
    relu.metadata_props.add(key="pkg.torch.onnx.class_hierarchy", value="['Net', 'ReLU']")
    model.graph.input[0].doc_string = "RGB image, 0..1"
    model.graph.input[0].metadata_props.add(key="input.key", value="v")
    model.graph.output[0].doc_string = "features"
    model.graph.metadata_props.add(key="graph.key", value="v")
    onnx.checker.check_model(model)
    ttgraph.compress(model, rank=4).save(tmp_path / "out.onnx")
    out = onnx.load(tmp_path / "out.onnx")
    kept = next(n for n in out.graph.node if n.op_type == "Relu")
    assert kept.doc_string == "relu doc"
    assert [(p.key, p.value) for p in kept.metadata_props] == [("pkg.torch.onnx.class_hierarchy", "['Net', 'ReLU']")]
    assert out.graph.input[0].doc_string == "RGB image, 0..1"
    assert [p.key for p in out.graph.input[0].metadata_props] == ["input.key"]
    assert out.graph.output[0].doc_string == "features"
    assert [p.key for p in out.graph.metadata_props] == ["graph.key"]


def test_training_info_that_trains_a_replaced_weight_is_dropped():
    from tests.test_compensate import stacked_convs

    model = stacked_convs()
    info = onnx.TrainingInfoProto()
    new_w = helper.make_tensor_value_info("w_new", TensorProto.FLOAT, [12, 12, 1, 1])
    info.algorithm.CopyFrom(helper.make_graph([helper.make_node("Identity", ["w1"], ["w_new"])], "step", [], [new_w]))
    info.update_binding.add(key="w1", value="w_new")
    model.training_info.append(info)
    onnx.checker.check_model(model)
    assert len(ttgraph.compress(model, rank=4, lower=False).model.training_info) == 0  # 'w1' is gone
    assert len(ttgraph.compress(model, rank=4, layers=["conv2"]).model.training_info) == 1  # 'w1' is kept


def test_a_graph_output_declared_without_a_shape_gets_the_inferred_one():
    """make_tensor_value_info(name, type, None) writes no shape: onnxruntime runs such a model, onnx.checker
    refused it ("Field 'shape' of 'type' is required but missing.", naming nothing)."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")

    def model(x_shape):
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            [w],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    given = model([1, 3, 4, 4])
    loaded = model_io.load_model(given)
    assert model_io.input_dims(loaded.graph.output[0]) == [1, 4, 4, 4]
    assert not given.graph.output[0].type.tensor_type.HasField("shape")  # the caller's proto is not touched
    assert ttgraph.compress(given, rank=2).report.layers[0].format == "lowrank"
    with pytest.raises(TTGraphError, match=r"required but missing\. \(no shape on graph input/output 'x', 'y'\)"):
        model_io.load_model(model(None))


def test_fixed_input_shapes_fix_the_output_dims_they_determine():
    """YOLOv8n written at 1×3×320×320 still declared its output [batch, 22, (floor(height/2 …)]: a runtime that
    reads the declared shapes saw a dynamic model."""
    w = numpy_helper.from_array(np.ones((8, 4, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, "h", "w"])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fixed = model_io.load_model(model, {"x": [2, 4, 6, 5]})
    assert [d.dim_value for d in fixed.graph.output[0].type.tensor_type.shape.dim] == [2, 8, 6, 5]
    written = ttgraph.compress(model, rank=2, input_shapes={"x": [2, 4, 6, 5]}).model
    assert [d.dim_value for d in written.graph.output[0].type.tensor_type.shape.dim] == [2, 8, 6, 5]
