"""A model over protobuf's 2 GiB limit, end to end through the CLI: external data in, external data out.

Protobuf cannot serialize, or even measure, a message of 2 GiB or more, so every step that handles the whole
model (size checks, onnx.checker, shape inference, onnxruntime sessions, saving) must take another road. The
model is generated here, written straight in external-data form (two 1.1 GB tables beside a real 1×1 conv),
the way large exported models arrive; nothing is vendored.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 64
TABLE = 280_000_000  # float32 elements per table: two tables hold 2.24 GB


def _external(name: str, array: np.ndarray, data: Path, handle) -> TensorProto:
    offset = handle.tell()
    array.tofile(handle)
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(array.nbytes))):
        tensor.external_data.add(key=key, value=value)
    return tensor


@pytest.fixture(scope="module")
def big_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big")
    path, data = folder / "big.onnx", folder / "big.onnx.data"
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32)
    with open(data, "wb") as handle:
        tables = []
        for i in range(2):
            table = np.ones(TABLE, dtype=np.float32)
            table[:CHANNELS] = rng.standard_normal(CHANNELS)
            tables.append(_external(f"table{i}", table, data, handle))
            del table
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="pw"),
        helper.make_node("Gather", ["table0", "idx"], ["g0"], name="gather0"),
        helper.make_node("Gather", ["table1", "idx"], ["g1"], name="gather1"),
        helper.make_node("Add", ["g0", "g1"], ["g"], name="sum"),
        helper.make_node("Reshape", ["g", "shape"], ["g4"], name="reshape"),
        helper.make_node("Add", ["c", "g4"], ["y"], name="add"),
    ]
    inits = [
        numpy_helper.from_array(weight, "w"),
        *tables,
        numpy_helper.from_array(np.arange(CHANNELS, dtype=np.int64), "idx"),
        numpy_helper.from_array(np.array([1, CHANNELS, 1, 1], dtype=np.int64), "shape"),
    ]
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, CHANNELS, 8, 8])],
    )
    graph.initializer.extend(inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    assert data.stat().st_size > 2**31
    return path


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            sha.update(chunk)
    return sha.hexdigest()


def _ttgraph(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ttgraph", *args], capture_output=True, text=True, timeout=900)


def test_a_model_over_2_gib_compresses_to_external_data_and_runs_like_the_original(big_model, tmp_path):
    import onnxruntime as ort

    before = {p.name: _digest(p) for p in (big_model, big_model.with_name("big.onnx.data"))}
    inspected = _ttgraph("inspect", str(big_model), "--json")
    assert inspected.returncode == 0, inspected.stderr
    assert [c["name"] for c in json.loads(inspected.stdout)["layers"]] == ["pw"]

    out = tmp_path / "big.tt.onnx"
    done = _ttgraph(
        "compress", str(big_model), "-o", str(out), "--rank-ratio", "1.0", "--report", str(tmp_path / "r.json")
    )
    assert done.returncode == 0, done.stderr
    assert {p.name: _digest(p) for p in (big_model, big_model.with_name("big.onnx.data"))} == before

    data = out.with_name("big.tt.onnx.data")
    assert out.stat().st_size < 1 << 20 and data.stat().st_size > 2**31  # weights outside, graph inside
    report = json.loads((tmp_path / "r.json").read_text())
    assert [layer["name"] for layer in report["layers"]] == ["pw"]
    assert report["layers"][0]["macs_before"] == CHANNELS * CHANNELS * 64  # shapes were inferred over 2 GiB

    feed = {"x": np.random.default_rng(1).standard_normal((1, CHANNELS, 8, 8)).astype(np.float32)}
    want = ort.InferenceSession(str(big_model), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    rewritten = onnx.load(str(out), load_external_data=False)
    assert "pw" not in {n.name for n in rewritten.graph.node}  # the conv really was rewritten
