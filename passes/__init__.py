"""Graph passes over ONNX models, each a small object with one job, working on the onnx-graphsurgeon IR.

The compression pipeline runs them in the order listed in :mod:`ttgraph.api`.
"""

from passes.find_pointwise import FindPointwiseConvs, PointwiseConv, SkippedConv
from passes.rewrite_tt import LayerRewrite, RewriteAsTT

__all__ = ["FindPointwiseConvs", "LayerRewrite", "PointwiseConv", "RewriteAsTT", "SkippedConv"]
