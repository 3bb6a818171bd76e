"""Per-layer candidates: data-aware factorizations of a 1×1 conv weight, each with its exact cost and error.

The error that matters is the layer's *output* error on calibration data. With the input rows ``X`` of the
conv and their Gram matrix ``G = XᵀX`` (:mod:`ttgraph.calibration`), the relative output error of a
replacement ``Ŵ`` is exact from ``G`` alone::

    ε(Ŵ) = ‖X(W − Ŵ)ᵀ‖_F / ‖XWᵀ‖_F = sqrt(tr(E G Eᵀ) / tr(W G Wᵀ)),   E = W − Ŵ.

**d = 1 (low-rank), activation-whitened.** With ``G = LLᵀ`` the best rank-r ``Ŵ`` in that norm is
``Ŵ = U_r U_rᵀ W`` where ``U_r`` are the top r left singular vectors of ``WL`` (Eckart–Young on ``WL``;
e.g. Yu & Wu, "Compressing Transformers: Features Are Low-Rank, but Weights Are Not!", AAAI 2023, and
SVD-LLM / ASVD). It needs no inverse of ``L``, so a rank-deficient ``G`` is fine. One SVD gives every rank,
and ``tr(E G Eᵀ) = tr(M) − Σ_{i≤r} u_iᵀ M u_i`` with ``M = W G Wᵀ`` gives every rank's error at once.
Weight-only SVD is the same projection with ``U`` from the SVD of ``W``.

**d ≥ 2 (TT-matrix), data-aware ALS.** Start from TT-SVD of ``W`` (Oseledets 2011), then alternating least
squares on ``tr(E G Eᵀ)``: the objective is quadratic in each core, and because ``G`` acts on the input index
only, the normal equations of core k share one Hessian across the core's output mode
``H = Σ A[j<,a,j<',a'] G[(j<,j_k,j>),(j<',j_k',j>')] B[b,j>,b',j>']`` (``A``, ``B`` the Gram matrices of the
left and right interfaces), so a core update is one ``(r_{k-1} n_k r_k)``-sized solve. Interfaces are kept
orthonormal (QR sweeps), as in Holtz, Rohwedder & Schneider, "The alternating linear scheme for tensor
optimization in the TT format", SIAM J. Sci. Comput. 2012.

Fits use ``G + λ·(tr G / Cin)·I`` (``damping`` λ) so directions the calibration data never excited are not
thrown away blindly; reported errors use ``G`` itself.

Every candidate carries its exact params (cores + bias) and MACs (the emitted contraction in the order the
planner picks, :func:`ttgraph.contraction.contraction_macs`). :meth:`LayerCandidates.curve` is the
error-vs-cost Pareto front for one metric, keep-dense included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from ttgraph.calibration import LayerStatistics, output_error
from ttgraph.contraction import contraction_macs, planned_order
from ttgraph.errors import TTGraphError
from ttgraph.progress import progress_bar
from ttgraph.tt import TTFormat, relative_error, split_modes, tt_reconstruct, tt_svd

Method = Literal["data", "weight"]
Metric = Literal["macs", "params", "latency"]

__all__ = [
    "Candidate",
    "LayerCandidates",
    "als_fit",
    "build_candidates",
    "flush_subnormals",
    "tt_rank_grid",
    "whitening_factor",
]

DEFAULT_RANK_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
MAX_ALS_UNKNOWNS = 1024  # largest core slice (r_{k-1}·n_k·r_k) the ALS solves for; bigger TT candidates skip


@dataclass(frozen=True)
class Candidate:
    """One way to replace a layer: ``kind`` "dense" (keep the conv), "lowrank" (d = 1) or "tt" (d ≥ 2).

    ``error`` is the calibration output error (or the weight error when the layer has no statistics);
    ``params`` counts cores and bias; ``macs`` the emitted contraction (None when the spatial size is
    unknown). ``index`` is its position in :attr:`LayerCandidates.candidates`.
    """

    layer: str
    kind: Literal["dense", "lowrank", "tt"]
    fmt: TTFormat | None
    order: tuple[int, ...] | None
    params: int
    macs: int | None
    error: float
    weight_error: float
    method: str
    index: int
    latency: int | None = None  # measured/estimated time on the target runtime, ns (latency budgets only)

    @property
    def d(self) -> int:
        return 0 if self.fmt is None else self.fmt.d

    @property
    def ranks(self) -> tuple[int, ...]:
        return () if self.fmt is None else self.fmt.ranks

    def cost(self, metric: Metric) -> int:
        value = {"macs": self.macs, "params": self.params, "latency": self.latency}[metric]
        if value is None:
            if metric == "latency":
                raise TTGraphError(self.layer, "no latency measured for this candidate")
            raise TTGraphError(self.layer, "MACs are unknown (dynamic spatial size): fix the input shape")
        return int(value)


def flush_subnormals(array: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Zero the entries that would be subnormal in ``dtype`` (they make float kernels crawl)."""
    tiny = np.finfo(dtype).tiny
    out = np.array(array, dtype=np.float64, copy=True)
    out[np.abs(out) < tiny] = 0.0
    return out


def whitening_factor(gram: np.ndarray, damping: float = 0.0) -> np.ndarray:
    """``L`` with ``L Lᵀ = G + λ·(tr G / n)·I`` (symmetric square root; eigenvalues clipped at 0).

    >>> g = np.diag([4.0, 1.0]); l = whitening_factor(g)
    >>> bool(np.allclose(l @ l.T, g))
    True
    """
    g = np.asarray(gram, np.float64)
    n = g.shape[0]
    g = (g + g.T) / 2
    if damping > 0:
        g = g + damping * (np.trace(g) / max(n, 1)) * np.eye(n)
    vals, vecs = np.linalg.eigh(g)
    return vecs * np.sqrt(np.clip(vals, 0.0, None))


def tt_rank_grid(max_rank: int, grid: Sequence[int] = DEFAULT_RANK_GRID) -> list[int]:
    """The uniform inner ranks tried for d ≥ 2: ``grid`` values below ``max_rank``, then ``max_rank``."""
    return sorted({r for r in grid if r < max_rank} | {max_rank})


# ------------------------------------------------------------------------------------------------ the ALS


def _left_interfaces(cores: list[np.ndarray], k: int) -> np.ndarray:
    """Contraction of cores 0..k-1 as ``(M<, N<, r_k)``."""
    acc = np.ones((1, 1, 1))
    for core in cores[:k]:
        ra, m, n, rb = core.shape
        acc = np.einsum("xja,aiJb->xijJb", acc, core).reshape(acc.shape[0] * m, acc.shape[1] * n, rb)
    return acc


def _right_interfaces(cores: list[np.ndarray], k: int) -> np.ndarray:
    """Contraction of cores k+1..d-1 as ``(r_{k+1}, M>, N>)``."""
    acc = np.ones((1, 1, 1))
    for core in reversed(cores[k + 1 :]):
        ra, m, n, rb = core.shape
        acc = np.einsum("aijb,bxy->aixjy", core, acc).reshape(ra, m * acc.shape[1], n * acc.shape[2])
    return acc


def _solve_core(
    cores: list[np.ndarray], k: int, weight_gram: np.ndarray, gram: np.ndarray, fmt: TTFormat
) -> np.ndarray:
    """The core k minimizing ``tr((W − Ŵ) G (W − Ŵ)ᵀ)`` with the other cores fixed.

    ``weight_gram`` is ``W G`` (Cout × Cin). The Hessian and right-hand side are built with two BLAS
    contractions each (module docstring); the solve is ``(r_{k-1} n_k r_k)``-sized.
    """
    lf = _left_interfaces(cores, k)  # (M<, N<, ra)
    rf = _right_interfaces(cores, k)  # (rb, M>, N>)
    ra, mk, nk, rb = cores[k].shape
    m_lo, n_lo = lf.shape[0], lf.shape[1]
    m_hi, n_hi = rf.shape[1], rf.shape[2]
    lf2 = lf.reshape(m_lo, n_lo * ra)
    a_mat = (lf2.T @ lf2).reshape(n_lo, ra, n_lo, ra)  # A[j, a, J, A]
    rf2 = rf.transpose(1, 0, 2).reshape(m_hi, rb * n_hi)
    b_mat = (rf2.T @ rf2).reshape(rb, n_hi, rb, n_hi)  # B[b, z, B, Z]
    g6 = gram.reshape(n_lo, nk, n_hi, n_lo, nk, n_hi)  # G[j, k, z, J, K, Z]
    t1 = np.tensordot(a_mat, g6, axes=([0, 2], [0, 3]))  # (a, A, k, z, K, Z)
    t2 = np.tensordot(t1, b_mat, axes=([3, 5], [1, 3]))  # (a, A, k, K, b, B)
    p = ra * nk * rb
    h = t2.transpose(0, 2, 4, 1, 3, 5).reshape(p, p)
    wg6 = weight_gram.reshape(m_lo, mk, m_hi, n_lo, nk, n_hi)  # (x, i, y, j, k, z)
    r1 = np.tensordot(lf, wg6, axes=([0, 1], [0, 3]))  # (a, i, y, k, z)
    r2 = np.tensordot(r1, rf, axes=([2, 4], [1, 2]))  # (a, i, k, b)
    rhs = r2.transpose(0, 2, 3, 1).reshape(p, mk)
    h = (h + h.T) / 2
    h[np.diag_indices(p)] += 1e-10 * max(float(np.trace(h)) / p, 1e-300)
    try:
        theta = np.linalg.solve(h, rhs)
    except np.linalg.LinAlgError:
        theta = np.linalg.lstsq(h, rhs, rcond=None)[0]
    # theta[(a, j_k, b), i_k] → core (a, i_k, j_k, b)
    return theta.reshape(ra, nk, rb, mk).transpose(0, 3, 1, 2)


def _qr_right(cores: list[np.ndarray], k: int) -> None:
    """Make core k left-orthonormal, pushing its R into core k+1."""
    ra, m, n, rb = cores[k].shape
    q, r = np.linalg.qr(cores[k].reshape(ra * m * n, rb))
    cores[k] = q.reshape(ra, m, n, q.shape[1])
    cores[k + 1] = np.einsum("ab,bijc->aijc", r, cores[k + 1])


def _qr_left(cores: list[np.ndarray], k: int) -> None:
    """Make core k right-orthonormal, pushing its L into core k-1."""
    ra, m, n, rb = cores[k].shape
    q, r = np.linalg.qr(cores[k].reshape(ra, m * n * rb).T)
    cores[k] = q.T.reshape(q.shape[1], m, n, rb)
    cores[k - 1] = np.einsum("aijb,cb->aijc", cores[k - 1], r)


def als_fit(
    weight: np.ndarray,
    gram: np.ndarray,
    fmt: TTFormat,
    *,
    sweeps: int = 3,
    init: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """TT cores of ``fmt`` minimizing ``tr((W − Ŵ) G (W − Ŵ)ᵀ)`` by ALS sweeps from TT-SVD (module docstring).

    >>> rng = np.random.default_rng(0)
    >>> w = rng.standard_normal((8, 8)); x = rng.standard_normal((200, 8)) * np.arange(1, 9)
    >>> fmt = TTFormat((2, 4), (2, 4), (1, 2, 1)); g = x.T @ x
    >>> als = output_error(g, w, tt_reconstruct(als_fit(w, g, fmt)))
    >>> svd = output_error(g, w, tt_reconstruct(tt_svd(w, fmt)[0]))
    >>> bool(als < svd)
    True
    """
    w = np.asarray(weight, np.float64)
    if w.shape != (fmt.cout, fmt.cin) or gram.shape != (fmt.cin, fmt.cin):
        raise ValueError(f"weight {w.shape} / gram {gram.shape} do not fit {fmt}")
    cores = [c.copy() for c in (init if init is not None else tt_svd(w, fmt)[0])]
    d = len(cores)
    if d == 1:
        return cores
    weight_gram = w @ gram
    for k in range(d - 1, 0, -1):  # right-orthonormalize: the norm sits in core 0
        _qr_left(cores, k)
    for _ in range(sweeps):
        for k in range(d):
            cores[k] = _solve_core(cores, k, weight_gram, gram, fmt)
            if k < d - 1:
                _qr_right(cores, k)
        for k in range(d - 1, -1, -1):
            cores[k] = _solve_core(cores, k, weight_gram, gram, fmt)
            if k > 0:
                _qr_left(cores, k)
    return cores


# ----------------------------------------------------------------------------------------- the candidates


@dataclass
class LayerCandidates:
    """All candidates of one layer, how to build their cores, and their error-vs-cost curves."""

    conv: Any  # passes.find_pointwise.PointwiseConv
    method: Method
    candidates: list[Candidate]
    stats: LayerStatistics | None = None
    damping: float = 0.0
    center: bool = False
    _basis: np.ndarray | None = field(default=None, repr=False)  # d = 1: left singular vectors (Cout × k)
    _tt_cores: dict[int, list[np.ndarray]] = field(default_factory=dict, repr=False)
    # made once per candidate: compensation rebuilds the model once per dependency level, every layer each time
    _made: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return self.conv.label

    @property
    def dense(self) -> Candidate:
        return self.candidates[0]

    def curve(self, metric: Metric) -> list[Candidate]:
        """The Pareto front for ``metric``: cheapest first, each strictly more accurate than every cheaper
        one, ending with keep-dense (error 0). Candidates costing at least the dense layer are dropped."""
        dense_cost = self.dense.cost(metric)
        pool = sorted(
            (c for c in self.candidates[1:] if c.cost(metric) < dense_cost),
            key=lambda c: (c.cost(metric), c.error, c.index),
        )
        front: list[Candidate] = []
        for c in pool:
            if not front or c.error < front[-1].error:
                if front and c.cost(metric) == front[-1].cost(metric):
                    continue
                front.append(c)
        return [*front, self.dense]

    def cores(self, candidate: Candidate) -> list[np.ndarray]:
        """The float64 TT cores ``(r_{k-1}, m_k, n_k, r_k)`` of a non-dense candidate (subnormals flushed)."""
        if candidate.kind == "dense" or candidate.fmt is None:
            raise TTGraphError(self.label, "a dense candidate has no cores")
        key = ("cores", candidate.index)
        if key not in self._made:
            self._made[key] = self._make_cores(candidate)
        return [c.copy() for c in self._made[key]]

    def _make_cores(self, candidate: Candidate) -> list[np.ndarray]:
        assert candidate.fmt is not None
        dtype = np.float32 if self.conv.weight_dtype == np.float16 else self.conv.weight_dtype
        if candidate.kind == "lowrank":
            assert self._basis is not None
            r = candidate.fmt.ranks[1]
            u = self._basis[:, :r]
            v = u.T @ np.asarray(self.conv.weight, np.float64)
            cores = [v.T.reshape(1, 1, self.conv.cin, r), u.T.reshape(r, self.conv.cout, 1, 1)]
        else:
            cores = [c.copy() for c in self._tt_cores[candidate.index]]
        return [flush_subnormals(c, dtype) for c in cores]

    def bias(self, candidate: Candidate) -> np.ndarray | None:
        """The bias the rewritten layer carries: the conv's, plus ``(W − Ŵ)μ`` (the calibration mean of the
        dropped part) for centered fits, so the error has zero mean on calibration data."""
        if candidate.kind == "dense" or not self.center or self.stats is None:
            return self.conv.bias
        key = ("bias", candidate.index)
        if key not in self._made:
            self._made[key] = self._make_bias(candidate, self.stats)
        return self._made[key].copy()

    def _make_bias(self, candidate: Candidate, stats: LayerStatistics) -> np.ndarray:
        base = np.zeros(self.conv.cout) if self.conv.bias is None else np.asarray(self.conv.bias, np.float64)
        shift = (np.asarray(self.conv.weight, np.float64) - self.approx(candidate)) @ stats.mean
        dtype = self.conv.bias.dtype if self.conv.bias is not None else self.conv.weight_dtype
        return (base + shift).astype(dtype)

    def approx(self, candidate: Candidate) -> np.ndarray:
        """``Ŵ`` of a candidate (the weight itself for keep-dense)."""
        if candidate.kind == "dense":
            return np.asarray(self.conv.weight, np.float64)
        return tt_reconstruct(self.cores(candidate))

    def errors_on(self, stats: LayerStatistics, candidates: Iterable[Candidate] | None = None) -> dict[int, float]:
        """Output errors of candidates on other data (e.g. held-out statistics), by candidate index."""
        wanted = list(self.candidates if candidates is None else candidates)
        w = np.asarray(self.conv.weight, np.float64)
        out: dict[int, float] = {}
        lowrank = [c for c in wanted if c.kind == "lowrank"]
        residual = self._residual_gram(stats)
        if lowrank and self._basis is not None:
            errs = _projection_errors(w, residual, self._basis, stats.gram)
            for c in lowrank:
                out[c.index] = errs[c.fmt.ranks[1] - 1]  # type: ignore[union-attr]
        for c in wanted:
            if c.kind == "dense":
                out[c.index] = 0.0
            elif c.index not in out:
                out[c.index] = output_error(residual, w, self.approx(c), stats.gram)
        return out

    def _residual_gram(self, stats: LayerStatistics) -> np.ndarray:
        """Gram matrix of the rows the error acts on: ``x`` itself, or ``x − μ_calibration`` when centered."""
        if not self.center or self.stats is None:
            return stats.gram
        return centered_gram(stats, self.stats.mean)


def centered_gram(stats: LayerStatistics, mean: np.ndarray) -> np.ndarray:
    """``Σ (x − μ)(x − μ)ᵀ`` over the rows of ``stats`` for a given ``μ`` (from the sums, no data)."""
    mu = np.asarray(mean, np.float64)
    return stats.gram - np.outer(mu, stats.sum) - np.outer(stats.sum, mu) + stats.rows * np.outer(mu, mu)


def _projection_errors(
    weight: np.ndarray, gram: np.ndarray, basis: np.ndarray, reference: np.ndarray | None = None
) -> np.ndarray:
    """Output error of ``Ŵ_r = U_r U_rᵀ W`` for r = 1..k (columns of ``basis``): with ``M = W G Wᵀ``,
    ``tr(E G Eᵀ) = tr(M) − Σ_{i≤r} u_iᵀ M u_i``, relative to ``tr(W R Wᵀ)`` (``R = reference``, default G)."""
    m = weight @ gram @ weight.T
    total = float(np.trace(m))
    ref = total if reference is None else float(np.sum((weight @ reference) * weight))
    kept = np.cumsum(np.sum(basis * (m @ basis), axis=0))
    resid = np.clip(total - kept, 0.0, None)
    return np.sqrt(resid / ref) if ref > 0 else np.sqrt(resid)


def _weight_projection_errors(weight: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return _projection_errors(weight, np.eye(weight.shape[1]), basis)


def _mode_splits(cout: int, cin: int, d: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Balanced splits of Cout and Cin into d modes ≥ 2: ascending and descending (all four pairings for
    d = 2, the two aligned ones for d ≥ 3), deduplicated."""
    mo, mi = split_modes(cout, d), split_modes(cin, d)
    if mo is None or mi is None:
        return []
    pairs = [(mo, mi), (mo[::-1], mi[::-1])]
    if d == 2:
        pairs += [(mo, mi[::-1]), (mo[::-1], mi)]
    splits: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for pair in pairs:
        if pair not in splits:
            splits.append(pair)
    return splits


def build_candidates(
    conv: Any,
    stats: LayerStatistics | None,
    *,
    method: Method = "data",
    cores: Sequence[int] = (1,),
    rank_multiple: int = 1,
    damping: float = 0.01,
    als_sweeps: int = 2,
    rank_grid: Sequence[int] = DEFAULT_RANK_GRID,
    max_als_unknowns: int = MAX_ALS_UNKNOWNS,
    opset: int = 17,
    plan_cost: str = "flops",
    center: bool = True,
    metric: Metric | None = None,
    progress: bool = False,
) -> LayerCandidates:
    """Enumerate one layer's candidates (keep-dense first) with exact params, MACs and errors.

    ``method="data"`` fits on the calibration statistics (whitened SVD for d = 1, ALS for d ≥ 2) and each
    candidate's ``error`` is its calibration output error; ``"weight"`` is the data-free baseline: plain
    SVD / TT-SVD, ``error`` = weight error, ``stats`` unused (measure it with
    :meth:`LayerCandidates.errors_on`). ``cores`` lists the orders d to try (1 = low-rank). d = 1 ranks
    are the multiples of ``rank_multiple``; d ≥ 2 use uniform inner ranks from ``rank_grid`` on the
    balanced mode splits. Candidates that cost at least the dense layer in ``metric`` (both params and
    MACs when None) are not built. ``center``
    (data-aware only) fits the factors to the centred inputs and moves the mean of the dropped part into
    the bias (:meth:`LayerCandidates.bias`): the least-squares optimum when the bias is free too.
    """
    if method not in ("data", "weight"):
        raise TTGraphError("method", f"expected 'data' or 'weight', got {method!r}")
    if method == "data" and stats is None:
        raise TTGraphError(conv.label, "data-aware candidates need calibration statistics")
    if rank_multiple < 1:
        raise TTGraphError("rank_multiple", f"expected ≥ 1, got {rank_multiple}")
    w = np.asarray(conv.weight, np.float64)
    cout, cin = w.shape
    pixels = conv.pixels
    center = bool(center and method == "data")
    dense_bias = 0 if conv.bias is None else int(conv.bias.size)
    bias = cout if center else dense_bias  # a centred fit always carries a bias
    if method == "weight":
        stats = None
    gram = None if stats is None else stats.gram
    # What the fit minimizes and the error's numerator act on: x, or x − μ when centred.
    fit_gram = None if stats is None else (centered_gram(stats, stats.mean) if center else stats.gram)
    out: list[Candidate] = []

    def add(kind: str, fmt: TTFormat | None, order, params, macs, error, werr, how) -> Candidate:
        c = Candidate(conv.label, kind, fmt, order, params, macs, error, werr, how, len(out))  # type: ignore[arg-type]
        out.append(c)
        return c

    dense_macs_value = None if pixels is None else cout * cin * pixels
    add("dense", None, None, int(w.size) + dense_bias, dense_macs_value, 0.0, 0.0, "dense")
    layer = LayerCandidates(conv, method, out, stats, damping, center)
    dense_params, dense_macs = out[0].params, out[0].macs

    def worthwhile(params: int, macs: int | None) -> bool:
        cheaper_macs = macs is not None and dense_macs is not None and macs < dense_macs
        if metric == "macs":
            return cheaper_macs
        if metric == "params":
            return params < dense_params
        return params < dense_params or cheaper_macs

    if 1 in cores:
        full = min(cout, cin)
        if method == "data":
            assert fit_gram is not None
            basis = np.linalg.svd(w @ whitening_factor(fit_gram, damping), full_matrices=False)[0]
        else:
            basis = np.linalg.svd(w, full_matrices=False)[0]
        basis = _sign_fix(basis)
        layer._basis = basis
        errs = _projection_errors(w, fit_gram, basis, gram) if fit_gram is not None else None
        werrs = _weight_projection_errors(w, basis)
        for r in range(rank_multiple, full, rank_multiple):
            fmt = TTFormat.lowrank(cout, cin, r)
            params = fmt.params() + bias
            macs = None if pixels is None else contraction_macs(fmt, pixels, (0, 1))
            if not worthwhile(params, macs):
                break
            werr = float(werrs[r - 1])
            err = float(errs[r - 1]) if errs is not None else werr
            add("lowrank", fmt, (0, 1), params, macs, err, werr, "whitened-svd" if method == "data" else "svd")
    strided = any(s != 1 for s in conv.strides)
    # a wide layer's TT fits take minutes (2048→2048, d ≤ 3: 138 s): a bar of their own, not a still terminal
    fits = progress_bar(desc=f"{conv.label}: TT fits", unit="fit", show=progress and max(cores) >= 2, leave=False)
    for d in sorted(set(cores) - {1}):
        if d < 2 or (strided and opset < 10):
            continue
        for modes_out, modes_in in _mode_splits(cout, cin, d):
            shell = TTFormat(modes_out, modes_in, (1,) * (d + 1))
            caps = shell.max_ranks()[1:-1]
            for r in tt_rank_grid(max(caps), rank_grid):
                fmt = shell.with_ranks([min(r, c) for c in caps])
                order = planned_order(fmt, pixels or 1, plan_cost)
                params = fmt.params() + bias
                macs = None if pixels is None else contraction_macs(fmt, pixels, order)
                if not worthwhile(params, macs):
                    break
                if method == "data":
                    largest = max(a * n * b for a, _, n, b in fmt.core_shapes())
                    if largest > max_als_unknowns:
                        break
                    assert fit_gram is not None
                    fit = als_fit(w, _damped(fit_gram, damping), fmt, sweeps=als_sweeps)
                    how = "tt-als"
                else:
                    fit = tt_svd(w, fmt)[0]
                    how = "tt-svd"
                approx = tt_reconstruct(fit)
                werr = relative_error(w, approx)
                err = output_error(fit_gram, w, approx, gram) if fit_gram is not None else werr
                c = add("tt", fmt, order, params, macs, err, werr, how)
                layer._tt_cores[c.index] = fit
                fits.update(1)
    fits.close()
    return layer


def _damped(gram: np.ndarray, damping: float) -> np.ndarray:
    if damping <= 0:
        return gram
    n = gram.shape[0]
    return gram + damping * (np.trace(gram) / max(n, 1)) * np.eye(n)


def _sign_fix(basis: np.ndarray) -> np.ndarray:
    """Deterministic signs for singular vectors (largest entry of each column positive)."""
    idx = np.argmax(np.abs(basis), axis=0)
    signs = np.sign(basis[idx, np.arange(basis.shape[1])])
    signs[signs == 0] = 1
    return basis * signs


def total_cost(layers: Sequence[LayerCandidates], metric: Metric) -> int:
    return sum(layer.dense.cost(metric) for layer in layers)


def describe(candidate: Candidate) -> str:
    """Short text: ``dense``, ``lowrank r=16`` or ``tt d=2 (4,4)x(4,6) r=8``."""
    if candidate.fmt is None:
        return "dense"
    if candidate.kind == "lowrank":
        return f"lowrank r={candidate.fmt.ranks[1]}"
    f = candidate.fmt
    return f"tt d={f.d} {f.modes_out}x{f.modes_in} r={','.join(map(str, f.inner_ranks))}"
