"""Data-aware candidates: exact errors from statistics, better than weight-only fits, costs as emitted."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest

from tests.conftest import conv_model
from ttgraph.api import _analyse, rewrite_allocation
from ttgraph.calibration import LayerStatistics, collect_statistics, output_error
from ttgraph.costs import node_macs
from ttgraph.decompose import als_fit, build_candidates, whitening_factor
from ttgraph.shapes import infer_shapes
from ttgraph.tt import TTFormat, tt_reconstruct, tt_svd
from ttgraph.verify import session


def correlated_rows(n: int, cin: int, seed: int = 0, offset: float = 0.0, draw: int = 0) -> np.ndarray:
    """Rows with a steep spectrum (the distribution fixed by ``seed``; ``draw`` picks the sample)."""
    mixing = np.random.default_rng(seed).standard_normal((cin, cin)) * np.geomspace(3, 0.05, cin)[:, None]
    return np.random.default_rng((seed, draw)).standard_normal((n, cin)) @ mixing + offset


def stats_of(rows: np.ndarray) -> LayerStatistics:
    st = LayerStatistics.empty("x", (1, 1), rows.shape[1])
    st.update(rows.T.reshape(1, rows.shape[1], rows.shape[0], 1))
    return st


class FakeConv:
    """What build_candidates reads of a PointwiseConv."""

    def __init__(self, weight, bias=None, pixels=100, label="conv"):
        self.weight, self.bias, self.label = weight, bias, label
        self.weight_dtype = np.dtype(np.float32)
        self.strides = (1, 1)
        self.pixels = pixels
        self.cout, self.cin = weight.shape


def test_whitened_low_rank_is_optimal_and_its_error_is_exact_for_every_rank():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((24, 32))
    rows = correlated_rows(4000, 32)
    layer = build_candidates(FakeConv(w), stats_of(rows), damping=0.0, center=False)
    weight = build_candidates(FakeConv(w), None, method="weight")
    held = stats_of(correlated_rows(3000, 32, draw=1))  # same distribution, other samples
    lowrank = [c for c in layer.candidates if c.kind == "lowrank"]
    assert [c.fmt.ranks[1] for c in lowrank] == list(range(1, 14))  # r(Cin+Cout) < Cin·Cout ⇔ r ≤ 13
    for c in lowrank:
        approx = layer.approx(c)
        measured = np.linalg.norm(rows @ (w - approx).T) / np.linalg.norm(rows @ w.T)
        assert c.error == pytest.approx(measured, rel=1e-6)
        # Eckart–Young in the data norm: no rank-r matrix does better, weight SVD in particular
        svd = weight.candidates[c.index]
        assert svd.fmt == c.fmt
        assert c.error < output_error(stats_of(rows).gram, w, weight.approx(svd))
        assert layer.errors_on(held, [c])[c.index] < weight.errors_on(held, [svd])[svd.index]


def test_centred_fit_moves_the_dropped_mean_into_the_bias_and_lowers_the_error():
    rng = np.random.default_rng(2)
    w, b = rng.standard_normal((16, 20)), rng.standard_normal(16)
    rows = correlated_rows(3000, 20, offset=rng.standard_normal(20) * 2)
    plain = build_candidates(FakeConv(w, b), stats_of(rows), center=False)
    centred = build_candidates(FakeConv(w, b), stats_of(rows), center=True)
    for cp, cc in zip(plain.candidates[1:], centred.candidates[1:], strict=True):
        assert cc.error <= cp.error + 1e-12
        out = rows @ w.T + b
        got = rows @ centred.approx(cc).T + centred.bias(cc)
        assert cc.error == pytest.approx(np.linalg.norm(out - got) / np.linalg.norm(rows @ w.T), rel=1e-6)
        assert abs(np.mean(out - got)) < 1e-9 * np.abs(out).max()  # zero-mean error on the calibration rows


def test_data_aware_tt_beats_tt_svd_in_the_same_format():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((24, 32))
    g = stats_of(correlated_rows(4000, 32)).gram
    for fmt in (TTFormat((4, 6), (4, 8), (1, 4, 1)), TTFormat((2, 3, 4), (2, 4, 4), (1, 3, 3, 1))):
        als = output_error(g, w, tt_reconstruct(als_fit(w, g, fmt)))
        svd = output_error(g, w, tt_reconstruct(tt_svd(w, fmt)[0]))
        assert als < 0.9 * svd


def test_pareto_curve_is_cheaper_and_better_step_by_step_and_ends_dense():
    rng = np.random.default_rng(4)
    layer = build_candidates(
        FakeConv(rng.standard_normal((48, 64))), stats_of(correlated_rows(2000, 64)), cores=(1, 2, 3)
    )
    assert {c.kind for c in layer.candidates} == {"dense", "lowrank", "tt"}
    for metric in ("macs", "params"):
        curve = layer.curve(metric)
        assert curve[-1].kind == "dense" and curve[-1].error == 0
        costs = [c.cost(metric) for c in curve]
        errors = [c.error for c in curve]
        assert costs == sorted(costs) and len(set(costs)) == len(costs)
        assert errors == sorted(errors, reverse=True) and len(set(errors)) == len(errors)


def test_candidate_costs_are_the_emitted_graph_costs_and_the_rewrite_matches_the_fit():
    model = conv_model(24, 36, stride=2, hw=(12, 12))
    _, found, _ = _analyse(model)
    data = [{"x": correlated_rows(144, 24, draw=k).T.reshape(1, 24, 12, 12).astype(np.float32)} for k in range(4)]
    stats = collect_statistics(model, found.candidates, data)
    layer = build_candidates(found.candidates[0], stats.layers["conv"], cores=(1, 2))
    picks = [next(c for c in layer.candidates if c.kind == kind) for kind in ("lowrank", "tt")]
    for pick in picks:
        rewritten = rewrite_allocation(model, [layer], {"conv": pick})
        shapes = infer_shapes(rewritten)
        macs = sum(node_macs(n, shapes) for n in rewritten.graph.node if n.op_type in ("Conv", "MatMul"))
        floats = [i for i in rewritten.graph.initializer if i.data_type == onnx.TensorProto.FLOAT]
        assert macs == pick.macs
        assert sum(math.prod(i.dims) for i in floats) == pick.params
        # the rewritten conv computes x·Ŵᵀ + b̂ (before the Relu): compare on the calibration data
        x = data[0]["x"][:, :, ::2, ::2].reshape(24, -1).T.astype(np.float64)
        want = x @ layer.approx(pick).T + layer.bias(pick)
        got = session(rewritten).run(None, data[0])[0][0].reshape(36, -1).T
        np.testing.assert_allclose(got, np.maximum(want, 0), rtol=1e-3, atol=1e-3)


def test_candidates_are_deterministic():
    rng = np.random.default_rng(6)
    w = rng.standard_normal((32, 48))
    st = stats_of(correlated_rows(1000, 48))
    a = build_candidates(FakeConv(w), st, cores=(1, 2))
    b = build_candidates(FakeConv(w), st, cores=(1, 2))
    assert a.candidates == b.candidates
    for c in a.candidates[1:]:
        for x, y in zip(a.cores(c), b.cores(c), strict=True):
            np.testing.assert_array_equal(x, y)


def test_whitening_factor_squares_back_to_the_damped_gram():
    g = stats_of(correlated_rows(100, 8)).gram
    lf = whitening_factor(g, damping=0.1)
    np.testing.assert_allclose(lf @ lf.T, g + 0.1 * np.trace(g) / 8 * np.eye(8), rtol=1e-9, atol=1e-9)


def test_tt_fits_show_their_own_progress_and_nothing_without_it(capsys):
    """A wide layer's TT fits take minutes: with progress on they tick a bar of their own (on stderr)."""
    w = np.random.default_rng(5).standard_normal((24, 32))
    stats = stats_of(correlated_rows(400, 32))
    quiet = build_candidates(FakeConv(w), stats, cores=(1, 2))
    assert capsys.readouterr().err == ""
    shown = build_candidates(FakeConv(w), stats, cores=(1, 2), progress=True)
    err = capsys.readouterr().err
    assert any(c.kind == "tt" for c in shown.candidates) and "conv: TT fits" in err
    assert [c.error for c in shown.candidates] == [c.error for c in quiet.candidates]
