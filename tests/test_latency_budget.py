"""Latency budgets: candidates priced by measured onnxruntime time, layers whose factors are not faster stay dense."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ttgraph import latency
from ttgraph.allocate import Budget, allocate
from ttgraph.api import _analyse
from ttgraph.decompose import build_candidates


def two_layer_model() -> onnx.ModelProto:
    """x(1×64×32×32) → thin 1×1 (64→64) → Relu → strided pool → wide 1×1 (64→256) → y."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, 64, 1, 1)).astype(np.float32)
    w2 = rng.standard_normal((256, 64, 1, 1)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="thin"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("MaxPool", ["b"], ["c"], name="pool", kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["c", "w2"], ["y"], name="wide"),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def candidates(model: onnx.ModelProto):
    _, found, _ = _analyse(model)
    return [build_candidates(conv, None, method="weight", rank_multiple=8, metric="macs") for conv in found.candidates]


def test_a_layer_whose_factors_measure_slower_stays_dense_even_where_macs_favour_it(tmp_path, monkeypatch):
    """Measurements injected (the runtime's behaviour is what varies; the allocator's answer to it must not)."""
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(latency, "dense_times", lambda shapes, **_: {s: {32: 1e-3, 8: 2e-3}[s[2]] for s in shapes})
    # the thin high-resolution layer's factors are slower at every rank; the wide one's speed follows its MACs
    monkeypatch.setattr(
        latency,
        "lowrank_speedup",
        lambda cin, cout, h, w, r, **_: 0.8 if h == 32 else cin * cout / (r * (cin + cout)),
    )
    layers = latency.attach_latencies(candidates(two_layer_model()))
    thin, wide = layers
    assert thin.dense.latency == 1_000_000 and wide.dense.latency == 2_000_000
    assert all(c.latency > thin.dense.latency for c in thin.candidates if c.kind == "lowrank")
    assert thin.curve("latency") == [thin.dense]  # slower factors are never on the front
    assert thin.curve("macs") != [thin.dense]  # ... although they save MACs

    alloc = allocate(layers, Budget(latency_ratio=0.8))
    assert alloc.choices["thin"].kind == "dense"
    assert "cheaper than the dense conv in latency" in alloc.reasons["thin"]
    assert alloc.choices["wide"].kind == "lowrank"
    assert alloc.cost_after <= 0.8 * alloc.cost_before


def test_latencies_are_measured_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    model_layers = candidates(two_layer_model())
    first = latency.attach_latencies(model_layers, runs=3, points=2)
    entries = (tmp_path / latency.CACHE_FILE).read_text()
    for layer in first:
        lowrank = [c for c in layer.candidates if c.kind == "lowrank"]
        assert lowrank and all(c.latency and c.latency > 0 for c in layer.candidates)
        assert {c.index for c in layer.candidates} <= {c.index for c in model_layers[first.index(layer)].candidates}

    def no_measuring(*args, **kwargs):
        raise AssertionError("measured again although the cache holds the value")

    monkeypatch.setattr(latency, "time_alternated", no_measuring)
    again = latency.attach_latencies(model_layers, runs=3, points=2)
    assert [[c.latency for c in layer.candidates] for layer in again] == [
        [c.latency for c in layer.candidates] for layer in first
    ]
    assert (tmp_path / latency.CACHE_FILE).read_text() == entries


@pytest.mark.parametrize("bad", ["fast", -5.0, None])
def test_a_cached_timing_that_is_no_positive_number_is_timed_again_with_a_warning(tmp_path, monkeypatch, caplog, bad):
    """An edited cache's "fast" was a 35-line ValueError traceback; its -5.0 a time the allocation believed."""
    import json

    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    model_layers = candidates(two_layer_model())
    first = latency.attach_latencies(model_layers, runs=3, points=2)
    path = tmp_path / latency.CACHE_FILE
    entries = json.loads(path.read_text())
    damaged = dict.fromkeys(entries, bad)
    path.write_text(json.dumps(damaged))
    with caplog.at_level("WARNING", logger="ttgraph.compress"):
        again = latency.attach_latencies(model_layers, runs=3, points=2)
    assert f"{len(entries)} cached timing(s) are not positive numbers" in caplog.text
    assert all(c.latency and c.latency > 0 for layer in again for c in layer.candidates)
    assert set(json.loads(path.read_text())) == set(entries) and len(first) == len(again)
    assert all(v > 0 for v in json.loads(path.read_text()).values())  # timed again and stored over the damage


def test_a_busy_spell_while_the_dense_convs_are_timed_slows_every_layer_alike(tmp_path, monkeypatch):
    """The allocator weighs each layer's share of the 1×1 time. Two layers of equal MACs, timed while another
    process takes the CPU for the first half of the measuring and leaves it for the second (each run reports its
    time as its work × the load of the moment): timed one after the other, the first layer would come out 3× the
    second; timed round-robin they come out equal."""
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    import ttgraph.bench

    shapes = [(64, 128, 16, 16, 1), (128, 64, 16, 16, 1)]
    warmup, runs = 2, 10
    calls = {"n": 0}

    def runner(model, feed, threads):
        work = 1e-3 * model.graph.initializer[0].dims[0] * model.graph.initializer[0].dims[1] / 8192

        def run() -> float:
            calls["n"] += 1
            return work * (3.0 if calls["n"] <= (warmup + runs) * len(shapes) // 2 else 1.0)

        return run

    monkeypatch.setattr(ttgraph.bench, "onnxruntime_runner", runner)
    times = latency.dense_times(shapes, warmup=warmup, runs=runs)
    assert calls["n"] == (warmup + runs) * len(shapes)
    assert times[shapes[0]] == pytest.approx(times[shapes[1]])
    assert latency.dense_times(shapes[:1]) == {shapes[0]: times[shapes[0]]}  # from the cache, nothing run
    assert calls["n"] == (warmup + runs) * len(shapes)


def test_a_cache_that_cannot_be_written_costs_a_warning_not_the_measurements(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(latency.CACHE_ENV, str(blocker / "cache"))  # mkdir under a file fails, even as root
    with caplog.at_level("WARNING", logger="ttgraph.compress"):
        layers = latency.attach_latencies(candidates(two_layer_model()), runs=3, points=2)
    assert all(c.latency and c.latency > 0 for layer in layers for c in layer.candidates)
    assert "measurements not cached" in caplog.text and latency.CACHE_ENV in caplog.text
    assert blocker.read_text() == "not a folder"


def test_latency_timings_live_beside_the_planners_measured_tables(tmp_path, monkeypatch):
    from ttgraph.planner import MeasuredCost

    monkeypatch.delenv(latency.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert latency.cache_path() == tmp_path / "xdg" / "ttgraph" / latency.CACHE_FILE
    assert MeasuredCost(timer=lambda op: 1.0).cache_path.parent == latency.cache_path().parent
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path / "moved"))
    assert latency.cache_path() == tmp_path / "moved" / latency.CACHE_FILE


@pytest.mark.parametrize("ratios", [{"latency_ratio": 0.5, "macs_ratio": 0.5}, {"latency_ratio": 1.5}])
def test_bad_latency_budgets_are_refused(ratios):
    with pytest.raises(Exception, match="latency_ratio"):
        Budget(**ratios)


def test_compress_to_a_latency_budget_measures_allocates_and_reports(tmp_path, monkeypatch):
    """Real timings end to end: a wide compute-bound layer (256→256 at 20²) is worth factoring on any CPU."""
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    w = {
        "w1": rng.standard_normal((256, 64, 1, 1)) / 8,
        "w2": rng.standard_normal((256, 256, 1, 1)) / 16,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="expand"),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="mix"),
    ]
    graph = helper.make_graph(
        nodes,
        "wide",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 20, 20])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 20, 20])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = [{"x": rng.standard_normal((1, 64, 20, 20)).astype(np.float32)} for _ in range(12)]

    from ttgraph import compress

    result = compress(model, calibration=feeds, holdout=4, latency_ratio=0.9, rank_multiple=16)
    alloc = result.report.allocation
    assert alloc["metric"] == "latency" and alloc["budget"]["latency_ratio"] == 0.9
    assert alloc["latency_ratio"] <= 0.9 and alloc["layers_compressed"] >= 1
    assert alloc["latency_measured_on"].startswith("onnxruntime ")  # the device the budget holds for
    assert all(layer.format in ("dense", "lowrank") for layer in result.report.layers)
    assert result.report.verification["outputs"][0]["rel_l2"] < 1  # a real model came out and runs


def test_1d_and_3d_convs_are_timed_as_the_2d_convs_of_as_many_positions():
    """A Conv1d over 1024 positions was not timed at all: every layer 1 ns, and the budget "out of reach"."""
    from tests.conftest import conv_model

    def shape(model):
        (conv,) = _analyse(model)[1].candidates
        return latency.timing_shape(conv)

    assert shape(conv_model(16, 8, hw=(1024, 1), spatial_rank=1)) == (16, 8, 1, 1024, 1)
    assert shape(conv_model(16, 8, hw=(1024, 1), spatial_rank=1, stride=2)) == (16, 8, 1, 1024, 2)
    assert shape(conv_model(16, 8, hw=(6, 5), spatial_rank=3)) == (16, 8, 30, 4, 1)  # D×H×W = 6×5×4
    assert shape(conv_model(16, 8, hw=(6, 5), spatial_rank=3, stride=2)) is None
    assert shape(conv_model(16, 8, hw=("h", "w"))) is None


def test_a_latency_budget_over_layers_none_of_which_can_be_timed_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((32, 32, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=[2, 1])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 4, 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = rng.standard_normal((8, 1, 32, 8, 8)).astype(np.float32)
    from ttgraph import TTGraphError, compress

    with pytest.raises(TTGraphError, match=r"one stride for every axis; none of these can be \(c\): use macs_ratio"):
        compress(model, calibration=feeds, latency_ratio=0.9)


def test_a_float16_models_layers_are_timed_in_float16(tmp_path, monkeypatch):
    """Every layer was timed as a float32 conv, and cached under a key without the type: a float16 model's budget
    read the speed of kernels it never runs."""
    import json

    from onnx import numpy_helper

    monkeypatch.setenv(latency.CACHE_ENV, str(tmp_path))
    model = two_layer_model()
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    layers = latency.attach_latencies(candidates(model), runs=3, points=2)
    assert all(c.latency and c.latency > 0 for layer in layers for c in layer.candidates)
    keys = [json.loads(k) for k in json.loads(latency.cache_path().read_text())]
    assert keys and all(k[-1] == "float16" for k in keys)
    dense, _ = latency.pointwise_models(8, 8, 4, 4, 2, dtype="float16")
    assert dense.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
