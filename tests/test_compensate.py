"""Error compensation (ttgraph.compensate) on a small synthetic model: the refit is the closed-form ridge
reduced-rank least-squares solution on the compressed network's activations, and it lowers the error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import ttgraph
from ttgraph.api import _analyse, rewrite_allocation
from ttgraph.calibration import collect_statistics, expose_tensors
from ttgraph.compensate import compensate, dependency_levels
from ttgraph.decompose import build_candidates
from ttgraph.verify import session


def stacked_convs() -> onnx.ModelProto:
    """x → Conv 1×1 (12→12, bias) → Relu → r → Conv 1×1 stride 2 (12→10, bias) → y."""
    rng = np.random.default_rng(7)
    mix = rng.standard_normal((12, 12)) * np.linspace(1.5, 0.1, 12)  # a decaying spectrum: low rank loses some
    inits = [
        numpy_helper.from_array(mix.reshape(12, 12, 1, 1).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((10, 12, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2", kernel_shape=[1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scale = np.linspace(2.0, 0.2, 12, dtype=np.float32)[None, :, None, None]
    return [{"x": (rng.standard_normal((1, 12, 8, 8)).astype(np.float32) * scale + 0.3)} for _ in range(n)]


def rows(model: onnx.ModelProto, tensor: str, data: list[dict[str, np.ndarray]], stride: int) -> np.ndarray:
    exposed, fetch = expose_tensors(model, [(tensor, np.dtype(np.float32))])
    sess = session(exposed)
    out = [sess.run(fetch, f)[0][:, :, ::stride, ::stride] for f in data]
    return np.concatenate([a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]) for a in out]).astype(np.float64)


def output_error(original: onnx.ModelProto, model: onnx.ModelProto, data: list[dict[str, np.ndarray]]) -> float:
    a, b = session(original), session(model)
    ref = np.concatenate([a.run(None, f)[0].ravel() for f in data])
    got = np.concatenate([b.run(None, f)[0].ravel() for f in data])
    return float(np.linalg.norm(ref - got) / np.linalg.norm(ref))


def setup(calib: list[dict[str, np.ndarray]]):
    model = stacked_convs()
    _, found, _ = _analyse(model)
    stats = collect_statistics(model, found.candidates, calib)
    layers = [build_candidates(c, stats.layers[c.label], metric="params") for c in found.candidates]
    choices = {
        lc.label: next(c for c in lc.candidates if c.kind == "lowrank" and c.ranks[1] == rank)
        for lc, rank in zip(layers, (5, 4), strict=True)
    }
    return model, found, layers, choices


def test_refit_is_the_closed_form_ridge_reduced_rank_solution_on_compressed_inputs():
    calib = feeds(6, seed=1)
    model, found, layers, choices = setup(calib)
    conv1, conv2 = found.candidates
    assert dependency_levels(model, found.candidates) == {conv1.label: 0, conv2.label: 1}

    def build(fits):
        return rewrite_allocation(model, layers, choices, fits)

    comp = compensate(model, layers, choices, calib, build=build, damping=0.01)
    assert comp.passes == 2 and set(comp.fits) == {conv1.label, conv2.label}
    # conv2 was refitted on the inputs of the network whose conv1 is already compensated: redo it in numpy.
    upstream = build({conv1.label: comp.fits[conv1.label]})
    xt = rows(upstream, "r", calib, 2)  # what the compressed network feeds conv2 (stride 2 applied)
    x = rows(model, "r", calib, 2)
    w = np.asarray(conv2.weight, np.float64)
    y = x @ w.T + np.asarray(conv2.bias, np.float64)
    xc, yc = xt - xt.mean(0), y - y.mean(0)
    lam = 0.01 * np.trace(xc.T @ xc) / xc.shape[1]
    design = np.vstack([xc, np.sqrt(lam) * np.eye(12)])
    target = np.vstack([yc, np.sqrt(lam) * w.T])
    beta = np.linalg.lstsq(design, target, rcond=None)[0]  # full-rank ridge solution, 12 × 10
    v = np.linalg.svd(design @ beta, full_matrices=False)[2][:4].T  # top-4 right singular vectors, 10 × 4
    w_hat = (beta @ v @ v.T).T
    b_hat = y.mean(0) - w_hat @ xt.mean(0)
    fit = comp.fits[conv2.label]
    assert fit.cores[1].shape == (4, 10, 1, 1)  # the rank (hence the cost) is the allocated one
    np.testing.assert_allclose(fit.approx, w_hat, rtol=1e-4, atol=1e-4 * np.abs(w_hat).max())
    np.testing.assert_allclose(fit.bias, b_hat, rtol=1e-4, atol=1e-4 * np.abs(b_hat).max())
    # errors: each refit no worse on its inputs, and the whole model closer to the original on calibration data
    for label in comp.fits:
        assert comp.calibration_after[label] <= comp.calibration_before[label] + 1e-9
    before = output_error(model, build({}), calib)
    after = output_error(model, build(comp.fits), calib)
    assert after < before


def test_compress_compensates_by_default_and_reports_before_and_after_on_held_out_data(tmp_path):
    model = stacked_convs()
    data = feeds(24, seed=3)
    kwargs = dict(calibration=data, holdout=6, params_ratio=0.75)
    on = ttgraph.compress(model, **kwargs)
    off = ttgraph.compress(model, compensate=False, **kwargs)
    comp = on.report.compensation
    assert off.report.compensation is None
    assert comp["applied"] and comp["samples"] == 18 and comp["passes"] >= 1
    assert on.report.totals == off.report.totals  # same ranks, same cost
    labels = [layer["name"] for layer in comp["layers"]]
    assert labels and all(layer.format != "dense" for layer in on.report.layers if layer.name in labels)
    for row in comp["layers"]:
        assert row["heldout_error_before"] is not None and row["heldout_error_after"] is not None
    before, after = comp["end_to_end"]["before"][0], comp["end_to_end"]["after"][0]
    assert after == on.report.verification["outputs"][0]
    assert before["rel_l2"] == off.report.verification["outputs"][0]["rel_l2"]
    assert after["rel_l2"] < before["rel_l2"]
    on.save(tmp_path / "m.onnx", report_path=tmp_path / "r.json")
    from ttgraph.report_html import render_html

    assert "Error compensation" in render_html(on.report)
    again = ttgraph.compress(model, **kwargs)
    assert again.model.SerializeToString() == on.model.SerializeToString()


def test_dense_option_refits_kept_dense_layers_downstream_of_compressed_ones():
    calib = feeds(6, seed=2)
    model, found, layers, choices = setup(calib)
    conv1, conv2 = found.candidates
    choices[conv2.label] = layers[1].dense  # conv2 stays dense, sees conv1's error

    def build(fits):
        return rewrite_allocation(model, layers, choices, fits)

    plain = compensate(model, layers, choices, calib, build=build)
    assert set(plain.fits) == {conv1.label}
    both = compensate(model, layers, choices, calib, build=build, dense=True)
    assert set(both.fits) == {conv1.label, conv2.label} and both.passes == 2
    assert both.fits[conv2.label].weight.shape == (10, 12) and not both.fits[conv2.label].cores
    assert output_error(model, build(both.fits), calib) < output_error(model, build(plain.fits), calib)


def test_compensation_and_lowering_together_when_lowering_folds_away_a_conv_input():
    """A scale (Mul) in front of a 1×1 conv is folded into it by the lowering: the tensor the conv read no longer
    exists in the written model, and the per-layer statistics must still be taken where it does."""
    model = stacked_convs()
    scale = numpy_helper.from_array(np.linspace(0.5, 1.5, 12, dtype=np.float32).reshape(1, 12, 1, 1), "s")
    model.graph.initializer.append(scale)
    model.graph.node[0].input[0] = "xs"  # x → Mul(s) → xs → conv1
    model.graph.node.insert(0, helper.make_node("Mul", ["x", "s"], ["xs"], name="scale"))
    onnx.checker.check_model(model)
    options = dict(calibration=feeds(24, 1), holdout=8, macs_ratio=0.4, rank_multiple=2)
    result = ttgraph.compress(model, **options)
    assert any(p["count"] for p in result.report.lowering["passes"])
    assert "xs" not in {t for n in result.model.graph.node for t in n.input}  # folded away
    layers = {layer["name"]: layer for layer in result.report.compensation["layers"]}
    assert set(layers) == {"conv1", "conv2"}
    assert layers["conv2"]["heldout_error_after"] < layers["conv2"]["heldout_error_before"]  # conv1's error undone
    plain = ttgraph.compress(model, compensate=False, **options)
    assert output_error(model, result.model, feeds(8, 99)) < 0.95 * output_error(model, plain.model, feeds(8, 99))


def test_activations_beyond_float32_products_are_a_one_line_error_naming_the_layer():
    """Samples a thousand orders of magnitude off (unscaled data in a float model) overflow the float32
    products compensation accumulates; the error says so instead of an eigensolver's LinAlgError."""
    huge = [{"x": f["x"] * np.float32(1e30)} for f in feeds(12, 3)]
    with pytest.raises(ttgraph.errors.TTGraphError, match=r"overflow.*scaled as the model expects\? \(conv"):
        ttgraph.compress(stacked_convs(), calibration=huge, holdout=4, macs_ratio=0.4, rank_multiple=2)


def test_the_compensation_samples_are_read_once_not_once_per_level():
    """Images decode and resize on every read: the passes after the first reuse the samples they read."""
    calib = feeds(6, seed=1)
    model, found, layers, choices = setup(calib)
    reads = []

    class Counted:
        reiterable, length = True, len(calib)

        def __iter__(self):
            for i, feed in enumerate(calib):
                reads.append(i)
                yield feed

    comp = compensate(
        model,
        layers,
        choices,
        Counted(),
        build=lambda fits: rewrite_allocation(model, layers, choices, fits),
        samples=4,
    )
    assert comp.passes == 2 and sorted(reads) == [0, 1, 2, 3]


def test_a_generator_is_compensated_on_the_samples_kept_from_its_one_pass():
    """A one-pass source (generator, data reader) was compressed without compensation, on by default, with only
    a reason in the report (held-out agreement 0.5 against 0.8 on the classifier): its first samples are now kept
    as they stream past, and the result is the one a list of the same samples gives."""
    model = stacked_convs()
    data = feeds(24, seed=3)
    check = feeds(4, seed=9)
    kwargs = dict(holdout=0, params_ratio=0.75, verify_feeds=check, compensate_samples=10)
    listed = ttgraph.compress(model, calibration=data, **kwargs)
    streamed = ttgraph.compress(model, calibration=(f for f in data), **kwargs)
    comp = streamed.report.compensation
    assert comp["applied"] and comp["samples"] == 10
    assert comp == {**listed.report.compensation, "seconds": comp["seconds"]}
    assert streamed.model.SerializeToString() == listed.model.SerializeToString()
    # by default as many as hold 2^23 input values: all 22 the statistics read (samples 9 and 19 held out)
    assert ttgraph.compress(model, calibration=iter(data), params_ratio=0.75).report.compensation["samples"] == 22


def test_an_exhausted_generator_says_it_may_have_been_read_already():
    model = stacked_convs()
    gen = (f for f in feeds(4, seed=1))
    list(gen)
    with pytest.raises(ttgraph.TTGraphError, match=r"gave no samples \(a generator or reader already read"):
        ttgraph.compress(model, calibration=gen, params_ratio=0.75)
