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


def as_model(nodes: list, inits: list, output: str = "y") -> onnx.ModelProto:
    """A checked opset-17 model of ``nodes`` from x (1×12×8×8) to ``output``."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 8, 8])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None] * 4)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


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
    return as_model(nodes, inits)


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


def compensated_from(calib: list[dict[str, np.ndarray]], source, samples: int):
    """:func:`compensate` of the :func:`setup` model calibrated on ``calib``, reading ``source``."""
    model, _, layers, choices = setup(calib)
    build = lambda fits: rewrite_allocation(model, layers, choices, fits)  # noqa: E731
    return compensate(model, layers, choices, source, build=build, samples=samples)


def test_the_compensation_samples_are_read_once_not_once_per_level():
    """Images decode and resize on every read: the passes after the first reuse the samples they read."""
    calib = feeds(6, seed=1)
    reads = []

    class Counted:
        reiterable, length = True, len(calib)

        def __iter__(self):
            for i, feed in enumerate(calib):
                reads.append(i)
                yield feed

    comp = compensated_from(calib, Counted(), samples=4)
    assert comp.passes == 2 and sorted(reads) == [0, 1, 2, 3]


def test_compensation_reads_its_samples_spread_over_a_source_that_fetches_by_index():
    """A folder sorted by name often groups one kind of image: the compensation samples are spread over the
    calibration set, each read once, not its first ones."""
    calib = feeds(12, seed=1)
    reads = []

    class Fetching:
        reiterable, length = True, len(calib)

        def fetch(self, index):
            reads.append(index)
            return calib[index]

        def __iter__(self):
            raise AssertionError("read by index, not from the start")

    comp = compensated_from(calib, Fetching(), samples=4)
    assert comp.passes == 2 and comp.samples == 4 and reads == [0, 4, 7, 11]


def test_a_generator_is_compensated_on_the_samples_kept_from_its_one_pass():
    """A one-pass source (generator, data reader) was compressed without compensation, on by default, with only
    a reason in the report (held-out agreement 0.5 against 0.8 on the classifier): its first samples are now kept
    as they stream past, and the result is the one a list of the same samples gives (all of them: a list's
    compensation samples are spread over it, a stream's are its first ones)."""
    model = stacked_convs()
    data = feeds(24, seed=3)
    check = feeds(4, seed=9)
    kwargs = dict(holdout=0, params_ratio=0.75, verify_feeds=check)
    listed = ttgraph.compress(model, calibration=data, **kwargs)
    streamed = ttgraph.compress(model, calibration=(f for f in data), **kwargs)
    comp = streamed.report.compensation
    assert comp["applied"] and comp["samples"] == 24
    assert comp == {**listed.report.compensation, "seconds": comp["seconds"]}
    assert streamed.model.SerializeToString() == listed.model.SerializeToString()
    fewer = ttgraph.compress(model, calibration=(f for f in data), compensate_samples=10, **kwargs)
    assert fewer.report.compensation["samples"] == 10
    # by default as many as hold 2^25 input values: all 22 the statistics read (samples 9 and 19 held out)
    assert ttgraph.compress(model, calibration=iter(data), params_ratio=0.75).report.compensation["samples"] == 22


def test_an_exhausted_generator_says_it_may_have_been_read_already():
    model = stacked_convs()
    gen = (f for f in feeds(4, seed=1))
    list(gen)
    with pytest.raises(ttgraph.TTGraphError, match=r"gave no samples \(a generator or reader already read"):
        ttgraph.compress(model, calibration=gen, params_ratio=0.75)


def branchy_convs() -> onnx.ModelProto:
    """Four levels of 1×1 convs (12 channels) with a skip over two of them and a side branch joined at the end:
    x → a → Relu → r1 → b → s1 = b + r1 → c → s2 = c + x → d; x → e → Relu → (d + e) → y."""
    rng = np.random.default_rng(11)
    spectrum = np.linspace(1.5, 0.1, 12)
    inits, nodes = [], []
    for name in "abcde":
        w = (rng.standard_normal((12, 12)) * spectrum).reshape(12, 12, 1, 1).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{name}"),
            numpy_helper.from_array(rng.standard_normal(12).astype(np.float32), f"b{name}"),
        ]
    conv = lambda name, x: helper.make_node("Conv", [x, f"w{name}", f"b{name}"], [f"{name}o"], name=name)  # noqa: E731
    nodes = [
        conv("a", "x"),
        helper.make_node("Relu", ["ao"], ["r1"]),
        conv("b", "r1"),
        helper.make_node("Add", ["bo", "r1"], ["s1"]),
        conv("c", "s1"),
        helper.make_node("Add", ["co", "x"], ["s2"]),
        conv("d", "s2"),
        conv("e", "x"),
        helper.make_node("Relu", ["eo"], ["re"]),
        helper.make_node("Add", ["do", "re"], ["y"]),
    ]
    return as_model(nodes, inits)


def rank_five_setup(model: onnx.ModelProto, calib):
    """Every 1×1 conv of ``model`` low-rank at rank 5; and the builder of the compressed model."""
    _, found, _ = _analyse(model)
    stats = collect_statistics(model, found.candidates, calib)
    layers = [build_candidates(c, stats.layers[c.label], metric="params") for c in found.candidates]
    choices = {lc.label: next(c for c in lc.candidates if c.kind == "lowrank" and c.ranks[1] == 5) for lc in layers}
    return model, layers, choices, lambda fits: rewrite_allocation(model, layers, choices, fits)


def branchy_setup(calib):
    return rank_five_setup(branchy_convs(), calib)


def test_levels_run_from_the_kept_frontier_give_the_fits_of_runs_from_the_inputs():
    """Each level after the first runs only the nodes past the previous level, from the tensors kept at the cut
    (skips and a side branch cross it); the fits are those of rerunning both models from the inputs per level,
    also when some cuts outgrow the limit (those levels run from the inputs), and when each level rewrites only its
    own piece."""
    calib = feeds(6, seed=4)
    model, layers, choices, build = branchy_setup(calib)
    assert sorted(dependency_levels(model, [lc.conv for lc in layers]).values()) == [0, 0, 1, 2, 3]
    reads = []

    class Counted(list):  # how many passes read the samples
        def __iter__(self):
            reads.append(1)
            return super().__iter__()

    def passes_over_the_samples(**kwargs):
        reads.clear()
        comp = compensate(model, layers, choices, Counted(calib), build=build, **kwargs)
        return comp, len(reads)

    kept, read_kept = passes_over_the_samples()
    rerun, read_rerun = passes_over_the_samples(frontier_bytes=0)
    tensor = 12 * 8 * 8 * 4  # bytes of one 12×8×8 float tensor
    # the cuts hold [x], [x, r1], [x, s1], []: the first is kept (6 samples, both models), the next two run from x
    partly, read_partly = passes_over_the_samples(frontier_bytes=6 * 2 * tensor)
    assert (read_kept, read_partly, read_rerun) == (1, 3, 4)

    def build_part(fits, part):  # each level rewrites only its piece of the original
        return rewrite_allocation(part, layers, choices, fits, check=False, part=True)

    pieces = compensate(model, layers, choices, calib, build=build, build_part=build_part)
    assert kept.passes == rerun.passes == 4 and set(kept.fits) == set("abcde")
    for other in (rerun, partly, pieces):
        assert other.calibration_before == pytest.approx(kept.calibration_before, rel=1e-5)
        for label, fit in kept.fits.items():
            # float32 rounding only (onnxruntime fuses a Conv with the Add after it in one graph, not across a cut),
            # grown by each refit downstream: 3e-6 of the weights at level 2, 3e-5 at level 3
            scale = np.abs(fit.approx).max()
            np.testing.assert_allclose(other.fits[label].approx, fit.approx, rtol=0, atol=2e-4 * scale)
            np.testing.assert_allclose(other.fits[label].bias, fit.bias, rtol=0, atol=2e-4 * np.abs(fit.bias).max())
        assert output_error(model, build(other.fits), calib) == pytest.approx(
            output_error(model, build(kept.fits), calib), rel=1e-4
        )
    assert output_error(model, build(kept.fits), calib) < output_error(model, build({}), calib)


def test_each_node_runs_once_across_the_levels_segments():
    """The segments between consecutive cuts partition the nodes the levels need: no node of the model runs
    twice per sample, however deep it is."""
    from ttgraph.frontier import plan_cuts, segment

    model = branchy_convs()
    targets = [["x"], ["r1"], ["s1"], ["s2"]]  # the levels' conv inputs
    plan = plan_cuts(model, targets)
    # x stays until the skip and the branch have read it; nothing is kept after the last level
    assert plan is not None and plan.frontiers == [["x"], ["x", "r1"], ["x", "s1"], []]
    given = {"x": np.dtype(np.float32)}
    ran = []
    for step, wanted in enumerate(targets):
        part, _ = segment(model, given, [*wanted, *plan.frontiers[step]])
        ran += [node.name or node.output[0] for node in part.graph.node]
        given = dict.fromkeys(plan.frontiers[step], np.dtype(np.float32))
    assert sorted(ran) == ["a", "b", "c", "r1", "s1", "s2"]  # d, e and the last Adds feed no level's input


def test_a_graph_with_control_flow_is_compensated_from_the_inputs():
    """A subgraph reads outer tensors by name, which a cut cannot see: such a graph is not cut, and its levels run
    from the inputs as before."""
    from ttgraph.frontier import plan_cuts

    model = branchy_convs()
    branch = helper.make_graph(
        [helper.make_node("Identity", ["y"], ["z_branch"])],
        "branch",
        [],
        [helper.make_tensor_value_info("z_branch", TensorProto.FLOAT, None)],
    )
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["z"], then_branch=branch, else_branch=branch))
    model.graph.output[0].name = "z"
    onnx.checker.check_model(model)
    assert plan_cuts(model, [["x"], ["r1"]]) is None
    calib = feeds(6, seed=4)
    model, layers, choices, build = rank_five_setup(model, calib)
    comp = compensate(model, layers, choices, calib, build=build)
    assert set(comp.fits) == set("abcde")
    assert output_error(model, build(comp.fits), calib) < output_error(model, build({}), calib)


def odd_cut_model(kind: str) -> onnx.ModelProto:
    """Three 1×1 convs (12 channels) a → b → c, with, crossing the cut between levels: ``"sequence"``, a sequence
    of x and a's activation read by both later levels; ``"constant"``, a conv ``k`` reading an initializer whose
    output joins a's."""
    rng = np.random.default_rng(5)
    inits = []
    for name in "kabc":
        w = (rng.standard_normal((12, 12)) * np.linspace(1.5, 0.1, 12)).reshape(12, 12, 1, 1).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{name}"))
    conv = lambda name, x: helper.make_node("Conv", [x, f"w{name}"], [f"{name}o"], name=name)  # noqa: E731
    if kind == "sequence":
        inits += [numpy_helper.from_array(np.array(i, np.int64), n) for i, n in ((0, "zero"), (1, "one"))]
        nodes = [
            conv("a", "x"),
            helper.make_node("Relu", ["ao"], ["ar"]),
            helper.make_node("SequenceConstruct", ["x", "ar"], ["seq"]),
            helper.make_node("SequenceAt", ["seq", "one"], ["picked"]),
            conv("b", "picked"),
            helper.make_node("SequenceAt", ["seq", "zero"], ["first"]),
            helper.make_node("Add", ["bo", "first"], ["s"]),
            conv("c", "s"),
        ]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((1, 12, 8, 8)).astype(np.float32), "k0"))
        nodes = [
            conv("k", "k0"),
            conv("a", "x"),
            helper.make_node("Add", ["ao", "ko"], ["s0"]),
            helper.make_node("Relu", ["s0"], ["ar"]),
            conv("b", "ar"),
            helper.make_node("Relu", ["bo"], ["br"]),
            conv("c", "br"),
        ]
    return as_model(nodes, inits, "co")


@pytest.mark.parametrize("kind", ["sequence", "constant"])
def test_levels_whose_cut_holds_a_sequence_or_reads_a_constant_are_compensated(kind):
    """A sequence crossing a cut cannot be kept as a tensor (that level and the next run from the inputs); a conv
    reading an initializer gets it from the model, not from a run."""
    model = odd_cut_model(kind)
    data = feeds(10, seed=6)
    result = ttgraph.compress(model, calibration=data, holdout=3, macs_ratio=0.5, rank_multiple=1, compensate_samples=7)
    comp = result.report.compensation
    assert comp["applied"] and comp["passes"] == 3
    # the sequence crosses the cut after level 0 (that level runs from the inputs, then the next tries again)
    assert comp["passes_from_cut"] == {"sequence": 0, "constant": 2}[kind]
    before, after = comp["end_to_end"]["before"][0], comp["end_to_end"]["after"][0]
    assert after["rel_l2"] < before["rel_l2"]


def test_held_out_samples_are_read_once_to_judge_compensation_and_once_to_verify():
    """Judging compensation took four passes over the held-out samples (the end-to-end fidelity and the
    per-layer errors, each without and with it) and verifying one more running the original again; one pass
    runs the original and both compressed models side by side, and verification compares with the original
    outputs it kept. The numbers are those of separate runs."""

    reads = []

    class Counted(list):
        def __iter__(self):
            for i, feed in enumerate(list.__iter__(self)):
                reads.append(i)
                yield feed

    model, check = stacked_convs(), feeds(4, seed=9)
    kwargs = dict(calibration=feeds(24, seed=3), holdout=0, params_ratio=0.75)
    result = ttgraph.compress(model, verify_feeds=Counted(check), **kwargs)
    assert sorted(reads) == [0, 0, 1, 1, 2, 2, 3, 3]
    comp = result.report.compensation
    assert comp["applied"] and comp["kept"]
    from ttgraph.fidelity import heldout_fidelity

    assert comp["end_to_end"]["after"] == heldout_fidelity(model, result.model, check)["outputs"]
    plain = ttgraph.compress(model, compensate=False, verify_feeds=check, **kwargs)
    assert comp["end_to_end"]["before"] == plain.report.verification["outputs"]


def test_compensation_fitted_to_too_few_samples_is_skipped_unless_asked_for_and_unjudged_says_so():
    """Found calling the API with one sample: compensation fitted the direction classifier to it and turned its
    answer on unseen inputs to certainty, with nothing held out to catch it. Fewer than 8 calibration samples: not
    compensated (the reason says how to insist); nothing held out: compensated, and the report says unchecked."""
    model, data = stacked_convs(), feeds(12, seed=4)
    few = ttgraph.compress(model, calibration=data[:3], holdout=0, params_ratio=0.75)
    assert few.report.compensation["applied"] is False
    assert "only 3 calibration samples to fit to" in few.report.compensation["reason"]
    insisted = ttgraph.compress(model, calibration=data[:3], holdout=0, params_ratio=0.75, compensate_samples=3)
    assert insisted.report.compensation["applied"] and insisted.report.compensation["checked"] is False
    enough = ttgraph.compress(model, calibration=data, holdout=0, params_ratio=0.75)
    assert enough.report.compensation["applied"] and enough.report.compensation["checked"] is False
    from ttgraph.report_html import render_html

    assert "Not checked: no samples were held out to judge it on." in render_html(enough.report)
    judged = ttgraph.compress(model, calibration=data, holdout=2, compensate_samples=10, params_ratio=0.75)
    assert judged.report.compensation["checked"] is True
    assert "Not checked" not in render_html(judged.report)


def test_a_first_layer_reads_the_same_error_in_the_layer_table_and_the_compensation_table():
    """Both tables measure a layer's output error relative to ‖XWᵀ‖; the compensation's divided by ‖XWᵀ + b‖,
    so the first layer (nothing compressed before it, the same factors) read 0.1320 there and 0.1686 here."""
    result = ttgraph.compress(stacked_convs(), calibration=feeds(24, seed=1), holdout=8, params_ratio=0.55)
    table = {layer.name: layer for layer in result.report.layers}
    comp = {row["name"]: row for row in result.report.compensation["layers"]}
    first = table["conv1"]
    assert first.format == "lowrank"
    assert comp["conv1"]["calibration_error_before"] == pytest.approx(first.calibration_error, rel=1e-6)
    assert comp["conv1"]["heldout_error_before"] == pytest.approx(first.heldout_error, rel=1e-6)
