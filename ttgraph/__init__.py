"""ttgraph: rewrite the 1×1 convolutions of any ONNX model as Tensor-Train cores.

>>> import ttgraph
>>> result = ttgraph.compress("model.onnx", cores=2, rank_ratio=0.5)  # doctest: +SKIP
>>> result.save("model.tt.onnx")  # doctest: +SKIP
"""

from ttgraph.api import CompressionReport, CompressionResult, InspectReport, LayerReport, compress, inspect
from ttgraph.errors import TTGraphError
from ttgraph.model_io import load_model, parse_input_shapes, save_model
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


def compile(model, target, output, input_shapes=None, tune: int = 0, tune_db=None):  # noqa: A001
    """Compile a model with Apache TVM for a named target preset (see ``ttgraph compile --list-targets``).

    A thin door to :func:`targets.compile_model`, imported here on use so ttgraph works without TVM.
    """
    from targets.compile import compile_model

    return compile_model(model, target, output, input_shapes, tune=tune, tune_db=tune_db)
