"""Contraction planner: the cheapest order in which to contract a TT layer's input with its cores.

A TT layer replaces a 1x1 conv ``Y = W X``. ``X`` is ``N x Cin x H x W`` (NCHW) with channel index
``j = (j_1..j_d)`` row-major, ``Cin = n_1 * ... * n_d``; the cores ``G_k`` have shape
``(r_{k-1}, m_k, n_k, r_k)`` with ``r_0 = r_d = 1`` and

    W[(i_1..i_d), (j_1..j_d)] = G_1[:, i_1, j_1, :] @ ... @ G_d[:, i_d, j_d, :]

(Oseledets, "Tensor-Train decomposition", SIAM J. Sci. Comput. 2011; the matrix/"TT-layer" form of
Novikov et al., "Tensorizing neural networks", NeurIPS 2015). The network ``{X, G_1..G_d}`` can be
contracted pairwise in many orders whose costs differ by orders of magnitude; this module finds the
cheapest one. ``P = N * H * W`` ("pixels") is one factor of every runtime cost. Cores are numbered
``0..d-1`` in code (``G0`` is the math's ``G_1``), matching the emitter's ``groups``/``order``.

**The search** (one place: :func:`_search`) is a shortest path over a ``networkx.DiGraph`` of
contraction states. A general state is a partition of ``{X, G0..G(d-1)}`` into merged tensors.
Every pairwise contraction tree has a *spine*: the path from the leaf ``X`` to the root. Each spine
node contracts the activation with a tensor built from cores only (an *offline* block, computable
before run time). The cost of a tree is the sum of its contraction costs, and each contraction's cost
depends only on the two sets of original tensors it joins, so a tree's cost is

    sum over spine steps (runtime cost of X(S) * block(B))  +  sum over blocks (offline cost of B)

where ``S`` is the set of cores already in the activation. So the canonical state is ``S`` (the
cores still outside are pending; how and when they are merged among themselves does not change the
runtime cost), and an edge ``S -> S | B`` is "merge the cores of ``B`` offline (nothing if ``|B| = 1``),
then contract them into the activation" — one runtime pairwise contraction. Edges range over *every*
non-empty ``B`` among the remaining cores, including non-adjacent cores (outer products) and orders
whose contracted set is not an interval (they leave outer bond indices on the activation), so the
search covers the full space of pairwise contraction sequences: ``2**d`` states, at most
``3**d - 2**d`` edges. The graph is a DAG (edges only add cores) with non-negative weights; the search
is Dijkstra over it, building nodes and edges only as they are reached and dropping edges whose path
cost exceeds the best complete path known (at first the left-to-right order), so d = 8 plans in
milliseconds. ``tests/test_planner.py`` checks the result against a brute force over all partitions
and against ``opt_einsum``'s ``optimal`` path.

Core-core merges are free at run time (``offline_merge_cost="free"``, default) but change the
parameter count: the plan reports ``runtime_params`` (the parameters of the cores the runtime
actually holds) so an allocator can trade them, and ``max_block_params`` caps a merged block.
With ``offline_merge_cost="charged"`` the offline merges are priced by the same cost model (the
sub-DP over core subsets picks their cheapest tree); that is the whole-network cost that other
einsum planners minimize.

**Cost models** (a small registry of functions ``Op -> float``, :data:`COST_MODELS`): ``"flops"``
(MACs), ``"roofline"`` (MACs + weight * float32 bytes moved) and ``"measured"`` (seconds of each
MatMul/Transpose shape, timed once in onnxruntime and cached on disk). New models are one function
passed to :func:`register_cost_model` or directly as ``cost=``.

**Layout.** The NCHW emitter contracts, transpose-free, any order whose contracted set of cores is
always a contiguous interval grown one consecutive run (a ``group`` merged offline) at a time; each
step is ``Reshape -> [N, left, contracted, right]`` then ``MatMul([out, contracted], data)``. A
step outside that form forces a Transpose of the activation: it is charged the cost model's price
of moving that activation (0 MACs under ``"flops"``), and among plans of equal cost the one moving
fewer elements wins, so a transpose-free order of equal FLOPs is preferred. Transpose-free plans
expose ``groups`` and ``order`` in the emitter's format.
"""

from __future__ import annotations

import heapq
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import networkx as nx

from ttgraph.errors import TTGraphError
from ttgraph.files import default_cache_dir, is_seconds, write_cache

__all__ = [
    "COST_MODELS",
    "ContractionPlan",
    "CostModel",
    "MeasuredCost",
    "Op",
    "PlanStep",
    "RooflineCost",
    "default_cache_dir",
    "expand_ranks",
    "flops_cost",
    "format_cost",
    "format_plan",
    "get_cost_model",
    "left_to_right_plan",
    "plan_from_blocks",
    "plan_layer",
    "plan_to_dict",
    "register_cost_model",
    "time_op_onnxruntime",
]

OfflineMergeCost = Literal["free", "charged"]

# --------------------------------------------------------------------------------------------------
# Operations and cost models
# --------------------------------------------------------------------------------------------------


class Op(NamedTuple):
    """One operation a cost model prices.

    ``kind="matmul"``: ``MatMul(const[out, contracted], data[left, contracted, right])`` giving
    ``[left, out, right]`` (the emitter's step, with ``N`` folded into ``right`` via ``pixels``);
    ``summed_indices`` is how many tensor indices the contraction sums over (0 = outer product).
    ``kind="transpose"``: permute a ``[left, right]`` activation to ``[right, left]``.

    >>> Op("matmul", left=2, out=3, contracted=4, right=5).macs
    120
    """

    kind: Literal["matmul", "transpose"]
    left: int = 1
    out: int = 1
    contracted: int = 1
    right: int = 1
    summed_indices: int = 1

    @property
    def macs(self) -> int:
        """Multiply-accumulates (0 for a transpose)."""
        if self.kind == "transpose":
            return 0
        return self.left * self.out * self.contracted * self.right

    @property
    def elements_read(self) -> int:
        """Elements of every operand read once (data, plus the constant matrix of a matmul)."""
        if self.kind == "transpose":
            return self.left * self.right
        return self.left * self.contracted * self.right + self.out * self.contracted

    @property
    def elements_written(self) -> int:
        """Elements of the result."""
        if self.kind == "transpose":
            return self.left * self.right
        return self.left * self.out * self.right

    def key(self) -> str:
        """A stable string naming the shape (the measured table's key)."""
        if self.kind == "transpose":
            return f"transpose:{self.left}x{self.right}"
        return f"matmul:{self.left}x{self.out}x{self.contracted}x{self.right}"


CostModel = Callable[[Op], float]
"""A cost model prices one :class:`Op`; the plan's cost is the sum over its operations."""


def flops_cost(op: Op) -> int:
    """MACs of the operation; a transpose costs 0 (ties between plans are then broken by layout).

    >>> flops_cost(Op("matmul", left=1, out=8, contracted=16, right=100))
    12800
    """
    return op.macs


class RooflineCost:
    """MACs plus ``bytes_weight`` MAC-equivalents per byte moved (float32 operands read, result written).

    A roofline-style proxy for memory-bound steps: a CPU doing ~10 MACs per byte of DRAM bandwidth
    spends as long on a byte as on ~10 MACs. The default weight 8 is that order of magnitude.

    >>> RooflineCost(bytes_weight=1.0)(Op("transpose", left=10, right=10))
    800.0
    """

    name = "roofline"

    def __init__(self, bytes_weight: float = 8.0, dtype_bytes: int = 4) -> None:
        if bytes_weight < 0 or dtype_bytes <= 0:
            raise TTGraphError(
                "cost",
                f"roofline needs bytes_weight >= 0 and dtype_bytes > 0, found {bytes_weight} and {dtype_bytes}",
            )
        self.bytes_weight = float(bytes_weight)
        self.dtype_bytes = dtype_bytes

    def __call__(self, op: Op) -> float:
        moved = (op.elements_read + op.elements_written) * self.dtype_bytes
        return op.macs + self.bytes_weight * moved

    def __repr__(self) -> str:
        return f"RooflineCost(bytes_weight={self.bytes_weight}, dtype_bytes={self.dtype_bytes})"


def time_op_onnxruntime(op: Op, repeats: int = 10, budget_s: float = 0.5) -> float:
    """Median seconds of one run of ``op`` as a one-node ONNX model (MatMul with a constant left
    operand, or Transpose) in onnxruntime on the CPU: one warm-up, then ``repeats`` runs, or at least
    3 once ``budget_s`` is spent. Imports onnx/onnxruntime only when called."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if op.kind == "matmul":
        x_shape = [op.left, op.contracted, op.right]
        y_shape = [op.left, op.out, op.right]
        weight = numpy_helper.from_array(rng.standard_normal((op.out, op.contracted), dtype=np.float32), "w")
        node = helper.make_node("MatMul", ["w", "x"], ["y"])
        inits = [weight]
    else:
        x_shape = [op.left, op.right]
        y_shape = [op.right, op.left]
        node = helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])
        inits = []
    graph = helper.make_graph(
        [node],
        "op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": rng.standard_normal(x_shape, dtype=np.float32)}
    session.run(None, feed)  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeats and (len(times) < 3 or time.perf_counter() < deadline):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


class MeasuredCost:
    """Seconds per operation shape, measured once per ``target`` and cached in a JSON file.

    The table lives at ``cache_dir / f"measured-{target}.json"`` as
    ``{"target": ..., "entries": {op.key(): seconds}}``; an unknown shape is timed with ``timer``
    (default :func:`time_op_onnxruntime`) and the file is rewritten atomically. Inject ``timer`` to
    plan without timing (tests) or to time on another runtime.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> cost = MeasuredCost(cache_dir=tmp.name, timer=lambda op: op.macs / 1000)
    >>> cost(Op("matmul", left=1, out=10, contracted=10, right=10))
    1.0
    >>> tmp.cleanup()
    """

    name = "measured"

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        target: str = "onnxruntime-cpu",
        timer: Callable[[Op], float] | None = None,
    ) -> None:
        if not target or any(c in target for c in "/\\"):
            raise TTGraphError("cost", f"measured cost target must be a plain name, found {target!r}")
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.target = target
        self.timer = timer if timer is not None else time_op_onnxruntime
        self._table: dict[str, float] | None = None
        self._table_path: Path | None = None  # the file the table was read from
        self.measured = 0  # how many shapes this instance timed (not read from the cache)

    @property
    def cache_path(self) -> Path:
        """The JSON file holding this target's table."""
        return (self._cache_dir or default_cache_dir()) / f"measured-{self.target}.json"

    def _load(self) -> dict[str, float]:
        if self._table is not None and self._table_path != self.cache_path:  # $TTGRAPH_CACHE_DIR moved
            self._table = None
        if self._table is None:
            path = self._table_path = self.cache_path
            self._table = {}
            if path.exists():
                try:
                    data = json.loads(path.read_text())
                    entries = data["entries"]
                    bad = next((k for k, v in entries.items() if not is_seconds(v)), None)
                    if bad is not None:  # a negative time would be the cheapest order there is
                        raise ValueError(f"entry {bad!r} is {entries[bad]!r}, not a time ≥ 0 in seconds")
                    self._table = {str(k): float(v) for k, v in entries.items()}
                except (ValueError, KeyError, TypeError, AttributeError) as err:
                    raise TTGraphError(
                        path,
                        f"expected a measured cost table "
                        f'{{"target": ..., "entries": {{shape: seconds}}}}, '
                        f"could not read it: {err}",
                    ) from err
        return self._table

    def _save(self) -> None:
        text = json.dumps({"target": self.target, "entries": self._table}, indent=0, sort_keys=True)
        write_cache(self.cache_path, text.encode())

    def __call__(self, op: Op) -> float:
        table = self._load()
        key = op.key()
        if key not in table:
            seconds = self.timer(op)
            if not is_seconds(seconds):  # stored, it would make the table unreadable for every later plan
                raise TTGraphError("timer", f"timed {key} as {seconds!r}, not a time ≥ 0 in seconds")
            table[key] = float(seconds)
            self.measured += 1
            self._save()
        return table[key]

    def __repr__(self) -> str:
        return f"MeasuredCost(target={self.target!r}, cache_path={str(self.cache_path)!r})"


COST_MODELS: dict[str, CostModel] = {
    "flops": flops_cost,
    "roofline": RooflineCost(),
    "measured": MeasuredCost(),
}
"""The named cost models; ``plan_layer(..., cost=name)`` looks the name up here."""


def register_cost_model(name: str, model: CostModel) -> None:
    """Add (or replace) a named cost model usable as ``plan_layer(..., cost=name)``.

    >>> register_cost_model("macs_x2", lambda op: 2 * op.macs)
    >>> get_cost_model("macs_x2")[0]
    'macs_x2'
    >>> del COST_MODELS["macs_x2"]
    """
    if not name or not callable(model):
        raise TTGraphError("cost", f"a cost model needs a name and a callable Op -> float, found {name!r} -> {model!r}")
    COST_MODELS[name] = model


def get_cost_model(cost: str | CostModel) -> tuple[str, CostModel]:
    """Resolve ``cost`` (a registered name or a callable) to ``(name, model)``.

    >>> get_cost_model("flops")[0]
    'flops'
    """
    if isinstance(cost, str):
        if cost not in COST_MODELS:
            raise TTGraphError("cost", f"expected one of {', '.join(sorted(COST_MODELS))}, found {cost!r}")
        return cost, COST_MODELS[cost]
    if not callable(cost):
        raise TTGraphError("cost", f"expected a cost model name or a callable Op -> float, found {cost!r}")
    name = getattr(cost, "name", None) or getattr(cost, "__name__", None) or type(cost).__name__
    return str(name), cost


# --------------------------------------------------------------------------------------------------
# The layer: per-subset sizes as bitmask tables
# --------------------------------------------------------------------------------------------------


def expand_ranks(ranks: int | Sequence[int], d: int) -> tuple[int, ...]:
    """The full TT rank tuple ``(r_0, ..., r_d)`` from one inner rank, the ``d - 1`` inner ranks,
    or all ``d + 1`` ranks (``--ranks 8`` means every inner rank is 8).

    >>> expand_ranks(8, 3)
    (1, 8, 8, 1)
    >>> expand_ranks([4, 6], 3)
    (1, 4, 6, 1)
    """
    if d < 1:
        raise TTGraphError("ranks", f"expected at least one core, found d={d}")
    if isinstance(ranks, int):
        full = (1, *([ranks] * (d - 1)), 1)
    else:
        values = tuple(int(r) for r in ranks)
        if len(values) == d - 1:
            full = (1, *values, 1)
        elif len(values) == d + 1:
            full = values
        else:
            raise TTGraphError(
                "ranks",
                f"expected one rank for all bonds, {d - 1} inner rank{'s' * (d > 2)} or all {d + 1} (the end 1s "
                f"included) for {d} cores, found {len(values)}: {list(values)}",
            )
    if full[0] != 1 or full[-1] != 1:
        raise TTGraphError("ranks", f"expected r_0 = r_d = 1, found {list(full)}")
    if any(r < 1 for r in full):
        raise TTGraphError("ranks", f"expected ranks >= 1, found {list(full)}")
    return full


class _Layer:
    """A TT layer and per-subset size tables (subsets of cores as bitmasks, bit k = core k).

    Index sizes: ``P`` on X and Y; ``n_k`` (j_k) between X and core k; ``m_k`` (i_k) on core k and
    Y; inner bond ``t = 1..d-1`` (size ``r_t``, bit ``t-1`` of a bond mask) between cores t-1, t.
    """

    def __init__(
        self, modes_in: Sequence[int], modes_out: Sequence[int], ranks: int | Sequence[int], pixels: int
    ) -> None:
        n = tuple(int(v) for v in modes_in)
        m = tuple(int(v) for v in modes_out)
        if not n or len(n) != len(m):
            raise TTGraphError(
                "modes",
                f"expected modes_in and modes_out of the same length >= 1, found {list(n)} and {list(m)}",
            )
        if any(v < 1 for v in n + m):
            raise TTGraphError("modes", f"expected modes >= 1, found modes_in {list(n)}, modes_out {list(m)}")
        if int(pixels) < 1:
            raise TTGraphError("pixels", f"expected pixels = N*H*W >= 1, found {pixels}")
        d = len(n)
        self.d, self.n, self.m, self.pixels = d, n, m, int(pixels)
        self.r = expand_ranks(ranks, d)
        self.full = (1 << d) - 1
        self.inner = (1 << (d - 1)) - 1
        size = 1 << d
        nprod, mprod = [1] * size, [1] * size
        for mask in range(1, size):
            low = (mask & -mask).bit_length() - 1
            nprod[mask] = nprod[mask & (mask - 1)] * n[low]
            mprod[mask] = mprod[mask & (mask - 1)] * m[low]
        bond = [1] * (1 << (d - 1))
        for mask in range(1, len(bond)):
            low = (mask & -mask).bit_length() - 1
            bond[mask] = bond[mask & (mask - 1)] * self.r[low + 1]
        self.nprod, self.mprod, self.bond = nprod, mprod, bond
        # Bonds with exactly one end in the set: bit t-1 of (mask ^ mask >> 1) is bit(t-1) xor bit(t).
        self.bmask = [(mask ^ (mask >> 1)) & self.inner for mask in range(size)]
        self.block_size = [mprod[s] * nprod[s] * bond[self.bmask[s]] for s in range(size)]
        self.act_size = [self.pixels * mprod[s] * nprod[self.full ^ s] * bond[self.bmask[s]] for s in range(size)]
        self.is_run = [False] + [_is_run(s) for s in range(1, size)]
        self.cin, self.cout = nprod[self.full], mprod[self.full]

    def below(self, k: int) -> int:
        """Mask of cores < k."""
        return (1 << k) - 1

    def above(self, k: int) -> int:
        """Mask of cores > k."""
        return self.full ^ ((1 << (k + 1)) - 1)

    def cores(self, mask: int) -> tuple[int, ...]:
        return _bits(mask)


def _is_run(mask: int) -> bool:
    x = mask // (mask & -mask)
    return x & (x + 1) == 0


def _bits(mask: int) -> tuple[int, ...]:
    out, k = [], 0
    while mask:
        if mask & 1:
            out.append(k)
        mask >>= 1
        k += 1
    return tuple(out)


def _name_cores(cores: Sequence[int]) -> str:
    if len(cores) == 1:
        return f"G{cores[0]}"
    if cores == tuple(range(cores[0], cores[-1] + 1)):
        return f"G[{cores[0]}-{cores[-1]}]"
    return "G[" + ",".join(str(k) for k in cores) + "]"


def _name_act(cores: Sequence[int]) -> str:
    return "X" if not cores else "X+" + _name_cores(tuple(cores))


class _Edge(NamedTuple):
    """One runtime step ``X(S) * block(B)`` priced by a cost model."""

    matmul: Op
    free: bool  # the NCHW emitter does it transpose-free
    moved: int  # activation elements a forced transpose moves (0 if free)
    step_cost: float  # cost model: matmul + forced transpose
    offline_cost: float  # cost of building block B offline when charged, else 0
    cost: float  # step_cost + offline_cost: the edge weight the search minimizes


def _runtime_op(layer: _Layer, s: int, b: int, free: bool) -> Op:
    """The MatMul of step ``X(S) * block(B)`` in the emitter's ``[left, contracted, right]`` view."""
    shared = layer.bmask[s] & layer.bmask[b]
    contracted = layer.nprod[b] * layer.bond[shared]
    out = layer.block_size[b] // contracted
    summed = b.bit_count() + shared.bit_count()
    r, nprod, mprod, pix = layer.r, layer.nprod, layer.mprod, layer.pixels
    if not free:  # after a transpose bringing the contracted indices together: one big matrix product
        return Op("matmul", 1, out, contracted, layer.act_size[s] // contracted, summed)
    blo = (b & -b).bit_length() - 1
    bhi = b.bit_length() - 1
    if s == 0:  # first step: left = n_<lo, right = n_>hi * P
        left, right = nprod[layer.below(blo)], nprod[layer.above(bhi)] * pix
    else:
        lo = (s & -s).bit_length() - 1
        hi = s.bit_length() - 1
        if blo == hi + 1:  # extend right
            left = nprod[layer.below(lo)] * r[lo] * mprod[s]
            right = nprod[layer.above(bhi)] * pix
        else:  # extend left (bhi == lo - 1)
            left = nprod[layer.below(blo)]
            right = mprod[s] * r[hi + 1] * nprod[layer.above(hi)] * pix
    return Op("matmul", left, out, contracted, right, summed)


def _is_free(layer: _Layer, s: int, b: int) -> bool:
    return layer.is_run[b] and (s == 0 or (layer.is_run[s] and layer.is_run[s | b]))


def _offline_op(layer: _Layer, b1: int, b2: int) -> Op:
    """The offline merge ``block(B1) * block(B2)`` as a MatMul over their shared bonds."""
    shared = layer.bmask[b1] & layer.bmask[b2]
    c = layer.bond[shared]
    return Op("matmul", 1, layer.block_size[b1] // c, c, layer.block_size[b2] // c, shared.bit_count())


class _OfflineTrees:
    """Cheapest tree of offline merges building each core block, memoized (DP over subsets)."""

    def __init__(self, layer: _Layer, model: CostModel) -> None:
        self.layer, self.model = layer, model
        self.best: dict[int, tuple[float, int]] = {}  # block -> (cost, first half of its last merge)

    def cost(self, b: int) -> float:
        if b & (b - 1) == 0:
            return 0
        hit = self.best.get(b)
        if hit is not None:
            return hit[0]
        low = b & -b
        rest = b ^ low
        best: tuple[float, int] | None = None
        sub = rest
        while True:  # b1 = low | sub ranges over the proper subsets of b containing its lowest core
            b1 = low | sub
            if b1 != b:
                b2 = b ^ b1
                c = self.cost(b1) + self.cost(b2) + self.model(_offline_op(self.layer, b1, b2))
                if best is None or c < best[0]:
                    best = (c, b1)
            if sub == 0:
                break
            sub = (sub - 1) & rest
        assert best is not None
        self.best[b] = best
        return best[0]

    def merges(self, b: int) -> list[tuple[int, int]]:
        """The merges building block ``b``, children first."""
        if b & (b - 1) == 0:
            return []
        self.cost(b)
        b1 = self.best[b][1]
        return self.merges(b1) + self.merges(b ^ b1) + [(b1, b ^ b1)]


class _Pricer:
    """Prices edges of one layer under one cost model and options."""

    def __init__(self, layer: _Layer, model: CostModel, offline_merge_cost: OfflineMergeCost) -> None:
        if offline_merge_cost not in ("free", "charged"):
            raise TTGraphError("offline_merge_cost", f"expected 'free' or 'charged', found {offline_merge_cost!r}")
        self.layer, self.model = layer, model
        self.charged = offline_merge_cost == "charged"
        self.trees = _OfflineTrees(layer, model)

    def edge(self, s: int, b: int, free: bool | None = None) -> _Edge:
        layer = self.layer
        if free is None:
            free = _is_free(layer, s, b)
        op = _runtime_op(layer, s, b, free)
        step_cost = self.model(op)
        moved = 0
        if not free:
            moved = layer.act_size[s]
            step_cost = step_cost + self.model(Op("transpose", left=op.right, right=op.contracted, summed_indices=0))
        offline = self.trees.cost(b) if self.charged else 0
        return _Edge(op, free, moved, step_cost, offline, step_cost + offline)


# --------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanStep:
    """One pairwise contraction of a plan.

    ``runtime`` steps contract the activation with a (possibly merged) core block; offline steps
    merge two core blocks ahead of time. ``shape = (left, out, contracted, right)`` is the MatMul
    ``[out, contracted] x [left, contracted, right]`` (for transpose-free runtime steps exactly the
    emitter's Reshape/MatMul, with ``N*H*W`` inside ``right``). ``cost`` is in the plan's cost model
    and includes the forced transpose (``layout_cost``) of a step that is not ``transpose_free``;
    ``moved_elements`` is the size of the activation that transpose moves.
    """

    index: int
    operands: tuple[str, str]
    result: str
    runtime: bool
    cores: tuple[int, ...]
    shape: tuple[int, int, int, int]
    macs: int
    cost: float
    layout_cost: float
    transpose_free: bool
    moved_elements: int
    out_size: int


@dataclass(frozen=True)
class ContractionPlan:
    """The contraction order of one TT layer and what it costs.

    ``blocks`` are the core blocks in the order they enter the activation (each merged offline when
    longer than one core). ``total_cost`` is the minimized objective in ``cost_model`` units: the
    runtime steps, plus the offline merges when ``offline_merge_cost == "charged"``; under
    ``"flops"`` with free merges it is the runtime MACs. ``dense_cost`` is the MACs of the dense
    1x1 conv (``P*Cin*Cout``). ``runtime_params`` counts the parameters of the cores the runtime
    holds (the blocks); ``tt_params`` those of the unmerged cores. When ``transpose_free``,
    ``groups`` (consecutive runs, by position) and ``order`` (indices into ``groups``) are the NCHW
    emitter's input; otherwise both are ``None``. ``graph`` is the explored cost graph (nodes =
    tuples of cores contracted into the activation, edge attribute ``cost``).
    """

    modes_in: tuple[int, ...]
    modes_out: tuple[int, ...]
    ranks: tuple[int, ...]
    pixels: int
    cost_model: str
    offline_merge_cost: str
    steps: tuple[PlanStep, ...]
    blocks: tuple[tuple[int, ...], ...]
    total_cost: float
    runtime_cost: float
    runtime_macs: int
    offline_macs: int
    moved_elements: int
    dense_cost: int
    runtime_params: int
    tt_params: int
    transpose_free: bool
    groups: tuple[tuple[int, ...], ...] | None
    order: tuple[int, ...] | None
    graph_nodes: int
    graph_edges: int
    graph: nx.DiGraph | None = field(default=None, repr=False, compare=False)

    @property
    def runtime_steps(self) -> tuple[PlanStep, ...]:
        """The steps executed at run time, in order."""
        return tuple(s for s in self.steps if s.runtime)


def _assemble(
    layer: _Layer,
    pricer: _Pricer,
    cost_name: str,
    offline_merge_cost: str,
    sequence: Sequence[int],
    graph: nx.DiGraph | None,
) -> ContractionPlan:
    """Build the plan contracting blocks (bitmasks) into the activation in ``sequence`` order."""
    covered = 0
    for b in sequence:
        if b == 0 or b & covered or b & ~layer.full:
            raise TTGraphError(
                "blocks",
                f"expected disjoint non-empty blocks of cores 0..{layer.d - 1}, "
                f"found {[layer.cores(x) for x in sequence]}",
            )
        covered |= b
    if covered != layer.full:
        raise TTGraphError(
            "blocks",
            f"expected the blocks to cover cores 0..{layer.d - 1}, found {[layer.cores(x) for x in sequence]}",
        )
    steps: list[PlanStep] = []
    offline_macs = 0
    for b in sequence:  # offline merges first: they happen before run time
        for b1, b2 in pricer.trees.merges(b):
            op = _offline_op(layer, b1, b2)
            offline_macs += op.macs
            c1, c2 = layer.cores(b1), layer.cores(b2)
            steps.append(
                PlanStep(
                    index=len(steps) + 1,
                    operands=(_name_cores(c1), _name_cores(c2)),
                    result=_name_cores(layer.cores(b1 | b2)),
                    runtime=False,
                    cores=layer.cores(b1 | b2),
                    shape=(op.left, op.out, op.contracted, op.right),
                    macs=op.macs,
                    cost=pricer.model(op) if pricer.charged else 0,
                    layout_cost=0,
                    transpose_free=True,
                    moved_elements=0,
                    out_size=layer.block_size[b1 | b2],
                )
            )
    total: float = 0
    runtime_cost: float = 0
    runtime_macs = 0
    moved = 0
    s = 0
    for b in sequence:
        e = pricer.edge(s, b)
        total = total + e.cost  # the same sums, in the same order, as the search
        runtime_cost = runtime_cost + e.step_cost
        runtime_macs += e.matmul.macs
        moved += e.moved
        op = e.matmul
        steps.append(
            PlanStep(
                index=len(steps) + 1,
                operands=(_name_act(layer.cores(s)), _name_cores(layer.cores(b))),
                result=_name_act(layer.cores(s | b)),
                runtime=True,
                cores=layer.cores(b),
                shape=(op.left, op.out, op.contracted, op.right),
                macs=op.macs,
                cost=e.step_cost,
                layout_cost=e.step_cost - pricer.model(op),
                transpose_free=e.free,
                moved_elements=e.moved,
                out_size=layer.act_size[s | b],
            )
        )
        s |= b
    blocks = tuple(layer.cores(b) for b in sequence)
    transpose_free = all(st.transpose_free for st in steps if st.runtime)
    groups = order = None
    if transpose_free:
        groups = tuple(sorted(blocks))
        order = tuple(groups.index(b) for b in blocks)
    return ContractionPlan(
        modes_in=layer.n,
        modes_out=layer.m,
        ranks=layer.r,
        pixels=layer.pixels,
        cost_model=cost_name,
        offline_merge_cost=offline_merge_cost,
        steps=tuple(steps),
        blocks=blocks,
        total_cost=total,
        runtime_cost=runtime_cost,
        runtime_macs=runtime_macs,
        offline_macs=offline_macs,
        moved_elements=moved,
        dense_cost=layer.pixels * layer.cin * layer.cout,
        runtime_params=sum(layer.block_size[b] for b in sequence),
        tt_params=sum(layer.block_size[1 << k] for k in range(layer.d)),
        transpose_free=transpose_free,
        groups=groups,
        order=order,
        graph_nodes=graph.number_of_nodes() if graph is not None else 0,
        graph_edges=graph.number_of_edges() if graph is not None else 0,
        graph=graph,
    )


def _search(
    layer: _Layer,
    pricer: _Pricer,
    allow_offline_merges: bool,
    transpose_free_only: bool,
    max_block_params: int | None,
) -> tuple[list[int], nx.DiGraph]:
    """Cheapest path from ``()`` (nothing contracted) to all cores contracted, over the cost graph.

    Dijkstra over the state DAG, building nodes and edges as they are reached. Path keys are
    ``(cost, moved elements, runtime params)`` compared lexicographically (each part is additive and
    non-negative, so Dijkstra stays exact): equal cost prefers fewer transposed elements, then fewer
    parameters. Edges whose path cost exceeds the best complete path known so far (at first the
    left-to-right order, always legal) are not added: they cannot be on an optimal path.
    """
    full = layer.full
    names = [_bits(mask) for mask in range(full + 1)]
    bound: float = 0
    for k in range(layer.d):
        bound = bound + pricer.edge((1 << k) - 1, 1 << k).cost
    slack = 1 + 1e-9  # float sums in another order; slack only ever keeps extra edges
    bound = bound * slack
    graph = nx.DiGraph()
    graph.add_node(names[0])
    dist: dict[int, tuple[float, int, int]] = {0: (0, 0, 0)}
    pred: dict[int, tuple[int, int]] = {}
    done: set[int] = set()
    heap: list[tuple[tuple[float, int, int], int]] = [((0, 0, 0), 0)]
    block_size, is_run = layer.block_size, layer.is_run
    while heap:
        key, s = heapq.heappop(heap)
        if s in done or key != dist[s]:
            continue  # a stale heap entry
        done.add(s)
        if s == full:
            break
        comp = full ^ s
        s_free = s == 0 or is_run[s]
        b = comp
        while b:
            if b & (b - 1) == 0 or (
                allow_offline_merges and (max_block_params is None or block_size[b] <= max_block_params)
            ):
                free = s_free and is_run[b] and (s == 0 or is_run[s | b])
                if free or not transpose_free_only:
                    e = pricer.edge(s, b, free)
                    if e.cost < 0:
                        raise TTGraphError("cost", f"cost models must be >= 0, found {e.cost} for {e.matmul}")
                    c = key[0] + e.cost
                    if c <= bound:
                        t = s | b
                        graph.add_edge(
                            names[s],
                            names[t],
                            cost=e.cost,
                            macs=e.matmul.macs,
                            moved=e.moved,
                            block=names[b],
                            transpose_free=free,
                        )
                        new = (c, key[1] + e.moved, key[2] + block_size[b])
                        old = dist.get(t)
                        if t not in done and (old is None or new < old):
                            dist[t] = new
                            pred[t] = (s, b)
                            heapq.heappush(heap, (new, t))
                            if t == full:
                                bound = min(bound, c * slack)
            b = (b - 1) & comp
    sequence: list[int] = []
    t = full
    while t:
        s, b = pred[t]
        sequence.append(b)
        t = s
    sequence.reverse()
    return sequence, graph


def plan_layer(
    modes_in: Sequence[int],
    modes_out: Sequence[int],
    ranks: int | Sequence[int],
    pixels: int = 1,
    cost: str | CostModel = "flops",
    allow_offline_merges: bool = True,
    offline_merge_cost: OfflineMergeCost = "free",
    transpose_free_only: bool = False,
    max_block_params: int | None = None,
) -> ContractionPlan:
    """The cheapest contraction order of a TT layer under a cost model (optimal: shortest path over
    all pairwise contraction sequences, see the module docstring).

    ``ranks`` is one inner rank, the ``d - 1`` inner ranks, or all ``d + 1``; ``pixels = N*H*W``.
    ``allow_offline_merges=False`` forbids core-core merges; ``max_block_params`` caps the size of a
    merged block; ``transpose_free_only`` keeps to orders the NCHW emitter runs without Transpose;
    ``offline_merge_cost="charged"`` prices the offline merges too (the whole network's cost).

    The left-to-right order of this layer moves 64 x 4 intermediate channels per pixel; starting
    from the last core keeps it at 2 x 4:

    >>> plan = plan_layer((2, 64), (64, 2), ranks=4, pixels=100)
    >>> plan.total_cost, left_to_right_plan((2, 64), (64, 2), ranks=4, pixels=100).total_cost
    (204800, 6553600)
    >>> plan.groups, plan.order, plan.transpose_free
    (((0,), (1,)), (1, 0), True)
    """
    layer = _Layer(modes_in, modes_out, ranks, pixels)
    if max_block_params is not None and max_block_params < 1:
        raise TTGraphError("max_block_params", f"expected a positive parameter cap, found {max_block_params}")
    cost_name, model = get_cost_model(cost)
    pricer = _Pricer(layer, model, offline_merge_cost)
    sequence, graph = _search(layer, pricer, allow_offline_merges, transpose_free_only, max_block_params)
    return _assemble(layer, pricer, cost_name, offline_merge_cost, sequence, graph)


def plan_from_blocks(
    modes_in: Sequence[int],
    modes_out: Sequence[int],
    ranks: int | Sequence[int],
    blocks: Sequence[Sequence[int]],
    pixels: int = 1,
    cost: str | CostModel = "flops",
    offline_merge_cost: OfflineMergeCost = "free",
) -> ContractionPlan:
    """The plan that contracts ``blocks`` (lists of cores, each merged offline) into the activation
    in the given order, priced like :func:`plan_layer` would price it (no search).

    >>> plan_from_blocks((2, 64), (64, 2), 4, blocks=[[1], [0]], pixels=100).total_cost
    204800
    """
    layer = _Layer(modes_in, modes_out, ranks, pixels)
    cost_name, model = get_cost_model(cost)
    pricer = _Pricer(layer, model, offline_merge_cost)
    masks = []
    for block in blocks:
        mask = 0
        for k in block:
            if not 0 <= int(k) < layer.d or mask >> int(k) & 1:
                raise TTGraphError("blocks", f"expected distinct cores in 0..{layer.d - 1}, found block {list(block)}")
            mask |= 1 << int(k)
        masks.append(mask)
    return _assemble(layer, pricer, cost_name, offline_merge_cost, masks, None)


def left_to_right_plan(
    modes_in: Sequence[int],
    modes_out: Sequence[int],
    ranks: int | Sequence[int],
    pixels: int = 1,
    cost: str | CostModel = "flops",
) -> ContractionPlan:
    """The fixed order ``G0, G1, ..., G(d-1)`` with no merges (groups = singletons, order = 0..d-1).

    >>> left_to_right_plan((4, 4), (4, 4), 2, pixels=10).order
    (0, 1)
    """
    d = len(tuple(modes_in))
    return plan_from_blocks(modes_in, modes_out, ranks, [[k] for k in range(d)], pixels=pixels, cost=cost)


# --------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------


def _json_number(value: float) -> float | int:
    if isinstance(value, int):
        return value
    if float(value).is_integer() and abs(value) < 2**53:
        return int(value)
    return float(value)


def plan_to_dict(plan: ContractionPlan) -> dict[str, Any]:
    """The plan as JSON-ready data with stable keys (``total_cost`` in the cost model's units: MACs
    for ``"flops"``).

    >>> plan_to_dict(left_to_right_plan((4, 4), (4, 4), 2, pixels=10))["total_cost"]
    2560
    """
    return {
        "modes_in": list(plan.modes_in),
        "modes_out": list(plan.modes_out),
        "ranks": list(plan.ranks),
        "pixels": plan.pixels,
        "cost_model": plan.cost_model,
        "offline_merge_cost": plan.offline_merge_cost,
        "total_cost": _json_number(plan.total_cost),
        "runtime_cost": _json_number(plan.runtime_cost),
        "runtime_macs": plan.runtime_macs,
        "offline_macs": plan.offline_macs,
        "dense_cost": plan.dense_cost,
        "macs_ratio_vs_dense": plan.runtime_macs / plan.dense_cost,
        "moved_elements": plan.moved_elements,
        "runtime_params": plan.runtime_params,
        "tt_params": plan.tt_params,
        "transpose_free": plan.transpose_free,
        "blocks": [list(b) for b in plan.blocks],
        "groups": None if plan.groups is None else [list(g) for g in plan.groups],
        "order": None if plan.order is None else list(plan.order),
        "graph": {"nodes": plan.graph_nodes, "edges": plan.graph_edges},
        "steps": [
            {
                "index": s.index,
                "operands": list(s.operands),
                "result": s.result,
                "runtime": s.runtime,
                "cores": list(s.cores),
                "shape": {
                    "left": s.shape[0],
                    "out": s.shape[1],
                    "contracted": s.shape[2],
                    "right": s.shape[3],
                },
                "macs": s.macs,
                "cost": _json_number(s.cost),
                "layout_cost": _json_number(s.layout_cost),
                "transpose_free": s.transpose_free,
                "moved_elements": s.moved_elements,
                "out_size": s.out_size,
            }
            for s in plan.steps
        ],
    }


#: what each cost model's numbers count, for the tables that print them
COST_UNITS = {"flops": "MACs", "roofline": "MAC-equivalents: MACs + 8 per byte moved", "measured": "seconds"}


def format_cost(value: float) -> str:
    """A cost as the plan table prints it: MACs whole with thousands separators, seconds to 4 digits."""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4g}"


def format_plan(plan: ContractionPlan) -> str:
    """A human table of the plan: one row per step, then the totals.

    >>> print(format_plan(left_to_right_plan((4, 4), (4, 4), 2, pixels=10)).splitlines()[0])
    TT layer: modes_in 4x4, modes_out 4x4, ranks 1-2-1, pixels 10, cost model flops
    """
    x = "x"
    lines = [
        f"TT layer: modes_in {x.join(map(str, plan.modes_in))}, "
        f"modes_out {x.join(map(str, plan.modes_out))}, "
        f"ranks {'-'.join(map(str, plan.ranks))}, pixels {plan.pixels}, cost model {plan.cost_model}",
    ]
    header = (
        "step",
        "when",
        "operands",
        "result",
        "left x out x contracted x right",
        "MACs",
        "cost",
        "layout",
    )
    rows = [header]
    for s in plan.steps:
        rows.append(
            (
                str(s.index),
                "runtime" if s.runtime else "offline",
                " * ".join(s.operands),
                s.result,
                " x ".join(str(v) for v in s.shape),
                format_cost(s.macs),
                format_cost(s.cost),
                "free" if s.transpose_free else f"transpose {format_cost(s.moved_elements)}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i in (0, 5, 6) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ).rstrip()
        )
    ratio = plan.runtime_macs / plan.dense_cost
    lines.append(
        f"total cost ({plan.cost_model}, {COST_UNITS.get(plan.cost_model, 'cost units')}): "
        f"{format_cost(plan.total_cost)}   "
        f"runtime MACs: {format_cost(plan.runtime_macs)}"
        f"   dense MACs: {format_cost(plan.dense_cost)} (runtime/dense {ratio:.3g})"
    )
    if plan.offline_macs:
        lines.append(f"offline merge MACs ({plan.offline_merge_cost}): {format_cost(plan.offline_macs)}")
    lines.append(
        f"runtime params: {format_cost(plan.runtime_params)}   TT params: {format_cost(plan.tt_params)}   "
        f"DP cost graph searched: {plan.graph_nodes} nodes, {plan.graph_edges} edges"
    )
    if plan.transpose_free:
        lines.append(f"transpose-free: groups {[list(g) for g in plan.groups or ()]}, order {list(plan.order or ())}")
    else:
        lines.append(f"not transpose-free: {format_cost(plan.moved_elements)} activation elements transposed")
    return "\n".join(lines)
