"""How the activation meets the TT cores, one core at a time, on NCHW data without any Transpose.

The activation ``X`` (N × Cin × spatial) is viewed with channel multi-index ``(j_1..j_d)``. Cores are
merged into it one by one so that the merged cores always form a contiguous interval ``[lo, hi]``; then
the data's logical index order stays ``(j_<lo) (r_{lo-1}) (i_lo..i_hi) (r_hi) (j_>hi) (spatial)`` and every
step is a Reshape to ``[N, left, contracted, right]`` followed by a MatMul with a constant
``[out, contracted]`` matrix — a plain memory view, never a Transpose:

- first core k: contracted ``n_k``; out ``r_{k-1} m_k r_k``
- extend right with core k = hi+1: contracted ``(r_{k-1}, n_k)``; out ``(m_k, r_k)``
- extend left with core k = lo-1: contracted ``(n_k, r_k)``; out ``(r_{k-1}, m_k)``

The order is a choice: :func:`planned_order` asks the DP planner (:mod:`ttgraph.planner`) for the
cheapest transpose-free one; :func:`left_to_right` is the naive reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ttgraph.tt import TTFormat

Side = Literal["first", "right", "left"]


@dataclass(frozen=True)
class ContractionStep:
    """One Reshape + MatMul: ``[N, left, contracted, right·P] → [N, left, out, right·P]``.

    ``right`` counts channel-like trailing dims only; the spatial size ``P`` multiplies it at run time.
    """

    core: int
    side: Side
    left: int
    contracted: int
    out: int
    right: int

    def macs(self, pixels: int) -> int:
        """Multiply-accumulates of this step over ``pixels`` (batch × spatial) positions."""
        return self.left * self.out * self.contracted * self.right * pixels


def left_to_right(d: int) -> tuple[int, ...]:
    """The order 0, 1, …, d−1."""
    return tuple(range(d))


def planned_order(fmt: TTFormat, pixels: int = 1, cost: str = "flops") -> tuple[int, ...]:
    """The cheapest order the NCHW emitter can run (DP planner, transpose-free, no offline core merges,
    so the parameter count stays the format's). Low-rank is always V then U: it is emitted as two Convs.

    >>> planned_order(TTFormat((64, 2), (2, 64), (1, 4, 1)), pixels=100)
    (1, 0)
    """
    if fmt.is_lowrank:
        return (0, 1)
    from ttgraph.planner import plan_layer

    plan = plan_layer(
        fmt.modes_in,
        fmt.modes_out,
        fmt.ranks,
        pixels=max(1, pixels),
        cost=cost,
        allow_offline_merges=False,
        transpose_free_only=True,
    )
    assert plan.order is not None and all(len(g) == 1 for g in plan.groups or ())
    return tuple(plan.groups[i][0] for i in plan.order)  # type: ignore[index]


def contraction_steps(fmt: TTFormat, order: Sequence[int] | None = None) -> list[ContractionStep]:
    """The steps of an interval-growing ``order`` (see the module docstring), with their sizes.

    >>> [s.macs(1) for s in contraction_steps(TTFormat.lowrank(64, 32, 8))]
    [256, 512]
    """
    order = tuple(left_to_right(fmt.num_cores) if order is None else order)
    d = fmt.num_cores
    if sorted(order) != list(range(d)):
        raise ValueError(f"order {order} is not a permutation of the {d} cores")
    m, n, r = fmt.modes_out, fmt.modes_in, fmt.ranks
    steps: list[ContractionStep] = []
    lo = hi = order[0]
    steps.append(
        ContractionStep(lo, "first", math.prod(n[:lo]), n[lo], r[lo] * m[lo] * r[lo + 1], math.prod(n[lo + 1 :]))
    )
    for k in order[1:]:
        if k == hi + 1:
            left = math.prod(n[:lo]) * r[lo] * math.prod(m[lo : hi + 1])
            steps.append(ContractionStep(k, "right", left, r[k] * n[k], m[k] * r[k + 1], math.prod(n[k + 1 :])))
            hi = k
        elif k == lo - 1:
            right = math.prod(m[lo : hi + 1]) * r[hi + 1] * math.prod(n[hi + 1 :])
            steps.append(ContractionStep(k, "left", math.prod(n[:k]), n[k] * r[k + 1], r[k] * m[k], right))
            lo = k
        else:
            raise ValueError(f"order {order}: core {k} is not next to the merged interval [{lo}, {hi}]")
    return steps


def step_matrix(core: np.ndarray, side: Side) -> np.ndarray:
    """The constant ``[out, contracted]`` matrix a step multiplies by, from a core ``(r_a, m, n, r_b)``."""
    ra, mk, nk, rb = core.shape
    if side == "first":
        return core.transpose(0, 1, 3, 2).reshape(ra * mk * rb, nk)
    if side == "right":
        return core.transpose(1, 3, 0, 2).reshape(mk * rb, ra * nk)
    if side == "left":
        return core.reshape(ra * mk, nk * rb)
    raise ValueError(f"unknown side {side!r}")


def contraction_macs(fmt: TTFormat, pixels: int, order: Sequence[int] | None = None) -> int:
    """Run-time MACs of the TT layer over ``pixels`` positions when contracted in ``order``."""
    return sum(step.macs(pixels) for step in contraction_steps(fmt, order))
