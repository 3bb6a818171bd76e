"""Global budget: choose one candidate per layer (or keep it dense) for the whole model.

Given each layer's error-vs-cost curve (:meth:`ttgraph.decompose.LayerCandidates.curve`) and one goal —

- ``macs_ratio`` R: MACs of the rewritten 1×1 layers (as emitted) ≤ R × the original 1×1 MACs;
- ``params_ratio`` R: the same for parameters (cores + biases);
- ``latency_ratio`` R: the same for the 1×1 layers' time measured on the runtime, layer by layer
  (:func:`ttgraph.latency.attach_latencies`), so a factorization that is not faster there is never chosen;
- ``max_error`` E: every layer's calibration output error ≤ E (alone: the cheapest such candidate per
  layer; with a ratio: a cap on the candidates the ratio allocation may use) —

:func:`allocate` minimizes the summed per-layer damage ``Σ_l w_l · ε_l²`` (ε_l the relative output error,
``w_l`` optional sensitivities, default 1) subject to the budget. It is a multiple-choice knapsack; we
solve it the classic way (Shoham & Gersho, "Efficient bit allocation for an arbitrary set of
quantizers", IEEE TASSP 1988): walk down every layer's lower convex hull of (cost, damage), always taking
the step with the least added damage per saved cost, until the budget is met — optimal for the budgets
the hull vertices reach — then spend what the last step over-saved on the upgrades (any Pareto point)
that remove the most damage per unit cost. Ties break by layer order, so the result is deterministic.

:func:`uniform_allocation` is the baseline: the same cost fraction (or rank fraction) in every layer;
:func:`uniform_allocation_reaching` the same baseline at the cost an allocation reached, for a fair comparison.

Measured on the rapidocr models (``benchmarks/budget_sweep.py``): the allocation beats uniform ranks on the
detector at 0.5 and 0.7 of the MACs but loses to it at 0.3, where Σ ε² over-spends on thin neck layers whose
errors barely reach the output; on the classifier it is the only thing that works (uniform: chance).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ttgraph.decompose import Candidate, LayerCandidates, Metric
from ttgraph.errors import TTGraphError

__all__ = ["Allocation", "Budget", "allocate", "uniform_allocation", "uniform_allocation_reaching"]


@dataclass(frozen=True)
class Budget:
    """One global goal (see the module docstring); ``metric`` is what the ratio counts.

    >>> Budget(macs_ratio=0.5).metric, Budget(max_error=0.1).metric
    ('macs', 'macs')
    """

    macs_ratio: float | None = None
    params_ratio: float | None = None
    max_error: float | None = None
    latency_ratio: float | None = None

    def __post_init__(self) -> None:
        ratios = [r for r in (self.macs_ratio, self.params_ratio, self.latency_ratio) if r is not None]
        if len(ratios) > 1:
            raise TTGraphError("budget", "give one of macs_ratio, params_ratio and latency_ratio, not several")
        if not ratios and self.max_error is None:
            raise TTGraphError("budget", "give macs_ratio, params_ratio, latency_ratio or max_error")
        for key in ("macs_ratio", "params_ratio", "latency_ratio"):
            value = getattr(self, key)
            if value is not None and not 0 < value <= 1:
                raise TTGraphError("budget", f"{key} must be in (0, 1], got {value}")
        if self.max_error is not None and self.max_error < 0:
            raise TTGraphError("budget", f"max_error must be ≥ 0, got {self.max_error}")

    @property
    def metric(self) -> Metric:
        if self.latency_ratio is not None:
            return "latency"
        return "params" if self.params_ratio is not None else "macs"

    @property
    def ratio(self) -> float | None:
        for ratio in (self.params_ratio, self.latency_ratio):
            if ratio is not None:
                return ratio
        return self.macs_ratio

    def to_dict(self) -> dict[str, float | None | str]:
        return {
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "latency_ratio": self.latency_ratio,
            "max_error": self.max_error,
            "metric": self.metric,
        }


@dataclass
class Allocation:
    """The chosen candidate per layer (label → candidate), totals in the budget's metric, and why layers
    stayed dense."""

    metric: Metric
    choices: dict[str, Candidate]
    cost_before: int
    cost_after: int
    damage: float
    budget: Budget | None = None
    reasons: dict[str, str] = field(default_factory=dict)
    layers: list[LayerCandidates] = field(default_factory=list, repr=False)

    @property
    def ratio(self) -> float:
        return self.cost_after / self.cost_before if self.cost_before else 1.0

    def totals(self, metric: Metric) -> tuple[int, int]:
        """(before, after) in another metric."""
        return (
            sum(layer.dense.cost(metric) for layer in self.layers),
            sum(self.choices[layer.label].cost(metric) for layer in self.layers),
        )

    def compressed(self) -> list[Candidate]:
        return [c for c in self.choices.values() if c.kind != "dense"]


def _damage(candidate: Candidate, weight: float) -> float:
    return weight * candidate.error**2


def _hull(curve: Sequence[Candidate], metric: Metric, weight: float) -> list[Candidate]:
    """Lower convex hull of (cost, damage) of a Pareto curve, from dense (most expensive) downwards."""
    points = sorted(curve, key=lambda c: (c.cost(metric), c.index))
    hull: list[Candidate] = []
    for c in points:  # monotone chain, lower hull, left to right (cheap → dense)
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            ax, ay = a.cost(metric), _damage(a, weight)
            bx, by = b.cost(metric), _damage(b, weight)
            cx, cy = c.cost(metric), _damage(c, weight)
            if (bx - ax) * (cy - ay) - (by - ay) * (cx - ax) <= 0:  # b not strictly below segment a-c
                hull.pop()
            else:
                break
        hull.append(c)
    return hull[::-1]  # dense first


def allocate(
    layers: Sequence[LayerCandidates],
    budget: Budget,
    *,
    weights: Mapping[str, float] | None = None,
    metric: Metric | None = None,
) -> Allocation:
    """Choose a candidate per layer meeting ``budget`` with the least ``Σ w_l ε_l²`` (module docstring).

    ``metric`` overrides the budget's (it matters for ``max_error`` alone: the cost each layer minimizes).
    Raises :class:`TTGraphError` when no choice meets the budget (the message gives the reachable ratio).
    """
    metric = metric or budget.metric
    weights = dict(weights or {})
    curves: list[list[Candidate]] = []
    reasons: dict[str, str] = {}
    for layer in layers:
        curve = layer.curve(metric)
        if budget.max_error is not None:
            capped = [c for c in curve if c.error <= budget.max_error]
            if len(capped) == 1 and len(curve) > 1:
                reasons[layer.label] = f"every factorization exceeds the error cap {budget.max_error:g}"
            curve = capped
        elif len(curve) == 1:
            reasons[layer.label] = f"no factorization is cheaper than the dense conv in {metric}"
        curves.append(curve)
    before = sum(layer.dense.cost(metric) for layer in layers)
    ratio = budget.ratio
    chosen: list[Candidate] | None
    if ratio is None:  # max_error alone: the cheapest candidate within the cap, per layer
        chosen = [min(curve, key=lambda c: (c.cost(metric), c.error, c.index)) for curve in curves]
    else:
        target = ratio * before * (1 + 1e-12)  # a ratio computed as cost/before must admit that cost
        chosen = _greedy(curves, metric, [weights.get(layer.label, 1.0) for layer in layers], target)
        if chosen is None:
            least = sum(min(c.cost(metric) for c in curve) for curve in curves)
            raise TTGraphError(
                "budget",
                f"a {metric} ratio of {ratio:g} is out of reach: the cheapest candidates give "
                f"{least / before:.3f}" + (" under the error cap" if budget.max_error is not None else ""),
            )
    choices = {layer.label: c for layer, c in zip(layers, chosen, strict=True)}
    for layer, c in zip(layers, chosen, strict=True):
        if c.kind == "dense" and layer.label not in reasons:
            reasons[layer.label] = (
                f"kept dense: the budget was met by layers that lose less accuracy per saved {metric}"
            )
    damage = sum(_damage(c, weights.get(label, 1.0)) for label, c in choices.items())
    after = sum(c.cost(metric) for c in chosen)
    return Allocation(metric, choices, before, after, damage, budget, reasons, list(layers))


def _greedy(
    curves: list[list[Candidate]], metric: Metric, weights: list[float], target: float
) -> list[Candidate] | None:
    hulls = [_hull(curve, metric, w) for curve, w in zip(curves, weights, strict=True)]
    pos = [0] * len(hulls)  # index into each hull (0 = dense / most expensive allowed)
    current = [h[0] for h in hulls]
    total = sum(c.cost(metric) for c in current)
    # Downgrade along the hulls by least damage per saved cost until the budget is met.
    while total > target:
        best: tuple[float, int] | None = None
        for i, hull in enumerate(hulls):
            if pos[i] + 1 < len(hull):
                a, b = hull[pos[i]], hull[pos[i] + 1]
                saved = a.cost(metric) - b.cost(metric)
                slope = (_damage(b, weights[i]) - _damage(a, weights[i])) / saved
                if best is None or slope < best[0]:
                    best = (slope, i)
        if best is None:
            return None
        i = best[1]
        pos[i] += 1
        total += hulls[i][pos[i]].cost(metric) - current[i].cost(metric)
        current[i] = hulls[i][pos[i]]
    # Spend the over-saved budget: upgrades (to any Pareto point) with the most damage removed per cost.
    while True:
        slack = target - total
        best_up: tuple[float, int, Candidate] | None = None
        for i, curve in enumerate(curves):
            cur = current[i]
            for c in curve:
                extra = c.cost(metric) - cur.cost(metric)
                gain = _damage(cur, weights[i]) - _damage(c, weights[i])
                if extra <= 0 or gain <= 0 or extra > slack:
                    continue
                score = gain / extra
                if best_up is None or score > best_up[0]:
                    best_up = (score, i, c)
        if best_up is None:
            break
        _, i, c = best_up
        total += c.cost(metric) - current[i].cost(metric)
        current[i] = c
    return current


def uniform_allocation(
    layers: Sequence[LayerCandidates],
    ratio: float,
    metric: Metric = "macs",
    *,
    kind: str = "lowrank",
    by: str = "cost",
) -> Allocation:
    """The baseline without trade between layers. ``by="cost"``: in every layer the most expensive ``kind``
    candidate costing ≤ ``ratio`` × the dense layer; ``by="rank"``: in every layer the ``kind`` candidate
    whose ranks are closest to ``ratio`` × its full ranks (uniform ranks, e.g. "half rank everywhere").
    Keep-dense where no candidate qualifies.
    """
    if not 0 < ratio <= 1:
        raise TTGraphError("ratio", f"expected a ratio in (0, 1], got {ratio}")
    if by not in ("cost", "rank"):
        raise TTGraphError("by", f"expected 'cost' or 'rank', got {by!r}")
    choices: dict[str, Candidate] = {}
    reasons: dict[str, str] = {}
    for layer in layers:
        pool = [c for c in layer.candidates if c.kind == kind]
        if by == "cost":
            limit = ratio * layer.dense.cost(metric)
            fits = [c for c in pool if c.cost(metric) <= limit]
            pick = max(fits, key=lambda c: (c.cost(metric), -c.error, -c.index)) if fits else None
        else:
            full = min(layer.conv.cout, layer.conv.cin)
            want = max(1, round(ratio * full))
            pick = min(pool, key=lambda c: (abs(c.ranks[1] - want), c.index)) if pool else None
            if pick is not None and abs(pick.ranks[1] - want) > max(1, 0.5 * want):
                pick = None  # the cheap candidates stop short of this rank: the factors would cost more
        if pick is not None:
            choices[layer.label] = pick
        else:
            choices[layer.label] = layer.dense
            reasons[layer.label] = f"no {kind} candidate at {ratio:g} of the dense {metric if by == 'cost' else 'rank'}"
    before = sum(layer.dense.cost(metric) for layer in layers)
    after = sum(c.cost(metric) for c in choices.values())
    damage = sum(_damage(c, 1.0) for c in choices.values())
    return Allocation(metric, choices, before, after, damage, None, reasons, list(layers))


def uniform_allocation_reaching(
    layers: Sequence[LayerCandidates], total: int, metric: Metric = "macs", *, by: str = "cost"
) -> Allocation:
    """The cheapest :func:`uniform_allocation` whose total cost reaches ``total``: uniform costs or ranks at what
    an :func:`allocate` result spends, so the two compare at equal cost.

    Every fraction at which some layer's pick can change is tried (a cost fraction of a candidate, or a rank
    k / full rank): the total is not monotone in the fraction — below a layer's cheapest candidate that layer
    falls back to dense — so a bisection could end on an all-dense model."""
    fractions: set[float] = {1.0}
    for layer in layers:
        if by == "rank":
            full = min(layer.conv.cout, layer.conv.cin)
            fractions.update(k / full for k in range(1, full + 1))
        else:
            dense = layer.dense.cost(metric)
            # a hair above cost/dense: uniform_allocation admits cost ≤ fraction·dense, and cost/dense·dense can
            # round below cost (15/22·22 < 15), which would skip the very candidate this fraction is for
            fractions.update(
                min(1.0, c.cost(metric) / dense * (1 + 1e-12)) for c in layer.candidates if 0 < c.cost(metric) <= dense
            )
    best: Allocation | None = None
    for fraction in sorted(fractions):
        uniform = uniform_allocation(layers, fraction, metric, by=by)
        if uniform.cost_after >= total and (best is None or uniform.cost_after < best.cost_after):
            best = uniform
    return best if best is not None else uniform_allocation(layers, 1.0, metric, by=by)
