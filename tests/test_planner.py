"""Tests of the DP contraction planner (ttgraph/planner.py): optimality against an independent brute
force and opt_einsum, the emitter's step formulas, layout tie-breaks, cost models."""

from __future__ import annotations

import doctest
import functools
import itertools
import json
import math
import random
import re
import time

import networkx as nx
import numpy as np
import opt_einsum
import pytest

from ttgraph import planner
from ttgraph.errors import TTGraphError
from ttgraph.planner import (
    MeasuredCost,
    Op,
    RooflineCost,
    expand_ranks,
    format_plan,
    left_to_right_plan,
    plan_from_blocks,
    plan_layer,
    plan_to_dict,
)

# --------------------------------------------------------------------------------------------------
# Test-side model of the network, independent of the planner's bitmask tables
# --------------------------------------------------------------------------------------------------


def random_layers(count: int, seed: int) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]]:
    """Random TT layers: d = 2..5, modes 1..8, inner ranks 1..16, a few pixel counts."""
    rng = random.Random(seed)
    layers = []
    for _ in range(count):
        d = rng.randint(2, 5)
        modes_in = tuple(rng.randint(1, 8) for _ in range(d))
        modes_out = tuple(rng.randint(1, 8) for _ in range(d))
        ranks = (1, *(rng.randint(1, 16) for _ in range(d - 1)), 1)
        pixels = rng.choice([1, 3, 16, 100])
        layers.append((modes_in, modes_out, ranks, pixels))
    return layers


LAYERS = random_layers(500, seed=4)


def network(modes_in, modes_out, ranks, pixels):
    """Index sets of X (tensor 0) and G0..G(d-1) (tensors 1..d), the output's indices, index sizes."""
    d = len(modes_in)
    sizes = {"p": pixels}
    tensors = [frozenset({"p"} | {f"j{k}" for k in range(d)})]
    for k in range(d):
        sizes[f"i{k}"], sizes[f"j{k}"] = modes_out[k], modes_in[k]
        idx = {f"i{k}", f"j{k}"}
        if k > 0:
            idx.add(f"b{k}")
            sizes[f"b{k}"] = ranks[k]
        if k < d - 1:
            idx.add(f"b{k + 1}")
        tensors.append(frozenset(idx))
    output = frozenset({"p"} | {f"i{k}" for k in range(d)})
    return tensors, output, sizes


def open_indices(group, tensors):
    """Indices of a merged group of tensors that are still open: every index of this network sits on at
    most two tensors, so an index is summed inside the group iff two of its members carry it."""
    seen: dict[str, int] = {}
    for t in group:
        for i in tensors[t]:
            seen[i] = seen.get(i, 0) + 1
    return frozenset(i for i, c in seen.items() if c == 1)


def brute_force(modes_in, modes_out, ranks, pixels, core_merges="free", convention="macs"):
    """Minimum cost over ALL sequences of pairwise contractions of {X, G0..}, by exhaustive recursion
    over partitions (memoized, so every sequence is covered without listing each one).

    core_merges: "free" (a contraction touching no X costs 0), "charged" (costs its MACs), "forbidden".
    convention: "macs" (product of every index size in the contraction) or "opt_einsum" (that times 2
    when some index is summed, else 1: opt_einsum's ``flop_count`` for a pairwise step).
    """
    tensors, _, sizes = network(modes_in, modes_out, ranks, pixels)

    @functools.cache
    def best(state: frozenset) -> float:
        if len(state) == 1:
            return 0
        groups = list(state)
        result = math.inf
        for a, b in itertools.combinations(groups, 2):
            has_x = 0 in a or 0 in b
            if not has_x and core_merges == "forbidden":
                continue
            oa, ob = open_indices(a, tensors), open_indices(b, tensors)
            macs = math.prod(sizes[i] for i in oa | ob)
            cost = macs * (2 if convention == "opt_einsum" and oa & ob else 1)
            if not has_x and core_merges == "free":
                cost = 0
            rest = state - {a, b} | {a | b}
            result = min(result, cost + best(rest))
        return result

    return best(frozenset(frozenset({t}) for t in range(len(tensors))))


def einsum_convention(op: Op) -> int:
    """opt_einsum's pairwise FLOP count as a planner cost model: 2 x MACs if an index is summed, else
    1 x MACs (an outer product); transposes are not einsum operations."""
    if op.kind == "transpose":
        return 0
    return op.macs * (2 if op.summed_indices else 1)


# --------------------------------------------------------------------------------------------------
# Optimality
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("merges", "kwargs"),
    [
        ("free", {}),
        ("charged", {"offline_merge_cost": "charged"}),
        ("forbidden", {"allow_offline_merges": False}),
    ],
)
def test_planner_cost_equals_brute_force_minimum_over_all_pairwise_sequences(merges, kwargs):
    for modes_in, modes_out, ranks, pixels in LAYERS:
        plan = plan_layer(modes_in, modes_out, ranks, pixels=pixels, **kwargs)
        expected = brute_force(modes_in, modes_out, ranks, pixels, core_merges=merges)
        assert plan.total_cost == expected, (modes_in, modes_out, ranks, pixels, merges)
        if merges != "charged":
            assert plan.runtime_macs == plan.total_cost


def test_planner_cost_equals_opt_einsum_optimal_on_the_same_network():
    # opt_einsum's "optimal" minimizes its own FLOP convention over the whole network, core-core
    # contractions included: per pairwise step 2 x MACs when an index is summed, 1 x MACs for an outer
    # product (helpers.flop_count). Like with like: the planner charges offline merges
    # (offline_merge_cost="charged") under a cost model computing that same convention, and the
    # result must equal opt_einsum's opt_cost. Separately, in MACs: the planner's MAC optimum can
    # never exceed the MACs of opt_einsum's path (recounted from its per-contraction index sizes).
    for modes_in, modes_out, ranks, pixels in LAYERS:
        tensors, output, sizes = network(modes_in, modes_out, ranks, pixels)
        symbol = {name: opt_einsum.get_symbol(i) for i, name in enumerate(sorted(sizes))}
        terms = ["".join(symbol[i] for i in sorted(t)) for t in tensors]
        subscripts = ",".join(terms) + "->" + "".join(symbol[i] for i in sorted(output))
        shapes = [tuple(sizes[i] for i in sorted(t)) for t in tensors]
        path, info = opt_einsum.contract_path(subscripts, *shapes, optimize="optimal", shapes=True)

        plan = plan_layer(
            modes_in, modes_out, ranks, pixels=pixels, cost=einsum_convention, offline_merge_cost="charged"
        )
        assert plan.total_cost == info.opt_cost, (modes_in, modes_out, ranks, pixels)
        assert plan.cost_model == "einsum_convention"

        remaining = list(tensors)
        path_macs = 0
        for i, j in path:
            a, b = remaining[i], remaining[j]
            path_macs += math.prod(sizes[x] for x in a | b)
            merged = (a | b) - (a & b)
            remaining = [t for k, t in enumerate(remaining) if k not in (i, j)] + [merged]
        macs_plan = plan_layer(modes_in, modes_out, ranks, pixels=pixels, offline_merge_cost="charged")
        assert macs_plan.total_cost <= path_macs


def test_opt_einsum_convention_brute_force_agrees_with_planner_on_a_sample():
    for modes_in, modes_out, ranks, pixels in LAYERS[:100]:
        plan = plan_layer(
            modes_in, modes_out, ranks, pixels=pixels, cost=einsum_convention, offline_merge_cost="charged"
        )
        assert plan.total_cost == brute_force(
            modes_in, modes_out, ranks, pixels, core_merges="charged", convention="opt_einsum"
        )


def test_shortest_path_over_the_cost_graph_equals_the_plan_cost():
    for modes_in, modes_out, ranks, pixels in LAYERS[:50]:
        plan = plan_layer(modes_in, modes_out, ranks, pixels=pixels)
        d = len(modes_in)
        assert isinstance(plan.graph, nx.DiGraph)
        assert nx.is_directed_acyclic_graph(plan.graph)
        length = nx.shortest_path_length(plan.graph, (), tuple(range(d)), weight="cost")
        assert length == plan.total_cost
        assert (plan.graph_nodes, plan.graph_edges) == (
            plan.graph.number_of_nodes(),
            plan.graph.number_of_edges(),
        )


def emitter_plans(d):
    """Every plan the NCHW emitter accepts: groups = consecutive runs, order = interval-growing."""
    for cuts in itertools.product([False, True], repeat=d - 1):
        groups, start = [], 0
        for k, cut in enumerate(cuts, start=1):
            if cut:
                groups.append(tuple(range(start, k)))
                start = k
        groups.append(tuple(range(start, d)))
        g = len(groups)
        for first in range(g):
            # after the first group, each step goes left or right; lefts available = first
            for lefts in itertools.combinations(range(g - 1), first):
                lo = hi = first
                order = [first]
                for step in range(g - 1):
                    if step in lefts:
                        lo -= 1
                        order.append(lo)
                    else:
                        hi += 1
                        order.append(hi)
                yield groups, order


def emitter_formula_macs(modes_in, modes_out, ranks, groups, order, pixels):
    """MACs of an emitter plan from the step formulas of the emitter (issue 4), per group-merged core."""
    n = [math.prod(modes_in[k] for k in g) for g in groups]
    m = [math.prod(modes_out[k] for k in g) for g in groups]
    r = [ranks[g[0]] for g in groups] + [ranks[-1]]
    steps = []
    lo = hi = None
    for k in order:
        if lo is None:
            left, contracted, out, right = (
                math.prod(n[:k]),
                n[k],
                r[k] * m[k] * r[k + 1],
                math.prod(n[k + 1 :]),
            )
            lo = hi = k
        elif k == hi + 1:
            left = math.prod(n[:lo]) * r[lo] * math.prod(m[lo : hi + 1])
            contracted, out, right = r[k] * n[k], m[k] * r[k + 1], math.prod(n[k + 1 :])
            hi = k
        else:
            assert k == lo - 1
            left, contracted, out = math.prod(n[:k]), n[k] * r[k + 1], r[k] * m[k]
            right = math.prod(m[lo : hi + 1]) * r[hi + 1] * math.prod(n[hi + 1 :])
            lo = k
        steps.append((left, out, contracted, right * pixels))  # N*H*W folded into right
    return steps


def test_transpose_free_only_plan_is_the_cheapest_emitter_plan():
    for modes_in, modes_out, ranks, pixels in LAYERS[:150]:
        plan = plan_layer(modes_in, modes_out, ranks, pixels=pixels, transpose_free_only=True)
        assert plan.transpose_free
        best = min(
            sum(math.prod(s) for s in emitter_formula_macs(modes_in, modes_out, ranks, g, o, pixels))
            for g, o in emitter_plans(len(modes_in))
        )
        assert plan.total_cost == best


# --------------------------------------------------------------------------------------------------
# The emitter's step formulas
# --------------------------------------------------------------------------------------------------


def test_left_to_right_steps_follow_the_emitter_formulas_and_a_direct_count():
    for modes_in, modes_out, ranks, pixels in LAYERS[:100]:
        d = len(modes_in)
        plan = left_to_right_plan(modes_in, modes_out, ranks, pixels=pixels)
        assert plan.groups == tuple((k,) for k in range(d)) and plan.order == tuple(range(d))
        expected = emitter_formula_macs(modes_in, modes_out, ranks, [(k,) for k in range(d)], range(d), pixels)
        assert [s.shape for s in plan.runtime_steps] == expected
        # Direct count: contract X with G0, G1, ... as index sets; a pairwise step costs the product
        # of every index size it touches.
        tensors, _, sizes = network(modes_in, modes_out, ranks, pixels)
        act, direct = tensors[0], 0
        for k in range(1, d + 1):
            direct += math.prod(sizes[i] for i in act | tensors[k])
            act = (act | tensors[k]) - (act & tensors[k])
        assert plan.total_cost == plan.runtime_macs == direct == sum(math.prod(s) for s in expected)


def test_planned_emitter_orders_cost_what_the_rewrite_module_counts():
    # The rewrite's own step list (ttgraph.contraction, group-free interval orders) must count the same
    # MACs and shapes as the plan it is handed, so allocation and planning agree.
    contraction = pytest.importorskip("ttgraph.contraction")
    tt = pytest.importorskip("ttgraph.tt")
    for modes_in, modes_out, ranks, pixels in LAYERS[:100]:
        plan = plan_layer(
            modes_in, modes_out, ranks, pixels=pixels, allow_offline_merges=False, transpose_free_only=True
        )
        fmt = tt.TTFormat(modes_out, modes_in, ranks)
        order = [plan.groups[i][0] for i in plan.order]
        steps = contraction.contraction_steps(fmt, order)
        assert [(s.left, s.out, s.contracted, s.right * pixels) for s in steps] == [s.shape for s in plan.runtime_steps]
        assert contraction.contraction_macs(fmt, pixels, order) == plan.total_cost


def dense_weight(cores):
    """W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... (row-major multi-indices)."""
    acc = cores[0][0]  # (m, n, r)
    for core in cores[1:]:
        acc = np.einsum("ijr,rklq->ikjlq", acc, core)
        acc = acc.reshape(acc.shape[0] * acc.shape[1], acc.shape[2] * acc.shape[3], acc.shape[4])
    return acc[:, :, 0]


def run_as_emitter(plan, cores, x):
    """Execute a transpose-free plan exactly as the NCHW emitter does: per step Reshape(data ->
    [N, left, contracted, right]) then MatMul(const [out, contracted], data). No transposes of data."""
    batch = x.shape[0]
    merged = []
    for group in plan.groups:
        acc = cores[group[0]]
        for k in group[1:]:
            a, m1, n1, _ = acc.shape
            _, m2, n2, c = cores[k].shape
            acc = np.einsum("aijb,bklc->aikjlc", acc, cores[k]).reshape(a, m1 * m2, n1 * n2, c)
        merged.append(acc)
    data, lo = x, None
    for gi, step in zip(plan.order, plan.runtime_steps, strict=True):
        left, out, contracted, right = step.shape
        core = merged[gi]
        ra, m, n, rb = core.shape
        if lo is None:
            matrix = core.transpose(0, 1, 3, 2).reshape(ra * m * rb, n)
            lo = hi = gi
        elif gi == hi + 1:
            matrix = core.transpose(1, 3, 0, 2).reshape(m * rb, ra * n)
            hi = gi
        else:
            matrix = core.reshape(ra * m, n * rb)
            lo = gi
        assert matrix.shape == (out, contracted)
        data = np.matmul(matrix, data.reshape(batch, left, contracted, right // batch))
    return data.reshape(batch, -1, *x.shape[2:])


@pytest.mark.parametrize("seed", range(12))
def test_transpose_free_plans_run_as_reshape_matmul_chains_and_reproduce_the_dense_conv(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(2, 5))
    modes_in = tuple(int(v) for v in rng.integers(1, 5, d))
    modes_out = tuple(int(v) for v in rng.integers(1, 5, d))
    ranks = (1, *(int(v) for v in rng.integers(1, 5, d - 1)), 1)
    batch, h, w = 2, 3, 2
    cores = [rng.standard_normal((ranks[k], modes_out[k], modes_in[k], ranks[k + 1])) for k in range(d)]
    x = rng.standard_normal((batch, math.prod(modes_in), h, w))
    expected = np.einsum("oc,nchw->nohw", dense_weight(cores), x)
    plans = [
        plan_layer(modes_in, modes_out, ranks, pixels=batch * h * w, transpose_free_only=True),
        left_to_right_plan(modes_in, modes_out, ranks, pixels=batch * h * w),
    ]
    for groups, order in itertools.islice(emitter_plans(d), 0, None, 3):
        blocks = [groups[i] for i in order]
        plans.append(plan_from_blocks(modes_in, modes_out, ranks, blocks, pixels=batch * h * w))
    for plan in plans:
        assert plan.transpose_free
        np.testing.assert_allclose(run_as_emitter(plan, cores, x), expected, rtol=1e-9, atol=1e-9)


def test_low_rank_two_core_layer_costs_rank_times_cin_plus_cout():
    cin, cout, r, pixels = 96, 384, 16, 1600
    plan = plan_layer((cin, 1), (1, cout), (1, r, 1), pixels=pixels, allow_offline_merges=False)
    assert plan.total_cost == pixels * r * (cin + cout)
    assert left_to_right_plan((cin, 1), (1, cout), r, pixels=pixels).total_cost == pixels * r * (cin + cout)
    assert plan.dense_cost == pixels * cin * cout


# --------------------------------------------------------------------------------------------------
# Planned vs left-to-right, layout, parameters
# --------------------------------------------------------------------------------------------------


def test_planned_order_is_at_least_twice_cheaper_than_left_to_right():
    # 384 -> 384 on 80x80, rank 8, out-modes reversed with respect to in-modes. Left-to-right expands
    # the activation to 48*8 channels per pixel after the first core; starting from the last core
    # keeps it at 8*8. 314.6 M MACs vs 1887.4 M (6x); dense is 943.7 M.
    modes_in, modes_out, ranks, pixels = (8, 48), (48, 8), 8, 80 * 80
    planned = plan_layer(modes_in, modes_out, ranks, pixels=pixels)
    l2r = left_to_right_plan(modes_in, modes_out, ranks, pixels=pixels)
    assert planned.total_cost == 314_572_800
    assert l2r.total_cost == 1_887_436_800
    assert l2r.total_cost >= 2 * planned.total_cost
    assert planned.transpose_free and planned.groups == ((0,), (1,)) and planned.order == (1, 0)
    assert planned.dense_cost == 943_718_400


def test_transpose_free_order_wins_ties_of_equal_flops():
    # With every inner rank 1 the cores act independently: each singleton step costs P*Cin*m_k
    # whatever the order, so interval and non-interval orders tie on MACs.
    rng = random.Random(7)
    for _ in range(100):
        d = rng.randint(3, 5)
        modes = tuple(rng.randint(2, 6) for _ in range(d))
        planned = plan_layer(modes, modes, 1, pixels=50)
        skipping = plan_from_blocks(modes, modes, 1, [[0], [2], [1], *[[k] for k in range(3, d)]], pixels=50)
        assert not skipping.transpose_free and skipping.moved_elements > 0
        assert planned.total_cost <= skipping.total_cost
        assert planned.transpose_free and planned.moved_elements == 0
        assert planned.groups is not None and planned.order is not None
    # the same tie under roofline: the transpose costs bytes, so the interval order is strictly cheaper
    rf = RooflineCost(bytes_weight=1.0)
    a = plan_from_blocks((4, 4, 4), (4, 4, 4), 1, [[0], [1], [2]], pixels=10, cost=rf)
    b = plan_from_blocks((4, 4, 4), (4, 4, 4), 1, [[0], [2], [1]], pixels=10, cost=rf)
    assert a.runtime_macs == b.runtime_macs and b.total_cost > a.total_cost


def test_non_interval_step_is_charged_the_transpose_of_its_activation():
    rf = RooflineCost(bytes_weight=2.0)
    modes, pixels = (2, 3, 4), 5
    plan = plan_from_blocks(modes, modes, (1, 2, 3, 1), [[0], [2], [1]], pixels=pixels, cost=rf)
    step = plan.runtime_steps[1]  # X+G0 * G2: skips G1, leaves an outer bond
    assert not step.transpose_free and plan.groups is None and plan.order is None
    activation = pixels * 2 * 2 * 3 * 4  # P * m0 * r1 * n1 * n2
    assert step.moved_elements == activation
    assert step.layout_cost == 2.0 * (2 * activation * 4)  # read + write, float32
    flops = plan_from_blocks(modes, modes, (1, 2, 3, 1), [[0], [2], [1]], pixels=pixels)
    assert flops.runtime_macs == plan.runtime_macs and flops.total_cost == flops.runtime_macs


def test_offline_merges_report_runtime_params_and_respect_the_cap():
    modes, ranks, pixels = (2, 2, 2, 2), 8, 6400
    merged = plan_layer(modes, modes, ranks, pixels=pixels)
    unmerged = plan_layer(modes, modes, ranks, pixels=pixels, allow_offline_merges=False)
    assert merged.total_cost < unmerged.total_cost
    assert any(not s.runtime for s in merged.steps) and all(s.runtime for s in unmerged.steps)
    assert unmerged.runtime_params == unmerged.tt_params == 2 * (4 * 8) + 2 * (8 * 4 * 8)
    assert merged.runtime_params == sum(
        math.prod(len(b) * [4]) * (8 if b[0] > 0 else 1) * (8 if b[-1] < 3 else 1) for b in merged.blocks
    )
    capped = plan_layer(modes, modes, ranks, pixels=pixels, max_block_params=64)
    assert all(s.out_size <= 64 for s in capped.steps if not s.runtime)
    assert unmerged.total_cost >= capped.total_cost >= merged.total_cost


# --------------------------------------------------------------------------------------------------
# Cost models, reporting, errors, speed
# --------------------------------------------------------------------------------------------------


def test_plan_records_its_cost_model():
    assert plan_layer((4, 4), (4, 4), 2).cost_model == "flops"
    assert plan_layer((4, 4), (4, 4), 2, cost="roofline").cost_model == "roofline"
    planner.register_cost_model("test_double_macs", lambda op: 2 * op.macs)
    try:
        plan = plan_layer((4, 4), (4, 4), 2, pixels=3, cost="test_double_macs")
        assert plan.cost_model == "test_double_macs"
        assert plan.total_cost == 2 * plan_layer((4, 4), (4, 4), 2, pixels=3).total_cost
    finally:
        del planner.COST_MODELS["test_double_macs"]


def test_measured_cost_times_each_shape_once_and_round_trips_the_disk_cache(tmp_path):
    timed: list[str] = []

    def fake_timer(op: Op) -> float:
        timed.append(op.key())
        return 1e-9 * op.macs + 1e-6  # a fixed per-op overhead plus throughput

    args = ((8, 48), (48, 8), 8)
    first = plan_layer(*args, pixels=6400, cost=MeasuredCost(cache_dir=tmp_path, target="fake", timer=fake_timer))
    assert first.cost_model == "measured"
    assert timed and len(timed) == len(set(timed))  # every shape timed exactly once
    table = json.loads((tmp_path / "measured-fake.json").read_text())
    assert table["target"] == "fake" and set(table["entries"]) == set(timed)

    def no_timer(op: Op) -> float:
        raise AssertionError(f"{op.key()} should come from the cache")

    reread = MeasuredCost(cache_dir=tmp_path, target="fake", timer=no_timer)
    second = plan_layer(*args, pixels=6400, cost=reread)
    assert reread.measured == 0
    assert (second.blocks, second.total_cost) == (first.blocks, first.total_cost)
    assert second.order == (1, 0)

    (tmp_path / "measured-broken.json").write_text("{not json")
    with pytest.raises(TTGraphError, match="measured cost table"):
        plan_layer(*args, cost=MeasuredCost(cache_dir=tmp_path, target="broken", timer=fake_timer))
    key = next(iter(table["entries"]))  # an edited table's negative time would be the cheapest order of all
    (tmp_path / "measured-edited.json").write_text(json.dumps({"target": "edited", "entries": {key: -5.0}}))
    with pytest.raises(TTGraphError, match=f"measured-edited.json: .*entry '{re.escape(key)}' is -5.0, not a time"):
        plan_layer(*args, cost=MeasuredCost(cache_dir=tmp_path, target="edited", timer=fake_timer))
    # a timer's bad value is refused before it is stored: stored, the table was refused by every later plan
    with pytest.raises(TTGraphError, match="timer: timed .* as nan, not a time"):
        plan_layer(*args, cost=MeasuredCost(cache_dir=tmp_path, target="nan", timer=lambda op: float("nan")))
    assert not (tmp_path / "measured-nan.json").exists()
    zero = MeasuredCost(cache_dir=tmp_path, target="zero", timer=lambda op: 0.0)  # a coarse clock: 0 is a time
    plan_layer(*args, cost=zero)
    plan_layer(*args, cost=MeasuredCost(cache_dir=tmp_path, target="zero", timer=no_timer))


def test_measured_cost_plans_on_when_its_table_cannot_be_written(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = ((8, 48), (48, 8), 8)
    cost = MeasuredCost(cache_dir=blocker / "cache", target="fake", timer=lambda op: 1e-9 * op.macs + 1e-6)
    with caplog.at_level("WARNING", logger="ttgraph.compress"):
        plan = plan_layer(*args, pixels=6400, cost=cost)
    assert plan.cost_model == "measured" and plan.total_cost > 0
    assert caplog.text.count("measurements not cached") == 1  # once, however many shapes were timed
    assert blocker.read_text() == "not a folder"


def test_measured_cost_follows_the_cache_directory_when_it_moves(tmp_path, monkeypatch):
    cost = MeasuredCost(target="fake", timer=lambda op: 1e-9 * op.macs)
    args = ((8, 48), (48, 8), 8)
    monkeypatch.setenv("TTGRAPH_CACHE_DIR", str(tmp_path / "a"))
    plan_layer(*args, pixels=6400, cost=cost)
    monkeypatch.setenv("TTGRAPH_CACHE_DIR", str(tmp_path / "b"))
    plan_layer((4, 4), (4, 4), 2, pixels=16, cost=cost)
    a = json.loads((tmp_path / "a" / "measured-fake.json").read_text())["entries"]
    b = json.loads((tmp_path / "b" / "measured-fake.json").read_text())["entries"]
    assert a and b and not set(a) & set(b)  # b holds only what was timed while it was the cache


def test_plan_to_dict_is_json_ready_with_total_cost_in_macs():
    plan = plan_layer((16, 24), (16, 24), 8, pixels=80 * 80)
    data = json.loads(json.dumps(plan_to_dict(plan)))
    assert data["total_cost"] == plan.runtime_macs == sum(s["macs"] for s in data["steps"] if s["runtime"])
    assert data["cost_model"] == "flops" and data["dense_cost"] == 80 * 80 * 384 * 384
    assert data["graph"] == {"nodes": plan.graph_nodes, "edges": plan.graph_edges}
    assert data["groups"] == [[0], [1]] and data["transpose_free"] is True
    text = format_plan(plan)
    assert "X * G" in text and "dense MACs" in text and "transpose-free" in text


def test_bad_layer_descriptions_raise_ttgraph_errors():
    assert expand_ranks(8, 1) == (1, 1)
    assert expand_ranks((1, 3, 1), 2) == (1, 3, 1)
    for call in [
        lambda: plan_layer((2, 2), (2,), 2),
        lambda: plan_layer((2, 2), (2, 2), (1, 2, 2)),
        lambda: plan_layer((2, 2), (2, 2), (2, 2, 2)),
        lambda: plan_layer((2, 0), (2, 2), 2),
        lambda: plan_layer((2, 2), (2, 2), 2, pixels=0),
        lambda: plan_layer((2, 2), (2, 2), 2, cost="nonsense"),
        lambda: plan_layer((2, 2), (2, 2), 2, offline_merge_cost="sometimes"),
        lambda: plan_from_blocks((2, 2), (2, 2), 2, [[0]]),
        lambda: plan_from_blocks((2, 2), (2, 2), 2, [[0], [0, 1]]),
    ]:
        with pytest.raises(TTGraphError):
            call()


def test_eight_core_layer_plans_in_milliseconds():
    plan_layer((2,) * 8, (2,) * 8, 8, pixels=6400)  # warm up
    start = time.perf_counter()
    for modes, rank in [((2,) * 8, 8), ((4,) * 8, 16), ((2, 3, 4, 2, 3, 4, 2, 3), 32)]:
        plan = plan_layer(modes, modes[::-1], rank, pixels=6400)
        assert plan.graph_nodes <= 2**8
    assert time.perf_counter() - start < 1.0


def test_module_doctests_pass():
    result = doctest.testmod(planner)
    assert result.failed == 0 and result.attempted > 10
