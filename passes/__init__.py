"""Graph passes over ONNX models, each a small object with one job, working on the onnx-graphsurgeon IR.

The compression pipeline runs them in the order listed in :mod:`ttgraph.api`; the exact fast-lowering
passes of :mod:`passes.lower` run last, on the rewritten model.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from onnx_graphsurgeon.logger import G_LOGGER

from passes.find_pointwise import FindPointwiseConvs, PointwiseConv, SkippedConv
from passes.lower import FlushSubnormals, FoldAffineIntoConv, FuseHardSwish, Lower, PassResult
from passes.rewrite_tt import LayerRewrite, RewriteAsTT
from ttgraph.process_state import shared


@contextmanager
def _graphsurgeon_at_error() -> Iterator[None]:
    before = G_LOGGER.severity
    G_LOGGER.severity = max(before, G_LOGGER.ERROR)
    try:
        yield
    finally:
        G_LOGGER.severity = before


@contextmanager
def quiet_graphsurgeon() -> Iterator[None]:
    """graphsurgeon prints its warnings (e.g. "BFLOAT16 has no NumPy type") on stdout, which would corrupt
    ``ttgraph inspect --json`` or a calling pipeline's output; what matters to users (a skipped conv and why) our
    passes report themselves. Only while ttgraph works: the caller's own setting is restored after, also when
    calls overlap in threads (:func:`ttgraph.process_state.shared`)."""
    with shared("graphsurgeon", _graphsurgeon_at_error):
        yield


__all__ = [
    "FindPointwiseConvs",
    "FlushSubnormals",
    "FoldAffineIntoConv",
    "FuseHardSwish",
    "LayerRewrite",
    "Lower",
    "PassResult",
    "quiet_graphsurgeon",
    "PointwiseConv",
    "RewriteAsTT",
    "SkippedConv",
]
