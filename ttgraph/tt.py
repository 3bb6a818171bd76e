"""Tensor-Train (TT) matrix format of a 1×1 convolution weight: shapes, costs, TT-SVD and reconstruction.

A weight ``W`` of shape ``Cout × Cin`` with ``Cout = m_1⋯m_d`` and ``Cin = n_1⋯n_d`` is written as d cores
``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``, ``r_0 = r_d = 1``::

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ G_2[:, i_2, j_2, :] @ ... @ G_d[:, i_d, j_d, :]

with row-major multi-indices (``i_1``/``j_1`` most significant), as in Oseledets, "Tensor-Train
Decomposition", SIAM J. Sci. Comput. 33(5), 2011, and Novikov et al., "Tensorizing Neural Networks", 2015.

The plain two-factor low-rank form ``W ≈ U·V`` (``U: Cout×r``, ``V: r×Cin``) is the format of order
``d = 1`` here. It is stored as the 2-core TT ``modes_out = (1, Cout)``, ``modes_in = (Cin, 1)``,
``ranks = (1, r, 1)``, so costs, decomposition and contraction need no special case.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement

import numpy as np


@dataclass(frozen=True)
class TTFormat:
    """The shape of a TT-matrix factorization: modes of Cout and Cin, and the bond ranks ``r_0..r_d``."""

    modes_out: tuple[int, ...]
    modes_in: tuple[int, ...]
    ranks: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.modes_out)
        if n == 0 or len(self.modes_in) != n:
            raise ValueError(f"modes_out {self.modes_out} and modes_in {self.modes_in} need the same length ≥ 1")
        if len(self.ranks) != n + 1 or self.ranks[0] != 1 or self.ranks[-1] != 1:
            raise ValueError(f"ranks must be r_0..r_d with r_0 = r_d = 1, got {self.ranks} for {n} cores")
        if min(self.modes_out + self.modes_in + self.ranks) < 1:
            raise ValueError(f"modes and ranks must be positive, got {self}")

    @classmethod
    def lowrank(cls, cout: int, cin: int, rank: int) -> TTFormat:
        """The d = 1 format ``W ≈ U·V`` of rank ``rank``.

        >>> TTFormat.lowrank(64, 32, 8).params()
        768
        """
        return cls((1, cout), (cin, 1), (1, rank, 1))

    @property
    def is_lowrank(self) -> bool:
        return len(self.modes_out) == 2 and self.modes_out[0] == 1 and self.modes_in[1] == 1

    @property
    def d(self) -> int:
        """Order of the format as users count it: 1 for low-rank, else the number of cores."""
        return 1 if self.is_lowrank else len(self.modes_out)

    @property
    def num_cores(self) -> int:
        return len(self.modes_out)

    @property
    def cout(self) -> int:
        return math.prod(self.modes_out)

    @property
    def cin(self) -> int:
        return math.prod(self.modes_in)

    @property
    def inner_ranks(self) -> tuple[int, ...]:
        return self.ranks[1:-1]

    def core_shapes(self) -> list[tuple[int, int, int, int]]:
        r = self.ranks
        return [(r[k], m, n, r[k + 1]) for k, (m, n) in enumerate(zip(self.modes_out, self.modes_in, strict=True))]

    def params(self) -> int:
        """Number of weights in the cores (a bias, if any, is counted by the caller)."""
        return sum(math.prod(s) for s in self.core_shapes())

    def max_ranks(self) -> tuple[int, ...]:
        """The ranks at which TT-SVD is exact: ``r_k = min(∏_{l≤k} m_l n_l, ∏_{l>k} m_l n_l)``."""
        sizes = [m * n for m, n in zip(self.modes_out, self.modes_in, strict=True)]
        inner = tuple(min(math.prod(sizes[: k + 1]), math.prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))
        return (1, *inner, 1)

    def with_ranks(self, inner: Sequence[int]) -> TTFormat:
        return TTFormat(self.modes_out, self.modes_in, (1, *inner, 1))


def dense_macs(cout: int, cin: int, pixels: int) -> int:
    """MACs of the dense 1×1 conv over ``pixels`` output positions (batch × output H × W)."""
    return cout * cin * pixels


def split_modes(channels: int, d: int) -> tuple[int, ...] | None:
    """Split ``channels`` into ``d`` factors, each ≥ 2, as balanced as possible (ascending).

    Balanced means the largest factor is as small as possible, then the smallest as large as possible.
    Returns None when no such split exists (e.g. a prime number of channels and d ≥ 2).

    >>> split_modes(384, 2), split_modes(96, 3), split_modes(97, 2)
    ((16, 24), (4, 4, 6), None)
    """
    if d < 1 or channels < 1:
        raise ValueError(f"need d ≥ 1 and channels ≥ 1, got d={d}, channels={channels}")
    if d == 1:
        return (channels,)
    divisors = [f for f in range(2, channels + 1) if channels % f == 0]
    best: tuple[int, ...] | None = None
    for combo in combinations_with_replacement(divisors, d - 1):
        rest, remainder = divmod(channels, math.prod(combo))
        if remainder or rest < combo[-1]:
            continue
        split = (*combo, rest)
        if best is None or (split[-1], -split[0]) < (best[-1], -best[0]):
            best = split
    return best


def lowrank_format(cout: int, cin: int, rank: int | None = None) -> TTFormat:
    """The d = 1 format, at full rank ``min(Cout, Cin)`` unless ``rank`` is given (capped there)."""
    full = min(cout, cin)
    return TTFormat.lowrank(cout, cin, full if rank is None else max(1, min(rank, full)))


def tt_format(cout: int, cin: int, d: int) -> TTFormat | None:
    """The balanced full-rank format of order ``d`` for a ``cout × cin`` weight, or None if none exists."""
    if d == 1:
        return lowrank_format(cout, cin)
    modes_out, modes_in = split_modes(cout, d), split_modes(cin, d)
    if modes_out is None or modes_in is None:
        return None
    shell = TTFormat(modes_out, modes_in, (1,) * (d + 1))
    return shell.with_ranks(shell.max_ranks()[1:-1])


def scale_ranks(fmt: TTFormat, *, rank: int | None = None, ratio: float | None = None) -> TTFormat:
    """Reduce a full-rank format's ranks: cap them at ``rank``, or take ``ceil(ratio · r_k)`` (≥ 1)."""
    if (rank is None) == (ratio is None):
        raise ValueError("give exactly one of rank and ratio")
    full = fmt.max_ranks()[1:-1]
    if rank is not None:
        if rank < 1:
            raise ValueError(f"rank must be ≥ 1, got {rank}")
        inner = [min(rank, r) for r in full]
    else:
        assert ratio is not None
        if not 0 < ratio <= 1:
            raise ValueError(f"rank ratio must be in (0, 1], got {ratio}")
        inner = [max(1, min(r, math.ceil(ratio * r - 1e-9))) for r in full]
    return fmt.with_ranks(inner)


def _as_tt_tensor(weight: np.ndarray, fmt: TTFormat) -> np.ndarray:
    """``W`` reshaped to ``(m_1, n_1, m_2, n_2, …)``, the index order TT-SVD sweeps."""
    d = fmt.num_cores
    tensor = weight.reshape(*fmt.modes_out, *fmt.modes_in)
    perm = [axis for k in range(d) for axis in (k, d + k)]
    return tensor.transpose(perm)


def tt_svd(weight: np.ndarray, fmt: TTFormat, *, tolerance: float | None = None) -> tuple[list[np.ndarray], TTFormat]:
    """Decompose ``weight`` (Cout × Cin) into TT cores by sequential truncated SVD (TT-SVD, Oseledets 2011).

    Ranks come from ``fmt`` (each capped at what the data allows), or, with ``tolerance`` ε, they are the
    smallest ranks such that ``‖W − Ŵ‖_F ≤ ε‖W‖_F`` (each of the d−1 truncations gets ``ε/√(d−1)``).
    Computed in float64. Returns the cores and the format actually used.

    >>> w = np.arange(12.0).reshape(3, 4)
    >>> cores, used = tt_svd(w, lowrank_format(3, 4))
    >>> bool(np.allclose(tt_reconstruct(cores), w)), used.ranks
    (True, (1, 3, 1))
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.shape != (fmt.cout, fmt.cin):
        raise ValueError(f"weight has shape {w.shape}, format {fmt} expects ({fmt.cout}, {fmt.cin})")
    if tolerance is not None and tolerance < 0:
        raise ValueError(f"tolerance must be ≥ 0, got {tolerance}")
    if not np.isfinite(w).all():  # else LAPACK's "SVD did not converge"
        raise ValueError("weight holds NaN or infinite values")
    d = fmt.num_cores
    sizes = [m * n for m, n in zip(fmt.modes_out, fmt.modes_in, strict=True)]
    delta = tolerance * np.linalg.norm(w) / math.sqrt(d - 1) if tolerance is not None and d > 1 else None
    cores: list[np.ndarray] = []
    ranks = [1]
    rest = _as_tt_tensor(w, fmt).reshape(sizes[0], -1)
    for k in range(d - 1):
        u, s, vt = np.linalg.svd(rest, full_matrices=False)
        if delta is None:
            r = min(fmt.ranks[k + 1], s.size)
        else:
            tail = np.sqrt(np.cumsum((s**2)[::-1]))[::-1]  # tail[i] = ‖s[i:]‖
            r = max(1, int(np.sum(tail > delta)))
        cores.append(u[:, :r].reshape(ranks[-1], fmt.modes_out[k], fmt.modes_in[k], r))
        ranks.append(r)
        rest = (s[:r, None] * vt[:r]).reshape(r * sizes[k + 1], -1)
    cores.append(rest.reshape(ranks[-1], fmt.modes_out[-1], fmt.modes_in[-1], 1))
    ranks.append(1)
    return cores, TTFormat(fmt.modes_out, fmt.modes_in, tuple(ranks))


def tt_reconstruct(cores: Sequence[np.ndarray]) -> np.ndarray:
    """The dense ``Cout × Cin`` matrix the cores represent (the formula in the module docstring)."""
    if not cores:
        raise ValueError("need at least one core")
    for a, b in zip(cores, cores[1:], strict=False):
        if a.shape[3] != b.shape[0]:
            raise ValueError(f"core bond sizes disagree: {a.shape} then {b.shape}")
    # Running product with indices (i_<=k, j_<=k, r_k).
    acc = cores[0].reshape(cores[0].shape[1], cores[0].shape[2], cores[0].shape[3])
    for core in cores[1:]:
        acc = np.einsum("ija,aklb->ikjlb", acc, core)
        i, k, j, l_, b = acc.shape
        acc = acc.reshape(i * k, j * l_, b)
    return acc[:, :, 0]


def format_of(cores: Sequence[np.ndarray]) -> TTFormat:
    """The TTFormat of a list of cores."""
    return TTFormat(
        tuple(c.shape[1] for c in cores),
        tuple(c.shape[2] for c in cores),
        (*(c.shape[0] for c in cores), cores[-1].shape[3]),
    )


def relative_error(weight: np.ndarray, approx: np.ndarray) -> float:
    """``‖W − Ŵ‖_F / ‖W‖_F`` (0 for an all-zero W reproduced exactly)."""
    norm = float(np.linalg.norm(weight))
    diff = float(np.linalg.norm(np.asarray(weight, np.float64) - approx))
    return diff / norm if norm > 0 else diff
