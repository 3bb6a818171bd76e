"""Error compensation: refit the compressed layers to the *original* network's outputs, given the inputs the
*compressed* network actually feeds them (closed-form, from streamed statistics).

Per-layer factorization errors compound: layer l of the compressed network no longer sees the original input
rows ``x`` but ``x̃`` (everything upstream is approximate). Asymmetric reconstruction fits each compressed layer
to what the original layer would have produced on the same calibration sample::

    min_{Ŵ of rank r, b}  Σ_rows ‖Ŵ x̃ + b − (W x + b₀)‖²  +  λ ‖Ŵ − W‖²_F

(Zhang et al., "Accelerating Very Deep Convolutional Networks for Classification and Detection", TPAMI 2016,
§3.3 "asymmetric reconstruction"; the free bias is bias correction, Nagel et al., "Data-Free Quantization",
ICCV 2019). Everything needed is streamed per layer over the calibration feeds while the original and the
current compressed model run side by side (float64 accumulators, ``Cin × Cin`` each; memory is bounded by
the statistics): ``G̃ = Σ x̃x̃ᵀ``, ``C = Σ x̃xᵀ``, ``G = Σ xxᵀ``, the sums of ``x̃`` and ``x`` and the row count.

**d = 1 (low-rank):** the problem is ridge reduced-rank regression. With centred statistics (the bias is free)
``G̃c``, ``Cc`` and ``λ = damping · tr(G̃c)/Cin``, the full-rank solution is ``β = (G̃c + λI)⁻¹(Cc Wᵀ + λWᵀ)``
and the rank-r optimum is ``Ŵ = V_r V_rᵀ βᵀ`` with ``V_r`` the top-r eigenvectors of ``βᵀ(G̃c + λI)β``
(Mukherjee & Zhu, "Reduced rank ridge regression", 2011); both factors are refitted, the rank (hence every
cost) stays. Without upstream error (``x̃ = x``) this is exactly the whitened low-rank candidate of
:mod:`ttgraph.decompose`. **d ≥ 2 (TT):** the cores stay, only the bias is refitted (the LS optimum
``b = W μ + b₀ − Ŵ μ̃``).

**Schedule.** A refit changes the inputs of every layer downstream, so the order matters. The default
(``schedule="levels"``) is Gauss–Seidel, exactly: layers are grouped by :func:`dependency_levels` (no layer of a
group feeds another of it) and the groups are refitted one after the other, each from one side-by-side pass in
which everything upstream is already compensated. Each pass runs only the part of both models the group needs:
from the values kept at the cut after the previous group (:mod:`ttgraph.frontier`), else from the inputs.
``schedule="blocks"`` instead refits ``stages`` consecutive chunks (``stages=1``: every layer at once, Jacobi) and
``sweeps`` repeats. Measured on the rapidocr detector at half the MACs (8–16 calibration images): levels
0.89 → 0.92 held-out IoU; Jacobi 0.45 after one sweep, 0.60 after two; 4 blocks 0.85 — a layer refitted to undo
upstream errors
over-corrects once the upstream layers are refitted too. ``dense=True`` also refits (full rank, ridge toward the
original weight) the kept-dense 1×1 convs downstream of a compressed one; it measured no better on the classifier
(0.9225 vs 0.9275 top-1 agreement at 0.3 of the params) nor on the text detector (held-out IoU 0.916 vs 0.919 at
half the MACs) and costs more passes, so it is off by default.

:func:`layer_errors` measures each layer's output in the compressed network against the original layer's output
in the original network: the report's per-layer held-out error before and after compensation. On calibration data
each refit pass gives its layers' error before and after their refit on the same inputs (upstream already
compensated), from the statistics the refit uses: measuring "before" in the uncompensated network instead took a
pass of both whole models of its own, a third of the compensation's time on the text detector. With the levels
schedule the "after" error on calibration data is exact (a layer's inputs do not change once it is refitted).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx

from ttgraph.calibration import expose_tensors
from ttgraph.decompose import Candidate, LayerCandidates, _sign_fix, flush_subnormals
from ttgraph.errors import TTGraphError
from ttgraph.frontier import FRONTIER_BYTES, CutPlan, NotATensor, Piece, plan_cuts, segment
from ttgraph.model_io import fed_initializers, input_defaults
from ttgraph.progress import progress_bar
from ttgraph.tt import tt_reconstruct
from ttgraph.verify import Feed, feed_count, session

__all__ = [
    "Compensation",
    "LayerFit",
    "PairStatistics",
    "compensate",
    "layer_errors",
    "pair_statistics",
    "refit",
    "side_by_side",
]

DEFAULT_DAMPING = 0.01


@dataclass
class PairStatistics:
    """Streaming statistics of the input rows of one 1×1 conv in two networks run on the same feeds:
    ``x̃`` (compressed network) and ``x`` (original). ``gram_c = Σ x̃x̃ᵀ``, ``cross = Σ x̃xᵀ``, ``gram = Σ xxᵀ``,
    ``sum_c = Σ x̃``, ``sum = Σ x``, ``rows``. Per-sample products run in float32 BLAS, sums in float64."""

    tensor: str
    stride: tuple[int, ...]
    gram_c: np.ndarray
    cross: np.ndarray
    gram: np.ndarray
    sum_c: np.ndarray
    sum: np.ndarray
    rows: int = 0

    @classmethod
    def empty(cls, tensor: str, stride: Sequence[int], cin: int) -> PairStatistics:
        z = np.zeros
        return cls(tensor, tuple(stride), z((cin, cin)), z((cin, cin)), z((cin, cin)), z(cin), z(cin))

    @property
    def cin(self) -> int:
        return int(self.gram.shape[0])

    def update(self, compressed: np.ndarray, original: np.ndarray) -> None:
        """Add one batch of the conv's input in both networks (``N × Cin × spatial…``), strided like the conv."""
        a, b = np.asarray(compressed), np.asarray(original)
        if a.shape != b.shape or a.ndim < 2 or a.shape[1] != self.cin:
            raise TTGraphError(
                self.tensor, f"expected two activations N×{self.cin}×… of one shape, got {a.shape} and {b.shape}"
            )
        if any(s != 1 for s in self.stride):
            index = (slice(None), slice(None), *(slice(None, None, s) for s in self.stride))
            a, b = a[index], b[index]
        # float32 products: refit says if they overflowed. Entered once per batch, not per sample: a signal
        # (a caller's timeout) landing while errstate is left can leave the changed state for the process
        with np.errstate(over="ignore", invalid="ignore"):
            for xa, xb in zip(a, b, strict=True):
                ta = np.ascontiguousarray(xa.reshape(self.cin, -1), dtype=np.float32)
                tb = np.ascontiguousarray(xb.reshape(self.cin, -1), dtype=np.float32)
                self.gram_c += ta @ ta.T
                self.cross += ta @ tb.T
                self.gram += tb @ tb.T
                self.sum_c += ta.sum(axis=1, dtype=np.float64)
                self.sum += tb.sum(axis=1, dtype=np.float64)
                self.rows += ta.shape[1]


def _prefix(model: onnx.ModelProto, tensors: Sequence[tuple[str, np.dtype]]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose only outputs are ``tensors`` (graph inputs excepted), with every node they do
    not depend on removed (onnxruntime runs the whole graph whatever is fetched), and the names to fetch."""
    from passes.gs_io import export_model, import_graph

    exposed, fetch = expose_tensors(model, tensors)
    graph = import_graph(exposed)
    named = graph.tensors()
    graph.outputs = [named[name] for name in fetch]
    graph.cleanup()
    out = export_model(graph, exposed)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    pruned.graph.CopyFrom(out.graph)
    return pruned, fetch


def _outputs(tensors: Sequence[tuple[str, np.dtype]], model: onnx.ModelProto):
    pruned, fetch = _prefix(model, tensors)
    return (session(pruned) if fetch else None), fetch


Values = dict[str, np.ndarray]
Builder = Callable[[Mapping[str, "LayerFit"]], onnx.ModelProto]
PartBuilder = Callable[[Mapping[str, "LayerFit"], onnx.ModelProto], onnx.ModelProto]


def _prefix_pairs(
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    tensors: Sequence[tuple[str, np.dtype]],
    feeds: Iterable[Feed],
) -> Iterator[tuple[Values, Values]]:
    """Per feed, ``tensors`` in the compressed and in the original model, each run from the graph inputs."""
    return ((got[0], ref) for _, got, ref in _prefix_runs(original, [compressed], tensors, feeds))


def _prefix_runs(
    original: onnx.ModelProto,
    compressed: Sequence[onnx.ModelProto],
    tensors: Sequence[tuple[str, np.dtype]],
    feeds: Iterable[Feed],
) -> Iterator[tuple[Feed, list[Values], Values]]:
    """Per feed: the feed, ``tensors`` in each compressed model and in the original, each run from the graph
    inputs (the original once per feed, however many models are compared with it)."""
    runs = [_outputs(tensors, model) for model in (*compressed, original)]
    defaults = input_defaults(original, [name for name, _ in tensors])
    for feed in feeds:
        given = {**defaults, **{name: feed[name] for name, _ in tensors if name in feed}}  # the graph inputs
        values = []
        for sess, fetch in runs:
            got = dict(zip(fetch, sess.run(fetch, dict(feed)), strict=True)) if sess else {}
            missing = [name for name, _ in tensors if name not in got and name not in given]
            if missing:  # a graph input neither fed nor given a default: check_feed lets none through
                raise TTGraphError("calibration", f"a feed has no value for the input(s) {', '.join(missing)}")
            values.append({name: got[name] if name in got else given[name] for name, _ in tensors})
        yield feed, values[:-1], values[-1]


def _pair_keys(convs: Sequence[Any]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per conv label, the (input tensor, stride) its statistics are kept under: convs reading one tensor with
    one stride share them."""
    return {conv.label: (conv.node.inputs[0].name, tuple(conv.strides)) for conv in convs}


def _empty_pairs(convs: Sequence[Any]) -> dict[tuple[str, tuple[int, ...]], PairStatistics]:
    cin = {_pair_keys([conv])[conv.label]: conv.cin for conv in convs}
    return {key: PairStatistics.empty(key[0], key[1], c) for key, c in cin.items()}


def _accumulate(convs: Sequence[Any], pairs: Iterable[tuple[Values, Values]], bar: Any) -> dict[str, PairStatistics]:
    """The :class:`PairStatistics` of every conv from per-sample (compressed, original) input values, by label."""
    shared = _empty_pairs(convs)
    for got_a, got_b in pairs:
        for (tensor, _), st in shared.items():
            st.update(got_a[tensor], got_b[tensor])
        if bar is not None:
            bar.update(1)
    return {label: shared[key] for label, key in _pair_keys(convs).items()}


def _tensors(convs: Sequence[Any]) -> list[tuple[str, np.dtype]]:
    return list(dict.fromkeys((c.node.inputs[0].name, np.dtype(c.weight_dtype)) for c in convs))


def pair_statistics(
    original: onnx.ModelProto,
    compressed: onnx.ModelProto,
    convs: Sequence[Any],
    feeds: Iterable[Feed],
    *,
    bar: Any = None,
) -> dict[str, PairStatistics]:
    """One pass of both models over ``feeds``: the :class:`PairStatistics` of every conv in ``convs``
    (PointwiseConvs of the original; the compressed model keeps their input tensor names), by label."""
    return _accumulate(convs, _prefix_pairs(original, compressed, _tensors(convs), feeds), bar)


def side_by_side(
    original: onnx.ModelProto,
    compressed: Sequence[onnx.ModelProto],
    convs: Sequence[Any],
    feeds: Iterable[Feed],
    each: Callable[[Feed, Values, list[Values]], None],
    *,
    also: Sequence[str] = (),
    bar: Any = None,
) -> list[dict[str, PairStatistics]]:
    """:func:`pair_statistics` of several compressed models in one pass over ``feeds``, the original run once per
    feed; ``each(feed, original, [compressed…])`` also gets every feed's values of the tensors ``also`` (the graph
    outputs, say: what the end-to-end fidelity is tallied from, without another run of the models)."""
    tensors = _tensors(convs)
    tensors += [(name, np.dtype(np.float32)) for name in also if name not in {t for t, _ in tensors}]
    shared = [_empty_pairs(convs) for _ in compressed]
    for feed, gots, ref in _prefix_runs(original, compressed, tensors, feeds):
        for stats, got in zip(shared, gots, strict=True):
            for (tensor, _), st in stats.items():
                st.update(got[tensor], ref[tensor])
        each(feed, ref, gots)
        if bar is not None:
            bar.update(1)
    keys = _pair_keys(convs)
    return [{label: stats[key] for label, key in keys.items()} for stats in shared]


class _Uncut(Exception):
    """The model cannot be run piecewise at this level's cut."""


def _constants(model: onnx.ModelProto, names: Sequence[str]) -> Values:
    """The values of those ``names`` that are initializers (a default input, or a conv reading a constant)."""
    wanted = set(names)
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name in wanted}


class _Levels:
    """The conv inputs of both models, level after level. Each level runs only the nodes between the frontier
    of the level before (kept per sample, :mod:`ttgraph.frontier`) and its own; while the frontiers of all samples
    would pass ``limit`` bytes (a high-resolution part of the network), a level runs both models from the feeds
    and keeps its cut if that fits; where the graph cannot be cut, every level runs from the feeds.
    ``build(fits)`` is the whole compressed model; ``build_part(fits, part)`` rewrites a piece of the original,
    so that a level's compressed piece costs what the piece does, not a rewrite of the whole model."""

    def __init__(
        self,
        original: onnx.ModelProto,
        plan: CutPlan | None,
        feeds: Iterable[Feed],
        limit: int,
        build: Builder,
        build_part: PartBuilder | None,
    ):
        self.original, self.plan, self.feeds, self.limit = original, plan, feeds, limit
        self.build, self.build_part = build, build_part
        self.kept: list[tuple[Values, Values]] | None = None
        self.from_cut = 0  # levels run from a kept cut
        self.cut_bytes = 0  # the largest cut kept

    def pairs(
        self, step: int, fits: Mapping[str, LayerFit], tensors: list[tuple[str, np.dtype]]
    ) -> Iterator[tuple[Values, Values]]:
        """Per sample, ``tensors`` (at least those of level ``step``) in the compressed model with ``fits`` and in
        the original."""
        if self.plan is None:
            return _prefix_pairs(self.original, self.build(fits), tensors, self.feeds)
        starts: Iterable[tuple[Values, Values]]
        if self.kept is None:  # the first level, or the last cut was too big to keep: from the inputs
            starts = (({n: np.asarray(v) for n, v in f.items()},) * 2 for f in self.feeds)  # type: ignore[misc]
        else:
            starts = self.kept
        cut, self.kept = self.kept is not None, None
        return self._from(starts, step, fits, tensors, cut)

    def _pieces(
        self, fits: Mapping[str, LayerFit], start: tuple[Values, Values], wanted: list[str]
    ) -> tuple[list[Piece], Values]:
        """The compressed and the original model's pieces from the tensors in ``start`` to ``wanted``, and the
        original piece's values on ``start`` (run to learn its output types). Raises :class:`_Uncut` where the cut
        does not hold: a tensor the rewrite renamed, or a value that is not a tensor (a sequence, an optional)
        crossing it."""
        given = {n: v.dtype for n, v in start[1].items()}
        try:
            part, fetch = segment(self.original, given, wanted)
            ref = Piece(part, fetch, "<original>")  # an untyped output onnxruntime cannot infer: a TTGraphError
            first = ref.run(start[1])
        except (KeyError, TTGraphError, NotATensor) as err:
            raise _Uncut from err
        if not fetch:
            return [ref, ref], first
        if self.build_part is None:
            try:
                compressed, _ = segment(self.build(fits), {n: v.dtype for n, v in start[0].items()}, wanted)
            except KeyError as err:
                raise _Uncut from err
        else:  # the rewrite needs the outputs' types: those the original piece computes
            typed, _ = segment(self.original, given, wanted, {name: first[name].dtype for name in fetch})
            compressed = self.build_part(fits, typed)
        return [Piece(compressed, fetch, "<compressed>"), ref], first

    def _from(
        self,
        starts: Iterable[tuple[Values, Values]],
        step: int,
        fits: Mapping[str, LayerFit],
        tensors: list[tuple[str, np.dtype]],
        cut: bool,
    ) -> Iterator[tuple[Values, Values]]:
        names = [name for name, _ in tensors]
        frontier = self.plan.frontiers[step]  # type: ignore[union-attr]
        wanted = list(dict.fromkeys([*names, *frontier]))
        constants = _constants(self.original, names)
        pieces: list[Piece] = []
        kept: list[tuple[Values, Values]] | None = []
        size = 0
        for start in starts:
            if not pieces:
                try:
                    pieces, first = self._pieces(fits, start, wanted)
                except _Uncut:  # this level runs from the graph inputs; the next tries its own cut
                    yield from _prefix_pairs(self.original, self.build(fits), tensors, self.feeds)
                    return
                got = [pieces[0].run(start[0]), first]  # the original's piece already ran on this sample
            else:
                got = [piece.run(given) for piece, given in zip(pieces, start, strict=True)]
            if kept is not None:
                entry = ({n: got[0][n] for n in frontier}, {n: got[1][n] for n in frontier})
                size += sum(a.nbytes for v in entry for a in v.values())
                if size <= self.limit:
                    kept.append(entry)
                else:  # too big to keep: the next level runs from the feeds
                    kept = None
            pair = tuple({n: v[n] if n in v else constants[n] for n in names} for v in got)
            yield pair  # type: ignore[misc]
        self.kept = kept
        self.from_cut += cut
        if kept is not None:
            self.cut_bytes = max(self.cut_bytes, size)


# ------------------------------------------------------------------------------------------------ the fits


@dataclass
class LayerFit:
    """A compensated layer: its float64 TT cores (same format as the candidate) and bias; for a layer kept
    dense, no cores but a refitted ``weight`` (its bias is None when the conv has none)."""

    label: str
    cores: list[np.ndarray]
    bias: np.ndarray | None
    weight: np.ndarray | None = None

    @property
    def approx(self) -> np.ndarray:
        return self.weight if self.weight is not None else tt_reconstruct(self.cores)


def _target(lc: LayerCandidates) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(lc.conv.weight, np.float64)
    b0 = np.zeros(w.shape[0]) if lc.conv.bias is None else np.asarray(lc.conv.bias, np.float64)
    return w, b0


def refit(
    lc: LayerCandidates, candidate: Candidate, st: PairStatistics, *, damping: float = DEFAULT_DAMPING
) -> LayerFit:
    """The compensated factors and bias of one layer from its :class:`PairStatistics` (module docstring)."""
    _check_finite(st, lc.label)
    w, b0 = _target(lc)
    n = max(st.rows, 1)
    mu_c, mu = st.sum_c / n, st.sum / n
    dtype = np.float32 if lc.conv.weight_dtype == np.float16 else lc.conv.weight_dtype
    if candidate.kind == "dense" or candidate.fmt is None:
        return _refit_dense(lc, st, w, b0, mu_c, mu, damping, dtype)
    if candidate.kind == "lowrank":
        r = candidate.fmt.ranks[1]
        gc = st.gram_c - n * np.outer(mu_c, mu_c)
        cc = st.cross - n * np.outer(mu_c, mu)
        gc = (gc + gc.T) / 2
        lam = damping * max(float(np.trace(gc)), 0.0) / max(st.cin, 1)
        if lam <= 0:
            lam = 1e-12
        h = gc + lam * np.eye(st.cin)
        rhs = cc @ w.T + lam * w.T  # Cin × Cout
        try:
            beta = np.linalg.solve(h, rhs)
        except np.linalg.LinAlgError:
            beta = np.linalg.lstsq(h, rhs, rcond=None)[0]
        fitted = beta.T @ h @ beta  # Cout × Cout: covariance of the (ridge-augmented) fitted outputs
        vals, vecs = np.linalg.eigh((fitted + fitted.T) / 2)
        basis = _sign_fix(vecs[:, np.argsort(vals)[::-1][:r]])  # Cout × r
        first = basis.T @ beta.T  # r × Cin
        cores = [first.T.reshape(1, 1, lc.conv.cin, r), basis.T.reshape(r, lc.conv.cout, 1, 1)]
    else:
        cores = [np.array(c, np.float64) for c in lc.cores(candidate)]
    cores = [flush_subnormals(c, dtype) for c in cores]
    approx = tt_reconstruct(cores)
    bias = w @ mu + b0 - approx @ mu_c
    return LayerFit(lc.label, cores, flush_subnormals(bias, dtype))


def _refit_dense(lc, st, w, b0, mu_c, mu, damping, dtype) -> LayerFit:
    """Full-rank ridge refit toward the original weight (bias too when the conv has one)."""
    n = max(st.rows, 1)
    free_bias = lc.conv.bias is not None
    gc = st.gram_c - n * np.outer(mu_c, mu_c) if free_bias else st.gram_c
    cc = st.cross - n * np.outer(mu_c, mu) if free_bias else st.cross
    gc = (gc + gc.T) / 2
    lam = max(damping * max(float(np.trace(gc)), 0.0) / max(st.cin, 1), 1e-12)
    h = gc + lam * np.eye(st.cin)
    try:
        beta = np.linalg.solve(h, cc @ w.T + lam * w.T)
    except np.linalg.LinAlgError:
        beta = np.linalg.lstsq(h, cc @ w.T + lam * w.T, rcond=None)[0]
    weight = flush_subnormals(beta.T, dtype)
    bias = flush_subnormals(w @ mu + b0 - weight @ mu_c, dtype) if free_bias else None
    return LayerFit(lc.label, [], bias, weight)


def _affected(model: onnx.ModelProto, convs: Sequence[Any], changed: set[str]) -> set[str]:
    """Labels of ``convs`` whose input depends on the output of a conv in ``changed`` (labels)."""
    tainted = {c.node.outputs[0].name for c in convs if c.label in changed}
    for node in model.graph.node:
        if any(name in tainted for name in node.input):
            tainted.update(node.output)
    return {c.label for c in convs if c.node.inputs[0].name in tainted}


def _augmented(st: PairStatistics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = float(st.rows)

    def block(g: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return np.block([[g, left[:, None]], [right[None, :], np.array([[n]])]])

    return block(st.gram_c, st.sum_c, st.sum_c), block(st.cross, st.sum_c, st.sum), block(st.gram, st.sum, st.sum)


def accumulated_error(
    st: PairStatistics, weight: np.ndarray, bias: np.ndarray, approx: np.ndarray, approx_bias: np.ndarray
) -> float:
    """``‖X̃Ŵᵀ + b̂ − (XWᵀ + b₀)‖_F / ‖XWᵀ‖_F`` over the rows of ``st`` (exact, from the statistics): the
    denominator without the bias, as the layer table's calibration error has it (:func:`ttgraph.calibration.
    output_error`), so a layer with nothing compressed before it reads the same in both tables."""
    gc, cross, g = _augmented(st)
    w = np.asarray(weight, np.float64)
    wa = np.hstack([w, np.asarray(bias, np.float64)[:, None]])
    wh = np.hstack([np.asarray(approx, np.float64), np.asarray(approx_bias, np.float64)[:, None]])
    ref_with_bias = float(np.sum((wa @ g) * wa))
    ref = float(np.sum((w @ st.gram) * w))
    num = float(np.sum((wh @ gc) * wh)) - 2 * float(np.sum((wh @ cross) * wa)) + ref_with_bias
    num = max(num, 0.0)
    return math.sqrt(num / ref) if ref > 0 else math.sqrt(num)


def _check_finite(st: PairStatistics, label: str) -> None:
    """Statistics of activations beyond float32's range (|x| ≳ 1e19) hold inf/NaN: say so, not a LinAlgError."""
    if not all(np.isfinite(m).all() for m in (st.gram_c, st.cross, st.gram)):
        raise TTGraphError(
            "calibration",
            "the activations overflow the compensation's float32 products: are the samples scaled as the "
            "model expects?",
            label,
        )


def _layer_error(lc: LayerCandidates, candidate: Candidate, fit: LayerFit | None, st: PairStatistics) -> float:
    _check_finite(st, lc.label)
    w, b0 = _target(lc)
    if fit is not None:
        return accumulated_error(st, w, b0, fit.approx, b0 * 0 if fit.bias is None else fit.bias)
    if candidate.kind == "dense":
        return accumulated_error(st, w, b0, w, b0)
    bias = lc.bias(candidate)
    return accumulated_error(st, w, b0, lc.approx(candidate), np.zeros_like(b0) if bias is None else bias)


def layer_errors(
    layers: Sequence[LayerCandidates],
    choices: Mapping[str, Candidate],
    fits: Mapping[str, LayerFit],
    stats: Mapping[str, PairStatistics],
) -> dict[str, float]:
    """Per layer: its output in the compressed network vs the original layer's output in the original network."""
    return {lc.label: _layer_error(lc, choices[lc.label], fits.get(lc.label), stats[lc.label]) for lc in layers}


# ------------------------------------------------------------------------------------------- the schedule


@dataclass
class Compensation:
    """What :func:`compensate` computed: per compressed layer its refitted factors, and the errors."""

    fits: dict[str, LayerFit]
    sweeps: int
    stages: int
    passes: int
    samples: int
    seconds: float
    damping: float
    # per layer, on the calibration inputs its (first) refit saw, upstream already compensated: the allocated
    # factors' error and the refitted ones' (on the inputs of the last refit pass). What compensation does to the
    # network as a whole is measured on held-out samples (the report's heldout_error_before/after)
    calibration_before: dict[str, float] = field(default_factory=dict)
    calibration_after: dict[str, float] = field(default_factory=dict)
    from_cut: int = 0  # passes run from the values kept at a cut (the others ran from the inputs)
    cut_bytes: int = 0  # the most those values held at once, all samples and both models


def _groups(labels: list[str], stages: int) -> list[list[str]]:
    stages = max(1, min(stages, len(labels)))
    size = math.ceil(len(labels) / stages) if labels else 1
    return [labels[i : i + size] for i in range(0, len(labels), size)]


def _topological(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes in an order where each comes after the producers of its inputs: the list order where that holds
    (networkx's lexicographical sort by list position), so a graph listed out of order (onnxruntime runs one) gets
    the same levels. A cycle (no valid graph has one) leaves the list order."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(graph.node)))
    deps.add_edges_from(
        (producer[name], i)
        for i, node in enumerate(graph.node)
        for name in node.input
        if name in producer and producer[name] != i
    )
    try:
        order = list(nx.lexicographical_topological_sort(deps))
    except nx.NetworkXUnfeasible:
        order = list(range(len(graph.node)))
    return [graph.node[i] for i in order]


def dependency_levels(model: onnx.ModelProto, convs: Sequence[Any]) -> dict[str, int]:
    """For each conv (label), how many of ``convs`` lie on the longest path from the graph inputs to its
    input. Convs of one level do not feed each other: one side-by-side pass compensates them all exactly as
    a layer-by-layer (Gauss–Seidel) pass would, once every lower level is compensated."""
    by_output = {c.node.outputs[0].name: c.label for c in convs}
    depth: dict[str, int] = {}
    level: dict[str, int] = {}
    for node in _topological(model.graph):
        d = max((depth.get(name, 0) for name in node.input if name), default=0)
        for out in node.output:
            if out in by_output:
                level[by_output[out]] = d
                depth[out] = d + 1
            else:
                depth[out] = d
    return {c.label: level.get(c.label, 0) for c in convs}


def compensate(
    original: onnx.ModelProto,
    layers: Sequence[LayerCandidates],
    choices: Mapping[str, Candidate],
    feeds: Any,
    *,
    build: Builder,
    build_part: PartBuilder | None = None,
    sweeps: int = 1,
    stages: int = 1,
    schedule: str = "levels",
    samples: int | None = None,
    damping: float = DEFAULT_DAMPING,
    dense: bool = False,
    progress: bool = False,
    frontier_bytes: int = FRONTIER_BYTES,
) -> Compensation:
    """Refit every compressed layer of ``choices`` (module docstring).

    ``feeds`` must be re-iterable (one pass per group); ``samples`` keeps that many (:class:`_Subset`). ``build(fits)``
    returns the compressed model with the given :class:`LayerFit` overrides (e.g.
    :func:`ttgraph.api.rewrite_allocation` with ``fits``); ``build_part(fits, part)`` the same for a piece of the
    original (``rewrite_allocation(part, ..., part=True)``), what a level runs when given. ``layers`` are in the
    model's topological order. Passes: ``sweeps`` × the number of groups (levels, or ``stages`` blocks). With the
    levels schedule and one sweep each pass after the first runs only the nodes between two levels, from the values
    kept at the cut between them (:class:`_Levels`, up to ``frontier_bytes`` for all samples and both models; 0:
    none, every level reruns both models from the inputs).
    """
    if sweeps < 1 or stages < 1:
        raise TTGraphError("compensate", f"sweeps and stages must be ≥ 1, got {sweeps} and {stages}")
    if getattr(feeds, "reiterable", True) is False:
        raise TTGraphError(
            "compensate",
            "compensation reads the calibration data several times: give a folder, "
            "a file or a list of feeds, not a one-pass iterable",
        )
    compressed = [lc for lc in layers if choices[lc.label].kind != "dense"]
    if dense and compressed:
        hit = _affected(original, [lc.conv for lc in layers], {lc.label for lc in compressed})
        compressed = [lc for lc in layers if choices[lc.label].kind != "dense" or lc.label in hit]
    by_label = {lc.label: lc for lc in compressed}
    if schedule == "levels":
        levels = dependency_levels(original, [lc.conv for lc in compressed])
        groups = [[lc.label for lc in compressed if levels[lc.label] == v] for v in sorted(set(levels.values()))]
    else:
        groups = _groups([lc.label for lc in compressed], stages)
    if samples is not None:
        feeds = _first(feeds, samples)
    total = feed_count(feeds)
    steps = sweeps * len(groups)
    bar = progress_bar(
        total=None if total is None else total * steps,
        desc="compensate",
        unit="img",
        show=progress,
        leave=False,
        dynamic_ncols=True,
    )
    start = time.perf_counter()
    fits: dict[str, LayerFit] = {}
    before: dict[str, float] = {}
    after: dict[str, float] = {}
    plan = None
    if frontier_bytes > 0 and schedule == "levels" and sweeps == 1 and not fed_initializers(original):
        plan = plan_cuts(original, [[by_label[label].conv.node.inputs[0].name for label in g] for g in groups])
    runner = _Levels(original, plan, feeds, frontier_bytes, build, build_part)
    try:
        for sweep in range(sweeps):
            for k, group in enumerate(groups):
                convs = [by_label[label].conv for label in group]
                if sweep == 0:
                    stats = _accumulate(convs, runner.pairs(k, fits, _tensors(convs)), bar)
                else:
                    stats = pair_statistics(original, build(fits), convs, feeds, bar=bar)
                new = {}
                for label in group:
                    lc = by_label[label]
                    if sweep == 0:  # the allocated factors on the very inputs the refit sees
                        before[label] = _layer_error(lc, choices[label], None, stats[label])
                    new[label] = refit(lc, choices[label], stats[label], damping=damping)
                    after[label] = _layer_error(lc, choices[label], new[label], stats[label])
                fits.update(new)
    finally:
        bar.close()
    return Compensation(
        fits,
        sweeps,
        len(groups),
        steps,
        int(total) if total is not None else 0,
        time.perf_counter() - start,
        damping,
        before,
        after,
        runner.from_cut,
        runner.cut_bytes,
    )


@dataclass
class _Subset:
    """``count`` feeds of a re-iterable source (re-iterable, known length): spread evenly over it where the source
    can fetch by index (a folder, a file, a list), else its first ones. Spread, because a folder sorted by name
    often groups one kind of image (``doc_…``, then ``photo_…``), and a fit to one kind generalizes badly to the
    others. The compensation reads them once per dependency level (18 passes on the detector): the first pass
    keeps them in memory, up to :data:`CACHE_BYTES`, so images are not decoded and resized again on every pass."""

    source: Any
    count: int
    reiterable: bool = True
    _cache: list | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        known = feed_count(self.source)
        return self.count if known is None else min(self.count, known)

    def _feeds(self) -> Iterator[Feed]:
        known, fetch = feed_count(self.source), getattr(self.source, "fetch", None)
        if fetch is not None and known is not None and known > self.count:
            yield from (fetch(i) for i in spread(known, self.count))
        else:
            yield from itertools.islice(self.source, self.count)  # no read past the last one kept

    def __iter__(self):
        if self._cache is not None:
            yield from self._cache
            return
        kept: list | None = []
        size = 0
        for feed in self._feeds():
            if kept is not None:
                size += sum(np.asarray(v).nbytes for v in feed.values())
                if size <= CACHE_BYTES:
                    kept.append(feed)
                else:  # over the cap: stream on every pass
                    kept = None
            yield feed
        self._cache = kept


def spread(n: int, count: int) -> list[int]:
    """``count`` of the indices ``0 … n−1``, spread evenly from the first to the last (all of them if
    ``count ≥ n``).

    >>> spread(24, 4), spread(3, 8)
    ([0, 8, 15, 23], [0, 1, 2])
    """
    if count >= n:
        return list(range(n))
    if count == 1:
        return [0]
    return [round(k * (n - 1) / (count - 1)) for k in range(count)]


CACHE_BYTES = 512 << 20  # compensation samples kept decoded between passes (the default 2^25 values: 128 MiB)


def _first(feeds: Any, count: int) -> _Subset:
    if count < 1:
        raise TTGraphError("compensate", f"compensation needs at least one sample, got {count}")
    return _Subset(feeds, count)
