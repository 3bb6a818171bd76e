"""TT-matrix math: exact at full rank, tolerance honoured, costs equal to the cores and steps they describe."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ttgraph.contraction import contraction_macs, contraction_steps, step_matrix
from ttgraph.tt import (
    TTFormat,
    format_of,
    lowrank_format,
    relative_error,
    scale_ranks,
    split_modes,
    tt_format,
    tt_reconstruct,
    tt_svd,
)


def interval_orders(d: int):
    """Every order that grows a contiguous interval of cores (what the NCHW emitter supports)."""

    def grow(lo, hi, acc):
        if len(acc) == d:
            yield tuple(acc)
            return
        if lo > 0:
            yield from grow(lo - 1, hi, [*acc, lo - 1])
        if hi < d - 1:
            yield from grow(lo, hi + 1, [*acc, hi + 1])

    for start in range(d):
        yield from grow(start, start, [start])


def contract_like_the_emitter(cores, x, order):
    """Reshape + matmul exactly as the ONNX rewrite does, in numpy."""
    fmt = format_of(cores)
    data = x
    for step in contraction_steps(fmt, order):
        data = np.matmul(
            step_matrix(cores[step.core], step.side), data.reshape(x.shape[0], step.left, step.contracted, -1)
        )
    return data.reshape(x.shape[0], fmt.cout, -1)


@pytest.mark.parametrize(("cout", "cin"), [(24, 36), (48, 16), (96, 96), (30, 42)])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_full_rank_tt_reconstructs_the_weight_exactly(cout, cin, d):
    w = np.random.default_rng(d).standard_normal((cout, cin))
    fmt = tt_format(cout, cin, d)
    if fmt is None:  # 30 = 2·3·5 and 42 = 2·3·7 have no 4-way split into factors ≥ 2
        assert (cout, cin, d) == (30, 42, 4)
        return
    cores, used = tt_svd(w, fmt)
    assert used == fmt
    assert [c.shape for c in cores] == fmt.core_shapes()
    assert relative_error(w, tt_reconstruct(cores)) < 1e-12
    assert used.params() == sum(c.size for c in cores)


@pytest.mark.parametrize("d", [2, 3, 4])
@pytest.mark.parametrize("eps", [0.05, 0.3, 0.7])
def test_tolerance_mode_meets_the_error_bound_with_fewer_ranks(d, eps):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 48)) @ np.diag(np.exp(-np.arange(48) / 8.0))
    cores, used = tt_svd(w, tt_format(64, 48, d), tolerance=eps)
    assert relative_error(w, tt_reconstruct(cores)) <= eps + 1e-12
    assert all(r <= full for r, full in zip(used.ranks, used.max_ranks(), strict=True))
    if eps >= 0.3:
        assert used.params() < tt_format(64, 48, d).params()


def test_truncated_svd_is_the_best_rank_r_approximation():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((40, 30))
    cores, _ = tt_svd(w, lowrank_format(40, 30, 5))
    s = np.linalg.svd(w, compute_uv=False)
    expected = math.sqrt(float(np.sum(s[5:] ** 2))) / float(np.linalg.norm(w))
    assert relative_error(w, tt_reconstruct(cores)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("channels", [1, 2, 7, 12, 48, 96, 97, 192, 384, 480, 960, 1024])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_split_modes_multiplies_back_and_uses_factors_of_at_least_two(channels, d):
    split = split_modes(channels, d)
    divisors = [f for f in range(2, channels + 1) if channels % f == 0]
    brute = [c for c in itertools.product(divisors, repeat=d) if math.prod(c) == channels] if d > 1 else [(channels,)]
    if not brute:
        assert split is None
        return
    assert split is not None and math.prod(split) == channels and len(split) == d
    assert d == 1 or min(split) >= 2
    assert max(split) == min(max(c) for c in brute)  # as balanced as possible


def test_primes_have_only_the_lowrank_format():
    assert tt_format(97, 64, 2) is None
    assert tt_format(64, 13, 3) is None
    assert tt_format(97, 13, 1) == TTFormat.lowrank(97, 13, 13)


def test_rank_rules_cap_and_scale_the_full_ranks():
    fmt = tt_format(96, 96, 2)
    assert fmt.ranks == (1, min(fmt.modes_out[0] * fmt.modes_in[0], fmt.modes_out[1] * fmt.modes_in[1]), 1)
    assert scale_ranks(fmt, rank=8).ranks == (1, 8, 1)
    assert scale_ranks(fmt, ratio=1.0) == fmt
    assert scale_ranks(fmt, ratio=0.5).ranks[1] == math.ceil(fmt.ranks[1] / 2)
    assert scale_ranks(fmt, ratio=0.001).ranks[1] == 1
    with pytest.raises(ValueError):
        scale_ranks(fmt, ratio=1.5)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_every_interval_order_computes_the_same_product_as_the_dense_weight(d):
    rng = np.random.default_rng(11)
    fmt = scale_ranks(tt_format(24, 36, d), rank=3)
    cores, used = tt_svd(rng.standard_normal((24, 36)), fmt)
    x = rng.standard_normal((2, 36, 5))
    expected = np.einsum("oc,ncp->nop", tt_reconstruct(cores), x)
    for order in interval_orders(used.num_cores):
        np.testing.assert_allclose(contract_like_the_emitter(cores, x, order), expected, rtol=1e-10, atol=1e-10)


def test_step_macs_are_the_sizes_of_the_matrix_products():
    fmt = TTFormat((2, 3, 4), (4, 3, 2), (1, 5, 6, 1))
    cores = [np.ones(s) for s in fmt.core_shapes()]
    pixels = 7
    for order in interval_orders(3):
        direct = 0
        for step in contraction_steps(fmt, order):
            a = step_matrix(cores[step.core], step.side)
            assert a.shape == (step.out, step.contracted)
            direct += a.shape[0] * a.shape[1] * step.left * step.right * pixels
        assert contraction_macs(fmt, pixels, order) == direct
    # low-rank: r·Cin + Cout·r per pixel
    assert contraction_macs(TTFormat.lowrank(64, 32, 8), 10) == 10 * (8 * 32 + 64 * 8)


def test_orders_that_skip_a_core_are_rejected():
    with pytest.raises(ValueError, match="not next to"):
        contraction_steps(TTFormat((2, 2, 2), (2, 2, 2), (1, 2, 2, 1)), (0, 2, 1))


def test_a_weight_with_nan_is_a_value_error_not_lapacks():
    w = np.ones((4, 6))
    w[1, 2] = np.nan
    with pytest.raises(ValueError, match="weight holds NaN or infinite values"):
        tt_svd(w, lowrank_format(4, 6))
