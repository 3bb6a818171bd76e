"""Global budget allocation: meets the budget, optimal at hull budgets, beats uniform, deterministic."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ttgraph.allocate import Budget, allocate, uniform_allocation, uniform_allocation_reaching
from ttgraph.decompose import Candidate, LayerCandidates
from ttgraph.errors import TTGraphError


class _Conv:
    def __init__(self, label):
        self.label = label


def synthetic_layer(label: str, costs: list[int], errors: list[float], dense: int) -> LayerCandidates:
    """A layer whose candidates cost ``costs`` MACs and params with ``errors``; keep-dense costs ``dense``."""
    cands = [Candidate(label, "dense", None, None, dense, dense, 0.0, 0.0, "dense", 0)]
    for i, (c, e) in enumerate(zip(costs, errors, strict=True)):
        cands.append(Candidate(label, "lowrank", None, (0, 1), c, c, e, e, "test", i + 1))
    return LayerCandidates(_Conv(label), "data", cands)


def random_layers(rng: np.random.Generator, n: int = 4, k: int = 4) -> list[LayerCandidates]:
    layers = []
    for i in range(n):
        dense = int(rng.integers(50, 200))
        costs = sorted(rng.choice(np.arange(1, dense), size=k, replace=False).tolist())
        errors = sorted(rng.uniform(0.01, 1.0, size=k).tolist(), reverse=True)
        layers.append(synthetic_layer(f"l{i}", costs, errors, dense))
    return layers


def brute_force(layers, target):
    best = None
    for combo in itertools.product(*(layer.curve("macs") for layer in layers)):
        cost = sum(c.cost("macs") for c in combo)
        if cost <= target:
            damage = sum(c.error**2 for c in combo)
            if best is None or damage < best:
                best = damage
    return best


def test_allocation_meets_the_budget_and_beats_uniform_on_uneven_layers():
    # layer a loses little per saved MAC, layer b a lot: a non-uniform split is much better
    a = synthetic_layer("a", [10, 30, 50, 70, 90], [0.30, 0.12, 0.05, 0.02, 0.01], 100)
    b = synthetic_layer("b", [10, 30, 50, 70, 90], [0.95, 0.80, 0.50, 0.20, 0.05], 100)
    alloc = allocate([a, b], Budget(macs_ratio=0.5))
    uniform = uniform_allocation([a, b], 0.5)
    assert alloc.cost_after <= 100 and uniform.cost_after <= 100
    assert alloc.damage < 0.5 * uniform.damage
    assert alloc.choices["a"].cost("macs") < alloc.choices["b"].cost("macs")
    assert alloc.ratio == pytest.approx(alloc.cost_after / 200)


def test_uniform_baseline_at_an_allocations_cost_is_the_cheapest_uniform_one_reaching_it():
    a = synthetic_layer("a", [10, 30, 50, 70, 90], [0.30, 0.12, 0.05, 0.02, 0.01], 100)
    b = synthetic_layer("b", [20, 40, 60, 80], [0.95, 0.80, 0.50, 0.20], 100)
    for total in (30, 70, 110, 150):
        uniform = uniform_allocation_reaching([a, b], total)
        assert uniform.cost_after >= total
        fractions = [f for f in np.linspace(0.01, 1, 100) if uniform_allocation([a, b], f).cost_after >= total]
        assert uniform.cost_after == min(uniform_allocation([a, b], f).cost_after for f in fractions)


def test_uniform_baseline_reaches_a_cost_whose_fraction_rounds_down():
    # 15/22·22 < 15 in floating point: the fraction at which layer a can afford 15 MACs must still admit them
    a = synthetic_layer("a", [5, 15], [0.5, 0.1], 22)
    b = synthetic_layer("b", [10, 90], [0.5, 0.1], 100)
    assert uniform_allocation_reaching([a, b], 25).cost_after == 25  # a at 15, b at 10 (next: 105)


@pytest.mark.parametrize("seed", range(20))
def test_allocation_is_optimal_at_every_lagrangian_budget(seed):
    layers = random_layers(np.random.default_rng(seed))
    full = sum(layer.dense.cost("macs") for layer in layers)
    rng = np.random.default_rng(1000 + seed)
    for lam in np.geomspace(1e-5, 1e-1, 12) * rng.uniform(0.9, 1.1):
        # minimizing err² + λ·cost per layer solves the knapsack for the budget it lands on (Everett 1963)
        picks = [min(layer.curve("macs"), key=lambda c: c.error**2 + lam * c.cost("macs")) for layer in layers]
        target = sum(c.cost("macs") for c in picks)
        optimum = brute_force(layers, target)
        assert sum(c.error**2 for c in picks) == pytest.approx(optimum)
        alloc = allocate(layers, Budget(macs_ratio=target / full))
        assert alloc.cost_after <= target
        assert alloc.damage == pytest.approx(optimum)


@pytest.mark.parametrize("seed", range(20))
def test_allocation_is_close_to_the_exact_knapsack(seed):
    layers = random_layers(np.random.default_rng(100 + seed), n=3, k=5)
    full = sum(layer.dense.cost("macs") for layer in layers)
    for ratio in (0.3, 0.5, 0.7):
        best = brute_force(layers, ratio * full)
        if best is None:
            continue
        alloc = allocate(layers, Budget(macs_ratio=ratio))
        # greedy on convex hulls plus the fill step: optimal up to one hull step of one layer
        worst_step = max(max(c.error**2 for c in layer.curve("macs")) for layer in layers)
        assert alloc.damage <= best + worst_step


def test_error_cap_alone_takes_the_cheapest_candidate_under_the_cap_per_layer():
    a = synthetic_layer("a", [10, 30, 50], [0.4, 0.2, 0.05], 100)
    b = synthetic_layer("b", [10, 30, 50], [0.5, 0.3, 0.25], 100)
    alloc = allocate([a, b], Budget(max_error=0.2))
    assert alloc.choices["a"].cost("macs") == 30
    assert alloc.choices["b"].kind == "dense"
    assert "error cap" in alloc.reasons["b"]
    both = allocate([a, b], Budget(macs_ratio=0.9, max_error=0.2))
    assert all(c.error <= 0.2 for c in both.choices.values())


def test_out_of_reach_budget_says_what_is_reachable():
    a = synthetic_layer("a", [40], [0.3], 100)
    with pytest.raises(TTGraphError, match="out of reach.*0.400"):
        allocate([a], Budget(macs_ratio=0.2))


def test_budget_options_are_checked():
    with pytest.raises(TTGraphError):
        Budget()
    with pytest.raises(TTGraphError):
        Budget(macs_ratio=0.5, params_ratio=0.5)
    with pytest.raises(TTGraphError):
        Budget(macs_ratio=1.5)
    assert Budget(params_ratio=0.3).metric == "params"


def test_allocation_is_deterministic_and_names_why_layers_stay_dense():
    layers = random_layers(np.random.default_rng(7), n=6)
    first = allocate(layers, Budget(macs_ratio=0.6))
    second = allocate(layers, Budget(macs_ratio=0.6))
    assert first.choices == second.choices
    for label, c in first.choices.items():
        if c.kind == "dense":
            assert first.reasons[label]
