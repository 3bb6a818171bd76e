"""ttgraph: rewrite the 1×1 convolutions of any ONNX model as Tensor-Train cores.

>>> import ttgraph
>>> result = ttgraph.compress("model.onnx", cores=2, rank_ratio=0.5)  # doctest: +SKIP
>>> result.save("model.tt.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ttgraph.api import CompressionReport, CompressionResult, InspectReport, LayerReport, compress, inspect
from ttgraph.errors import TTGraphError
from ttgraph.model_io import ModelSource, load_model, parse_input_shapes, save_model
from ttgraph.tt import TTFormat, tt_reconstruct, tt_svd
from ttgraph.verify import OutputError, compare_outputs

__all__ = [
    "CompressionReport",
    "CompressionResult",
    "InspectReport",
    "LayerReport",
    "OutputError",
    "TTFormat",
    "TTGraphError",
    "compare_outputs",
    "compile",
    "compress",
    "inspect",
    "load_model",
    "parse_input_shapes",
    "save_model",
    "tt_reconstruct",
    "tt_svd",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from targets.compile import CompileResult


def compile(  # noqa: A001
    model: ModelSource,
    target: str | Mapping[str, Any],
    output: str | os.PathLike[str],
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    tune: int = 0,
    tune_db: str | os.PathLike[str] | None = None,
    tune_minutes: float | None = None,
    tune_tracker: str | None = None,
    tune_key: str | None = None,
) -> CompileResult:
    """Compile a model with Apache TVM for a target preset (``ttgraph compile --list-targets``) or target dict.

    A thin door to :func:`targets.compile.compile_model` (same arguments), imported here on use so ttgraph
    works without TVM.
    """
    from targets.compile import compile_model

    return compile_model(
        model,
        target,
        output,
        input_shapes,
        tune=tune,
        tune_db=tune_db,
        tune_minutes=tune_minutes,
        tune_tracker=tune_tracker,
        tune_key=tune_key,
    )
