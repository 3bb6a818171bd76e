"""Graph passes over ONNX models, each a small object with one job, working on the onnx-graphsurgeon IR.

The compression pipeline runs them in the order listed in :mod:`ttgraph.api`; the exact fast-lowering
passes of :mod:`passes.lower` run last, on the rewritten model.
"""

from onnx_graphsurgeon.logger import G_LOGGER

from passes.find_pointwise import FindPointwiseConvs, PointwiseConv, SkippedConv
from passes.lower import FlushSubnormals, FoldAffineIntoConv, FuseHardSwish, Lower, PassResult
from passes.rewrite_tt import LayerRewrite, RewriteAsTT

# graphsurgeon prints its warnings (e.g. "BFLOAT16 has no NumPy type") on stdout, which would corrupt
# `ttgraph inspect --json`; what matters to users (a skipped conv and why) our passes report themselves.
G_LOGGER.severity = G_LOGGER.ERROR

__all__ = [
    "FindPointwiseConvs",
    "FlushSubnormals",
    "FoldAffineIntoConv",
    "FuseHardSwish",
    "LayerRewrite",
    "Lower",
    "PassResult",
    "PointwiseConv",
    "RewriteAsTT",
    "SkippedConv",
]
